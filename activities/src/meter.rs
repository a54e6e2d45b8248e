//! The budget as a cap: while an attempt generates, its reservation grows with the GPU time it
//! uses, and the attempt is stopped when the project's limit refuses more.
//!
//! An attempt starts with the policy's estimate reserved. Estimates are wrong: an attempt that
//! runs twice as long as estimated would otherwise spend twice what the budget allowed. So
//! [`meter`] watches the time the generation has run (wall time since the activity started: the
//! GPU is held for all of it) and, [`LOOKAHEAD`] before it reaches the reservation, raises the
//! reservation by half the original estimate (at least [`MIN_STEP_MS`]). When the limit refuses
//! that, it takes whatever room is left; when none is left and the reservation is used up, it
//! asks the backend to stop (the next heartbeat answers `Cancelled`), and the activity fails as
//! `BudgetExhausted`, billed what the backend reports it used.
//!
//! What this guarantees: the project's settled GPU time exceeds its limit by at most, per attempt
//! the budget stops, the time its backend takes to stop once asked (the simulator: one of its ten
//! steps; the HTTP contract: one poll interval plus the `DELETE`; ComfyUI: the node in progress,
//! since it checks for an interrupt only between nodes), plus any difference between the GPU time
//! a backend reports and the wall time metered, plus the store's answer time beyond [`LOOKAHEAD`]
//! (more is asked for a second before it is needed). Once refused, the meter sleeps exactly until
//! the reservation is used up, so its own polling adds nothing. While the store cannot be reached the
//! limit cannot be checked and attempts run on (an outage must not waste paid-for GPU time).

use crate::io::{AttemptKey, HeldBudget, Reservation};
use crate::ports::{BudgetLedger, StoreError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the meter looks at the time used.
pub const TICK: Duration = Duration::from_millis(100);
/// How long before the reservation is used up it asks for more: longer than a busy store takes to
/// answer, so the attempt does not run past its reservation while the question is pending.
pub const LOOKAHEAD: Duration = Duration::from_secs(1);
/// Smallest raise.
pub const MIN_STEP_MS: u64 = 1_000;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Watch an attempt generating since `started` under `held`; returns (after setting `stop`) why
/// the budget stopped it, or never while the budget allows it to go on.
pub(crate) async fn meter(
    ledger: &dyn BudgetLedger,
    key: &AttemptKey,
    held: &HeldBudget,
    started: Instant,
    stop: &AtomicBool,
) -> String {
    let step = (held.reserved_ms / 2).max(MIN_STEP_MS);
    let mut reserved = held.reserved_ms;
    loop {
        let used = millis(started.elapsed());
        if used.saturating_add(millis(LOOKAHEAD)) < reserved {
            tokio::time::sleep(TICK).await;
            continue;
        }
        match ledger
            .raise(key, held.project_id.as_str(), reserved.saturating_add(step))
            .await
        {
            Ok(Reservation::Granted { gpu_ms }) => reserved = reserved.max(gpu_ms),
            Ok(Reservation::Refused {
                limit_ms,
                committed_ms,
                ..
            }) => {
                // Take what room is left; once it is used up, stop.
                let room = limit_ms.saturating_sub(committed_ms);
                if room > reserved
                    && let Ok(Reservation::Granted { gpu_ms }) =
                        ledger.raise(key, held.project_id.as_str(), room).await
                {
                    reserved = reserved.max(gpu_ms);
                    continue;
                }
                // Run until the reservation is used up, to the millisecond, then stop.
                let left = reserved.saturating_sub(millis(started.elapsed()));
                tokio::time::sleep(Duration::from_millis(left)).await;
                stop.store(true, Ordering::SeqCst);
                return format!(
                    "the attempt needed more GPU time than the {reserved} ms it could reserve: \
                     the project's limit is {limit_ms} ms and other attempts hold or spent \
                     {committed_ms} ms"
                );
            }
            Err(StoreError::Invalid(e)) => {
                // The reservation is gone (settled or released by someone else): nothing left
                // to meter against.
                tracing::warn!(attempt = %key.idempotency_key(), "cannot meter the attempt: {e}");
                return std::future::pending().await;
            }
            Err(e) => {
                // The store is down: the limit cannot be checked, and stopping a paid-for GPU
                // job for an outage would waste it. Keep generating and ask again.
                tracing::warn!(attempt = %key.idempotency_key(), "raising the reservation: {e}");
                tokio::time::sleep(TICK * 10).await;
            }
        }
    }
}
