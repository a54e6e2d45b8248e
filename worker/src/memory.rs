//! Giving freed memory back to the system.
//!
//! glibc's allocator keeps what the program frees in per-thread arenas and returns pages to the
//! kernel only from the top of an arena. A worker frees a lot below live allocations: every
//! workflow evicted from the cache (its history, its state machines), every finished activity.
//! Those pages stay resident, so a worker that parked thousands of retries in review kept
//! growing after the cache had stopped growing. `malloc_trim(0)` walks every arena and
//! `madvise`s the free pages away. Measured with `retake-bench open --workflows 3000` (Rust
//! only, same build, same night): 68.8 MiB with every retry parked, 59.8 MiB with a trim every
//! 10 s, and worker CPU within the noise (97.8 and 94.9 s for the whole run).
//!
//! Other allocators were tried instead (`docs/benchmarks.md`): mimalloc and jemalloc return
//! memory on their own, but held more while busy and cost more CPU per retry here.

use std::time::Duration;

/// How often `retake worker` gives freed memory back, by default.
pub const DEFAULT_RELEASE_EVERY: Duration = Duration::from_secs(10);

/// Ask the allocator to give the pages it holds free back to the system; whether it gave any.
/// Off glibc this does nothing: musl's and the other systems' allocators have no such call.
///
/// It locks each arena in turn while it walks it (a few milliseconds for a worker's heap), so
/// call it from a blocking thread, not from an async task.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "malloc_trim is a C function (the other unsafe block is in pipe.rs)"
)]
pub fn release_freed() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and touches only the allocator's own state, under
    // the allocator's locks; any thread may call it at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Off glibc: nothing to do (see the glibc version).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed() -> bool {
    false
}

/// Give freed memory back every `every`, forever (drop the future to stop).
pub async fn release_freed_every(every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate: nothing is freed yet
    loop {
        ticks.tick().await;
        match tokio::task::spawn_blocking(release_freed).await {
            Ok(released) => tracing::trace!(released, "gave freed memory back"),
            Err(e) => tracing::warn!("giving freed memory back failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Memory freed in a large block is given back (glibc only: elsewhere there is no call).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_memory_below_live_allocations_is_given_back() {
        // Many allocations, then free all but the last: the freed ones sit below a live one,
        // where glibc does not trim on its own.
        let mut blocks: Vec<Vec<u8>> = (0..2_000).map(|i| vec![i as u8; 4096]).collect();
        let keep = blocks.pop();
        drop(blocks);
        assert!(super::release_freed(), "nothing was given back");
        drop(keep);
    }
}
