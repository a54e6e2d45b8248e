//! This worker's generation side: who it is (recorded on every attempt it generates, and the name
//! placement routes by), how many generations run at once (its GPUs), and whether its machine is
//! failing: after [`Gpu::cool_after`] infrastructure failures in a row it asks the worker to stop
//! taking generations for a while (see `retake worker --cool-down-secs`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// How long a promise of a GPU to an eager generation holds (see [`Gpu::claim_eager`]): the
/// server hands an eager activity over in the answer to the workflow task, within milliseconds;
/// one it did not hand over goes to the task queue and the promise lapses.
pub const EAGER_CLAIM_TTL: Duration = Duration::from_secs(5);

/// A worker's GPUs, as the `generate` activity sees them.
#[derive(Debug)]
pub struct Gpu {
    worker_id: String,
    slots: Semaphore,
    cool_after: u32,
    in_row: AtomicU32,
    failing: Notify,
    /// Until when (ms since the epoch) the worker takes no generations (0: not cooling).
    cooling_until_ms: AtomicU64,
    /// Whether this worker takes its own generations eagerly (see [`Gpu::eager`]).
    eager: bool,
    /// GPUs promised to eager generations not started yet, by when they were promised.
    claims: Mutex<Vec<Instant>>,
}

impl Gpu {
    /// Worker `worker_id` with `slots` generations at once (at least 1), cooling down after
    /// `cool_after` infrastructure failures in a row (0: never).
    pub fn new(worker_id: impl Into<String>, slots: usize, cool_after: u32) -> Self {
        Self {
            worker_id: worker_id.into(),
            slots: Semaphore::new(slots.max(1)),
            cool_after,
            in_row: AtomicU32::new(0),
            failing: Notify::new(),
            cooling_until_ms: AtomicU64::new(0),
            eager: false,
            claims: Mutex::new(Vec::new()),
        }
    }

    /// Let this worker take its own generations eagerly ([`Gpu::claim_eager`]). Only for a
    /// worker whose generations are not limited to its GPUs (no `--max-concurrent-generations`:
    /// a remote render farm queues them itself): a worker with a GPU limit polls the shared
    /// generate queue with one task slot per GPU, and a generation handed to it eagerly would
    /// come on top of what that poller takes, and wait for a GPU another worker may have free.
    pub fn eager(mut self, yes: bool) -> Self {
        self.eager = yes;
        self
    }

    /// Cooling down until `ms` (ms since the epoch; 0 ends it): no eager generation is claimed.
    pub fn set_cooling_until(&self, ms: u64) {
        self.cooling_until_ms.store(ms, Ordering::SeqCst);
    }

    /// Until when the worker is cooling down (0: not).
    pub fn cooling_until(&self) -> u64 {
        self.cooling_until_ms.load(Ordering::SeqCst)
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, Vec<Instant>> {
        // Every change is one push or remove: a poisoned lock still holds a whole list.
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Promise a GPU to a generation this worker is about to schedule on its workflow's task
    /// queue, which the server then hands back to it at once (eager execution): only on a worker
    /// made [`Gpu::eager`], while it is not cooling down at `now_ms` and has a GPU free that no
    /// other promise holds. A worker
    /// without a free GPU says no, and the generation goes to the shared queue for whichever
    /// worker frees one first.
    pub fn claim_eager(&self, now_ms: u64) -> bool {
        if !self.eager || now_ms < self.cooling_until() {
            return false;
        }
        let mut claims = self.claims();
        let now = Instant::now();
        claims.retain(|at| now.duration_since(*at) < EAGER_CLAIM_TTL);
        if self.slots.available_permits() > claims.len() {
            claims.push(now);
            true
        } else {
            false
        }
    }

    /// An eager generation arrived: the oldest promise is kept.
    pub(crate) fn eager_arrived(&self) {
        let mut claims = self.claims();
        if !claims.is_empty() {
            claims.remove(0);
        }
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Infrastructure failures in a row before the worker cools down.
    pub fn cool_after(&self) -> u32 {
        self.cool_after
    }

    /// A GPU to generate on (waits while all are busy: a generation placed on this worker by
    /// name may arrive while the shared queue's fills them).
    pub(crate) async fn slot(&self) -> SemaphorePermit<'_> {
        self.slots
            .acquire()
            .await
            .expect("the GPU semaphore is never closed")
    }

    /// Count a finished generation: an infrastructure failure, or anything else (a success, a
    /// rejected request), which ends a run of failures.
    pub(crate) fn finished(&self, infrastructure: bool) {
        if !infrastructure {
            self.in_row.store(0, Ordering::SeqCst);
            return;
        }
        let n = self.in_row.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::warn!(
            worker = %self.worker_id,
            infrastructure_failures_in_row = n,
            "generation failed on this machine"
        );
        if self.cool_after > 0 && n >= self.cool_after {
            self.failing.notify_one();
        }
    }

    /// Resolves once [`Gpu::cool_after`] infrastructure failures came in a row; the count
    /// starts again from 0.
    pub async fn failing(&self) -> u32 {
        self.failing.notified().await;
        self.in_row.swap(0, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eager_generations_are_promised_only_free_gpus_and_never_while_cooling() {
        assert!(
            !Gpu::new("w", 2, 3).claim_eager(1_000),
            "a worker with a GPU limit never"
        );
        let gpu = Gpu::new("w", 2, 3).eager(true);
        assert!(gpu.claim_eager(1_000));
        assert!(gpu.claim_eager(1_000));
        assert!(!gpu.claim_eager(1_000), "both GPUs are promised");
        gpu.eager_arrived();
        let held = gpu.slots.try_acquire().unwrap();
        assert!(
            !gpu.claim_eager(1_000),
            "one GPU generating, the other promised"
        );
        drop(held);
        gpu.eager_arrived();
        assert!(gpu.claim_eager(1_000));
        gpu.eager_arrived();
        gpu.set_cooling_until(5_000);
        assert!(!gpu.claim_eager(4_999), "cooling down");
        assert!(gpu.claim_eager(5_000), "cool-down over");
    }
}
