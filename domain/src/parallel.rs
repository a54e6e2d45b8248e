//! Attempts running at once (a policy's `parallelism`): what a free slot starts next, when it
//! must wait, and why a round ends.
//!
//! Attempt k is planned exactly as it is when attempts run one after another: its seed and
//! jittered parameters come from the segment and k alone ([`ladder::plan_attempt`]), so a
//! parallel run is as reproducible as a serial one. What may differ is only what a plan reads
//! from earlier *results*:
//!
//! * `reseed`, `reseed_jitter` and `adaptive` rungs overlap freely. Their `variation.targets`
//!   (the failure kinds they set out to fix) are taken from the results finished when they start;
//!   an `adaptive` rung reads the store's evidence, not its siblings.
//! * `revise`, `revise_with_feedback` and `partial_rewrite` revise the best draft so far, which
//!   may be one still being written: they start only when nothing else is in flight.
//! * `user_intervention`, running out of attempts and a policy's cost rule end the round once
//!   the attempts in flight have finished (a passing one among them still wins).
//!
//! A round ends early on any finished attempt of it — not just the last one, since results
//! arrive out of order: one that passed under `first_pass`, one that failed on a kind the policy
//! does not retry on, or one the budget stopped mid-generation.

use crate::contract::{
    AttemptRecord, AttemptStatus, BACKEND_REJECTED, BUDGET_EXHAUSTED, RetryRequest,
};
use crate::ladder;
use crate::plan::AttemptPlan;
use crate::policy::{RetryPolicy, Selection};
use crate::stop::Stop;
use crate::strategy::{self, Strategy};

/// What a free slot does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Start this attempt.
    Start(Box<AttemptPlan>),
    /// Start nothing until an attempt in flight finishes (the next rung revises a draft).
    Wait,
    /// Start nothing more in this round. With nothing in flight this is why the round ended;
    /// with attempts in flight, ask again once they have finished.
    Stop(Stop),
}

/// The next step of a slot, given the finished `attempts` (in attempt order, every round) and
/// the numbers of the attempts `in_flight` (claimed, not yet recorded). Attempt numbers are given
/// out in order: the next is one above the highest recorded or in flight. With nothing in flight
/// this is [`ladder::next`] after [`decided`].
pub fn next(
    req: &RetryRequest,
    policy: &RetryPolicy,
    attempts: &[AttemptRecord],
    in_flight: &[u32],
    round_start: u32,
) -> Next {
    if let Some(stop) = decided(policy, attempts, round_start) {
        return Next::Stop(stop);
    }
    if in_flight.is_empty() {
        return match ladder::next(req, policy, attempts, round_start) {
            Ok(plan) => Next::Start(Box::new(plan)),
            Err(stop) => Next::Stop(stop),
        };
    }
    if u32::try_from(in_flight.len()).unwrap_or(u32::MAX) >= policy.parallelism {
        return Next::Wait;
    }
    let highest = in_flight.iter().copied().max().unwrap_or(0);
    let k = crate::plan::made(attempts).max(highest).saturating_add(1);
    if k > policy.max_attempts {
        return Next::Stop(Stop::AttemptsUsed);
    }
    if let Some(rule) = &policy.cost_rule {
        let saving_ms = rule.expected_saving_ms(k);
        if saving_ms < policy.est_gpu_ms_per_attempt as f64 {
            return Next::Stop(Stop::NotWorthIt {
                attempt: k,
                chance: rule.chance(k),
                cost_ms: policy.est_gpu_ms_per_attempt,
                saving_ms,
            });
        }
    }
    match strategy::rung(&policy.ladder, k - round_start.min(k - 1)) {
        Strategy::UserIntervention => Next::Stop(Stop::AttemptsUsed),
        s if s.revises() => Next::Wait,
        s => Next::Start(Box::new(ladder::plan_attempt(req, policy, attempts, k, s))),
    }
}

/// Why the round must start no further attempt, judging every finished attempt of it (those
/// numbered above `round_start`) in attempt order: a pass under `first_pass`, a failure on a kind
/// the policy does not retry on, an attempt the budget stopped mid-generation, the policy's
/// `stop_after_same_refusals` attempts in a row the backend refused with the same error.
pub fn decided(policy: &RetryPolicy, attempts: &[AttemptRecord], round_start: u32) -> Option<Stop> {
    let round = attempts.iter().filter(|a| a.attempt > round_start);
    if policy.selection == Selection::FirstPass && round.clone().any(|a| a.passed) {
        return Some(Stop::Passed);
    }
    // The first refusal may be the jitter's doing (a value out of range); the same refusal of
    // the next attempts, with other seeds and jitter, is not. How many in a row stop the round
    // is the policy's `stop_after_same_refusals` (0: never).
    let need = usize::try_from(policy.stop_after_same_refusals).unwrap_or(usize::MAX);
    let mut streak: Vec<u32> = Vec::new();
    let mut refused: Option<&str> = None;
    for a in round {
        let rejected = (a.error_type.as_deref() == Some(BACKEND_REJECTED))
            .then(|| refusal(a.error.as_deref().unwrap_or("")));
        match rejected {
            Some(now) if refused == Some(now) => streak.push(a.attempt),
            Some(_) => streak = vec![a.attempt],
            None => streak.clear(),
        }
        refused = rejected;
        if let Some(now) = rejected
            && need > 0
            && streak.len() >= need
        {
            return Some(Stop::Rejected {
                attempts: streak,
                message: now.to_owned(),
            });
        }
        let blocking = policy.blocking(&a.failures);
        if a.status == AttemptStatus::Failed && !blocking.is_empty() {
            return Some(Stop::NotRetryable {
                attempt: a.attempt,
                failures: blocking.into_iter().map(str::to_owned).collect(),
            });
        }
        if a.error_type.as_deref() == Some(BUDGET_EXHAUSTED) {
            return Some(Stop::BudgetExceeded {
                attempt: a.attempt,
                detail: a.error.clone().unwrap_or_default(),
            });
        }
    }
    None
}

/// A refusal as compared between attempts: the message without the request it answered, which
/// an adapter adds at the end and which names the attempt's own job (`… (GET
/// http://farm/jobs/job-7)`).
fn refusal(message: &str) -> &str {
    for request in [" (GET ", " (POST "] {
        if let Some(at) = message.rfind(request)
            && message.ends_with(')')
        {
            return &message[..at];
        }
    }
    message
}

#[cfg(test)]
mod tests;
