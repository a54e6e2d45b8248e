//! The workflow: validate, resolve the policy, run attempts until the plan says stop, conclude.

use crate::{INVALID_REQUEST, options};
use retake_activities::RetryActivities;
use retake_activities::io::{
    AttemptKey, GenerateRequest, LoadPolicy, RecordAttempt, RecordOutcome, Reservation,
    ReserveBudget, ScoreRequest, SettleBudget,
};
use retake_domain::contract::{AttemptRecord, RetryRequest, RetryResult};
use retake_domain::plan::{self, AttemptPlan, Stop};
use retake_domain::{RetryPolicy, ValidationError};
use serde_json::Value;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{ApplicationFailure, WorkflowContext, WorkflowResult};

/// Retries a segment that failed its quality gate. Argument: the JSON of
/// [`RetryRequest`]; result: [`RetryResult`].
#[workflow]
#[derive(Default)]
pub struct SegmentRetryWorkflow {
    attempts: Vec<AttemptRecord>,
}

fn invalid(e: ValidationError) -> ApplicationFailure {
    ApplicationFailure::builder(e.to_string())
        .type_name(INVALID_REQUEST.to_owned())
        .non_retryable(true)
        .build()
}

#[workflow_methods]
impl SegmentRetryWorkflow {
    /// The argument is taken as plain JSON and validated here, so malformed input fails the
    /// workflow with a message naming the field instead of failing workflow tasks forever.
    #[run]
    pub async fn run(ctx: &mut WorkflowContext<Self>, input: Value) -> WorkflowResult<RetryResult> {
        let req = RetryRequest::parse(&input).map_err(invalid)?;
        ctx.set_current_details(format!("Segment {}: loading policy", req.segment_id));
        let stored = ctx
            .execute_activity(
                RetryActivities::load_policy,
                LoadPolicy {
                    scene_type: req.scene_type.to_string(),
                },
                options::store(format!("load policy · {}", req.scene_type)),
            )
            .await?;
        let policy = RetryPolicy::resolve(stored.as_ref(), req.policy.as_ref()).map_err(invalid)?;
        let run = Run {
            ctx: ctx.clone(),
            workflow_id: ctx.workflow_id().to_owned(),
            run_id: ctx.run_id().to_owned(),
            req,
            policy,
        };
        let result = match plan::should_retry(&run.policy, &run.req.failed_qa) {
            Err(reason) => plan::not_retried(&run.req, reason),
            Ok(()) => {
                let stop = run.attempts().await?;
                let attempts = ctx.state(|s| s.attempts.clone());
                plan::conclude(&run.req, &run.policy, attempts, &stop)
            }
        };
        ctx.set_current_details(result.report.clone());
        ctx.execute_activity(
            RetryActivities::record_outcome,
            RecordOutcome {
                workflow_id: run.workflow_id.clone(),
                run_id: run.run_id.clone(),
                result: result.clone(),
            },
            options::store(format!("record outcome · {}", result.outcome.as_str())),
        )
        .await?;
        Ok(result)
    }
}

/// One run's fixed inputs, and the attempt loop.
struct Run {
    ctx: WorkflowContext<SegmentRetryWorkflow>,
    workflow_id: String,
    run_id: String,
    req: RetryRequest,
    policy: RetryPolicy,
}

impl Run {
    fn key(&self, attempt: u32) -> AttemptKey {
        AttemptKey {
            workflow_id: self.workflow_id.clone(),
            run_id: self.run_id.clone(),
            attempt,
        }
    }

    /// Run attempts until the plan says stop; every attempt is recorded before the next starts.
    async fn attempts(&self) -> WorkflowResult<Stop> {
        loop {
            let done = self.ctx.state(|s| s.attempts.clone());
            let k = match plan::next(&self.policy, &done) {
                Ok(k) => k,
                Err(stop) => return Ok(stop),
            };
            let attempt = plan::plan_attempt(&self.req, &self.policy, k);
            if let Some(stop) = self.reserve(&attempt).await? {
                return Ok(stop);
            }
            let record = self.generate_and_score(attempt).await?;
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

    /// Generate and score; settle (or release) the reservation with the GPU time used.
    async fn generate_and_score(&self, attempt: AttemptPlan) -> WorkflowResult<AttemptRecord> {
        let k = attempt.attempt;
        self.ctx.set_current_details(format!(
            "Segment {}: attempt {k}/{} generating (seed {})",
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
                },
                options::generate(format!("attempt {k} · generate · seed {:#x}", attempt.seed)),
            )
            .await;
        let generated = match generated {
            Ok(g) => g,
            Err(e) => {
                self.ctx
                    .execute_activity(
                        RetryActivities::release_budget,
                        self.key(k),
                        options::store(format!("attempt {k} · release budget")),
                    )
                    .await?;
                return Ok(attempt.errored(0, format!("generation failed: {e}")));
            }
        };
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
                options::score(format!("attempt {k} · score QA · seed {:#x}", attempt.seed)),
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
        Ok(match scored {
            Ok(qa) => attempt.scored(
                &self.policy,
                qa,
                generated.gpu_ms,
                Some(generated.output_uri),
            ),
            Err(e) => attempt.errored(generated.gpu_ms, format!("QA scoring failed: {e}")),
        })
    }
}

/// Marker type of the run method: what client workflow handles are typed by.
pub type SegmentRetryRun = segment_retry_workflow::Run;
