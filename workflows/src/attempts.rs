//! The attempt loop and the human-review wait of one run.

use crate::options;
use crate::search::RETRY_OUTCOME;
use crate::segment_retry::{SegmentRetryWorkflow, record_outcome};
use retake_activities::RetryActivities;
use retake_activities::io::{
    AttemptKey, GenerateRequest, RecordAttempt, Reservation, ReserveBudget, Review, ScoreRequest,
    SettleBudget,
};
use retake_domain::RetryPolicy;
use retake_domain::contract::{AttemptRecord, Outcome, RetryRequest, RetryResult};
use retake_domain::ladder;
use retake_domain::plan::{self, AttemptPlan, Stop};
use retake_domain::review::{self, CreatorEvent, Decision, Phase};
use std::time::Duration;
use temporalio_sdk::{
    ActivityExecutionError, WorkflowCancellationToken, WorkflowContext, WorkflowResult,
};

/// One run's inputs (the base parameters and policy change when a reviewer retries with new
/// ones) and the loops that use them.
pub(crate) struct Run {
    ctx: WorkflowContext<SegmentRetryWorkflow>,
    workflow_id: String,
    run_id: String,
    req: RetryRequest,
    policy: RetryPolicy,
    /// Whether this run plans with the strategy ladder ([`LADDER_PATCH`]); runs started before
    /// it keep reseeding with jitter on every attempt.
    ladder: bool,
}

/// Patch id of the strategy ladder (`ctx.patched`): histories without its marker replay the
/// pre-ladder planning.
pub(crate) const LADDER_PATCH: &str = "strategy-ladder";

impl Run {
    pub(crate) fn new(
        ctx: &WorkflowContext<SegmentRetryWorkflow>,
        req: RetryRequest,
        policy: RetryPolicy,
    ) -> Self {
        Self {
            ctx: ctx.clone(),
            workflow_id: ctx.workflow_id().to_owned(),
            run_id: ctx.run_id().to_owned(),
            req,
            policy,
            ladder: ctx.patched(LADDER_PATCH),
        }
    }

    fn key(&self, attempt: u32) -> AttemptKey {
        AttemptKey {
            workflow_id: self.workflow_id.clone(),
            run_id: self.run_id.clone(),
            attempt,
        }
    }

    fn attempts_so_far(&self) -> Vec<AttemptRecord> {
        self.ctx.state(|s| s.attempts.clone())
    }

    fn conclude(&self, stop: &Stop) -> RetryResult {
        let mut result = plan::conclude(&self.req, &self.policy, self.attempts_so_far(), stop);
        result.decisions = self.ctx.state(|s| s.events.clone());
        result
    }

    /// Attempts, then — when everything failed and the policy has a review window — a durable
    /// wait for a creator's decision; a `retry_with` decision starts another round of attempts.
    pub(crate) async fn retry_and_review(mut self) -> WorkflowResult<(RetryResult, Review)> {
        let mut round_start = 0;
        loop {
            let stop = self.attempts(round_start).await?;
            let result = self.conclude(&stop);
            if result.outcome != Outcome::Escalated {
                return Ok((result, Review::None));
            }
            let window = self.policy.review_window_secs;
            if window == 0 {
                return Ok((result, Review::Pending));
            }
            match self.await_review(result, window).await? {
                Ok(done) => return Ok(done),
                Err((params, vary, attempts)) => {
                    let made = u32::try_from(self.attempts_so_far().len()).unwrap_or(u32::MAX);
                    let (p, policy) = review::apply_retry_with(
                        &self.req.params,
                        &self.policy,
                        made,
                        &params,
                        &vary,
                        attempts,
                    );
                    self.req.params = p;
                    self.policy = policy.clone();
                    round_start = made;
                    self.ctx.state_mut(|s| {
                        s.policy = Some(policy);
                        s.phase = Phase::Retrying;
                        s.escalate = None;
                        s.result = None;
                    });
                    self.ctx
                        .upsert_search_attributes([RETRY_OUTCOME.value_set("running".to_owned())]);
                }
            }
        }
    }

    /// Record the escalation and wait for a decision, an abort or the end of the window.
    /// `Ok` is final; `Err` carries a `retry_with` to run.
    #[allow(clippy::type_complexity)]
    async fn await_review(
        &self,
        result: RetryResult,
        window_secs: u64,
    ) -> WorkflowResult<
        Result<
            (RetryResult, Review),
            (
                serde_json::Map<String, serde_json::Value>,
                std::collections::BTreeMap<String, retake_domain::policy::JitterSpec>,
                u32,
            ),
        >,
    > {
        self.ctx.state_mut(|s| {
            s.phase = Phase::AwaitingReview;
            s.result = Some(result.clone());
        });
        self.ctx
            .upsert_search_attributes([RETRY_OUTCOME.value_set("awaiting_review".to_owned())]);
        self.ctx.set_current_details(format!(
            "{} — awaiting a creator's decision (update `decide`) for up to {window_secs} s",
            result.report
        ));
        record_outcome(&self.ctx, &result, Review::Pending).await?;
        let decided = temporalio_sdk::workflows::select! {
            _ = self.ctx.timer(Duration::from_secs(window_secs)) => false,
            _ = self.ctx.wait_condition(|s: &SegmentRetryWorkflow| s.decision.is_some() || s.abort.is_some()) => true,
        };
        if !decided {
            return Ok(Ok((
                plan::review_expired(result, window_secs),
                Review::Pending,
            )));
        }
        if let Some(abort) = self.ctx.state(|s| s.abort.clone()) {
            let stop = Stop::Aborted {
                by: abort.by,
                reason: abort.reason,
            };
            return Ok(Ok((self.conclude(&stop), Review::None)));
        }
        let Some((decision, event)) = self.ctx.state_mut(|s| s.decision.take()) else {
            return Ok(Ok((result, Review::Pending)));
        };
        let mut result = result;
        result.decisions = self.ctx.state(|s| s.events.clone());
        Ok(match decision {
            Decision::Accept { attempt } => {
                Ok((plan::accepted(result, attempt, &event), Review::Accepted))
            }
            Decision::Reject => Ok((plan::rejected(result, &event), Review::Rejected)),
            Decision::RetryWith {
                params,
                vary,
                attempts,
            } => {
                record_outcome(&self.ctx, &result, Review::Retrying).await?;
                Err((params, vary, attempts))
            }
        })
    }

    /// A creator's abort or escalation, if any, as a reason to stop.
    fn creator_stop(&self) -> Option<Stop> {
        let (abort, escalate) = self.ctx.state(|s| (s.abort.clone(), s.escalate.clone()));
        abort
            .map(|e: CreatorEvent| Stop::Aborted {
                by: e.by,
                reason: e.reason,
            })
            .or_else(|| {
                escalate.map(|e| Stop::Escalated {
                    by: e.by,
                    reason: e.reason,
                })
            })
    }

    /// Run attempts until the plan or a creator says stop; every attempt is recorded before the
    /// next starts.
    async fn attempts(&self, round_start: u32) -> WorkflowResult<Stop> {
        loop {
            let attempt = match self.plan(round_start) {
                Ok(attempt) => attempt,
                Err(stop) => return Ok(stop),
            };
            let k = attempt.attempt;
            if let Some(stop) = self.creator_stop() {
                return Ok(stop);
            }
            if let Some(stop) = self.reserve(&attempt).await? {
                return Ok(stop);
            }
            if let Some(stop @ Stop::Aborted { .. }) = self.creator_stop() {
                self.release(k).await?;
                return Ok(stop);
            }
            let token = self.ctx.cancellation_token().child_token();
            self.ctx.state_mut(|s| s.running = Some((k, token.clone())));
            let record = self.generate_and_score(attempt, &token).await?;
            self.ctx.state_mut(|s| s.running = None);
            self.ctx
                .execute_activity(
                    RetryActivities::record_attempt,
                    RecordAttempt {
                        key: self.key(k),
                        segment_id: self.req.segment_id.to_string(),
                        project_id: self.req.project_id.to_string(),
                        scene_type: self.req.scene_type.to_string(),
                        record: record.clone(),
                    },
                    options::store(format!("attempt {k} · record · {}", record.status.as_str())),
                )
                .await?;
            self.ctx.state_mut(|s| s.attempts.push(record));
        }
    }

    /// The next attempt's plan, or why to stop (pure planning, so computing the plan before the
    /// creator check issues the same commands as before the ladder).
    fn plan(&self, round_start: u32) -> Result<AttemptPlan, Stop> {
        let attempts = self.attempts_so_far();
        if self.ladder {
            ladder::next(&self.req, &self.policy, &attempts, round_start)
        } else {
            plan::next(&self.policy, &attempts, round_start)
                .map(|k| plan::plan_attempt(&self.req, &self.policy, k))
        }
    }

    /// Reserve the attempt's estimated GPU time; `Some(stop)` when the budget refuses.
    async fn reserve(&self, attempt: &AttemptPlan) -> WorkflowResult<Option<Stop>> {
        let k = attempt.attempt;
        let answer = self
            .ctx
            .execute_activity(
                RetryActivities::reserve_budget,
                ReserveBudget {
                    key: self.key(k),
                    project_id: self.req.project_id.to_string(),
                    gpu_ms: self.policy.est_gpu_ms_per_attempt,
                },
                options::store(format!(
                    "attempt {k} · reserve {} GPU ms",
                    self.policy.est_gpu_ms_per_attempt
                )),
            )
            .await?;
        Ok(match answer {
            Reservation::Granted { .. } => None,
            Reservation::Refused {
                limit_ms,
                committed_ms,
                requested_ms,
            } => Some(Stop::BudgetRefused {
                attempt: k,
                detail: format!(
                    "{requested_ms} GPU ms requested, {committed_ms} of {limit_ms} already committed"
                ),
            }),
        })
    }

    async fn release(&self, k: u32) -> WorkflowResult<()> {
        self.ctx
            .execute_activity(
                RetryActivities::release_budget,
                self.key(k),
                options::store(format!("attempt {k} · release budget")),
            )
            .await?;
        Ok(())
    }

    /// Generate and score; settle (or release) the reservation with the GPU time used. An abort
    /// cancels generation and scoring through `token`.
    async fn generate_and_score(
        &self,
        attempt: AttemptPlan,
        token: &WorkflowCancellationToken,
    ) -> WorkflowResult<AttemptRecord> {
        let k = attempt.attempt;
        let aborted_by = || self.ctx.state(|s| s.abort.as_ref().map(|e| e.by.clone()));
        let how = attempt
            .strategy
            .map_or_else(String::new, |s| format!(" · {s}"));
        self.ctx.set_current_details(format!(
            "Segment {}: attempt {k}/{}{how} generating (seed {})",
            self.req.segment_id, self.policy.max_attempts, attempt.seed
        ));
        let generated = self
            .ctx
            .execute_activity(
                RetryActivities::generate,
                GenerateRequest {
                    key: self.key(k),
                    segment_id: self.req.segment_id.to_string(),
                    scene_type: self.req.scene_type.to_string(),
                    seed: attempt.seed,
                    params: attempt.params.clone(),
                    strategy: attempt.strategy,
                    prompt: attempt.prompt.clone(),
                    revise_uri: attempt.revise_uri.clone(),
                },
                options::generate(
                    format!("attempt {k} · generate{how} · seed {:#x}", attempt.seed),
                    token,
                ),
            )
            .await;
        let generated = match generated {
            Ok(g) => g,
            Err(e) => {
                self.release(k).await?;
                return Ok(match (aborted_by(), &e) {
                    (Some(by), ActivityExecutionError::Cancelled(_)) => attempt.aborted(&by),
                    _ => attempt.errored(0, format!("generation failed: {e}")),
                });
            }
        };
        self.ctx.set_current_details(format!(
            "Segment {}: attempt {k}/{} scoring",
            self.req.segment_id, self.policy.max_attempts
        ));
        let scored = self
            .ctx
            .execute_activity(
                RetryActivities::score_qa,
                ScoreRequest {
                    key: self.key(k),
                    segment_id: self.req.segment_id.to_string(),
                    scene_type: self.req.scene_type.to_string(),
                    seed: attempt.seed,
                    params: attempt.params.clone(),
                    output_uri: generated.output_uri.clone(),
                },
                options::score(
                    format!("attempt {k} · score QA · seed {:#x}", attempt.seed),
                    token,
                ),
            )
            .await;
        self.ctx
            .execute_activity(
                RetryActivities::settle_budget,
                SettleBudget {
                    key: self.key(k),
                    project_id: self.req.project_id.to_string(),
                    gpu_ms: generated.gpu_ms,
                },
                options::store(format!("attempt {k} · settle {} GPU ms", generated.gpu_ms)),
            )
            .await?;
        Ok(match (scored, aborted_by()) {
            (Ok(qa), _) => attempt.scored(
                &self.policy,
                qa,
                generated.gpu_ms,
                Some(generated.output_uri),
            ),
            (Err(ActivityExecutionError::Cancelled(_)), Some(by)) => {
                let mut r = attempt.aborted(&by);
                r.gpu_ms = generated.gpu_ms;
                r
            }
            (Err(e), _) => attempt.errored(generated.gpu_ms, format!("QA scoring failed: {e}")),
        })
    }
}
