//! Why a run's attempt loop ended: decided by [`crate::plan`], told by [`crate::report`].

/// Why the attempt loop ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// `first_pass` and the last attempt passed.
    Passed,
    /// Every allowed attempt was made.
    AttemptsUsed,
    /// The last attempt failed only on kinds the policy does not retry on.
    NotRetryable { attempt: u32, failures: Vec<String> },
    /// The budget refused attempt `attempt`.
    BudgetRefused { attempt: u32, detail: String },
    /// Attempt `attempt` needed more GPU time than reserved and the budget refused more: it was
    /// cancelled mid-generation.
    BudgetExceeded { attempt: u32, detail: String },
    /// A creator aborted (the in-flight attempt is cancelled).
    Aborted { by: String, reason: String },
    /// A creator escalated to human review before the attempts ran out.
    Escalated { by: String, reason: String },
    /// The cost-effectiveness rule: attempt `attempt` would cost more GPU time than it is expected
    /// to save.
    NotWorthIt {
        attempt: u32,
        chance: f64,
        cost_ms: u64,
        saving_ms: f64,
    },
    /// The backend refused `attempts` (finished in a row, as many as the policy's
    /// `stop_after_same_refusals`) with the same error: another seed and jitter did not change
    /// what it refuses, so more attempts would only repeat it.
    Rejected { attempts: Vec<u32>, message: String },
    /// The ladder reached `user_intervention` (or its attempts ran out) before attempt `attempt`:
    /// escalated with `message` (the rendered user-intervention template).
    UserIntervention { attempt: u32, message: String },
}
