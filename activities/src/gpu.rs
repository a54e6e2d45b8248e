//! This worker's generation side: who it is (recorded on every attempt it generates, and the name
//! placement routes by), how many generations run at once (its GPUs), and whether its machine is
//! failing: after [`Gpu::cool_after`] infrastructure failures in a row it asks the worker to stop
//! taking generations for a while (see `retake worker --cool-down-secs`).

use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// A worker's GPUs, as the `generate` activity sees them.
#[derive(Debug)]
pub struct Gpu {
    worker_id: String,
    slots: Semaphore,
    cool_after: u32,
    in_row: AtomicU32,
    failing: Notify,
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
