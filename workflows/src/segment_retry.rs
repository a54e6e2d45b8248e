//! The workflow: its state, its signals, update and query, and `run`.

use crate::INVALID_REQUEST;
use crate::argument::json_argument;
use crate::attempts::Run;
use crate::search::{BEHAVIOUR_KEY, PROJECT_ID, RETRY_OUTCOME, SCENE_TYPE, SEGMENT_ID};
use crate::store_steps;
use retake_activities::RetryActivities;
use retake_activities::io::{LoadPolicy, RecordOutcome, Review};
use retake_domain::contract::{AttemptRecord, RetryRequest, RetryResult};
use retake_domain::event::CreatorEvent;
use retake_domain::plan;
use retake_domain::report;
use retake_domain::review::{Decision, Phase};
use retake_domain::status::Status;
use retake_domain::stop::Stop;
use retake_domain::{RetryPolicy, ValidationError};
use serde_json::{Value, json};
use temporalio_common::data_converters::RawValue;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ApplicationFailure, SyncWorkflowContext, WorkflowCancellationToken, WorkflowContext,
    WorkflowContextView, WorkflowResult,
};

/// Retries a segment that failed its quality gate. Argument: the JSON of [`RetryRequest`];
/// result: [`RetryResult`]. Signals `abort` and `escalate`, update `decide`, query `report`.
#[workflow]
#[derive(Default)]
pub struct SegmentRetryWorkflow {
    pub(crate) phase: Phase,
    pub(crate) segment_id: String,
    pub(crate) project_id: String,
    pub(crate) scene_type: String,
    pub(crate) policy: Option<RetryPolicy>,
    pub(crate) attempts: Vec<AttemptRecord>,
    /// The attempts generating or being scored, in the order they started, and the tokens that
    /// cancel them.
    pub(crate) running: Vec<(u32, WorkflowCancellationToken)>,
    /// Attempts given out to a slot and not yet recorded (planning, reserving, running,
    /// recording): how many are in flight for `parallel::next`.
    pub(crate) claimed: Vec<u32>,
    /// Why the attempts still in flight are being cancelled though nobody aborted (another one
    /// passed first, a creator escalated a parallel run): they are recorded `cancelled`.
    pub(crate) cancel_reason: Option<String>,
    /// An escalation cancels the attempts in flight (`parallelism` > 1); with one slot the
    /// attempt in flight finishes first.
    pub(crate) escalate_cancels: bool,
    /// The budget refused an attempt of this round: no further attempt starts.
    pub(crate) refused: Option<Stop>,
    /// Every creator signal and decision, in order.
    pub(crate) events: Vec<CreatorEvent>,
    pub(crate) abort: Option<CreatorEvent>,
    pub(crate) escalate: Option<CreatorEvent>,
    /// A validated decision not yet acted on.
    pub(crate) decision: Option<(Decision, CreatorEvent)>,
    /// The provisional result while awaiting review, then the final one.
    pub(crate) result: Option<RetryResult>,
    /// A decision, an abort or the window's end has closed the review being waited on; the
    /// phase changes once that is recorded, and no second decision is taken meanwhile.
    pub(crate) review_closed: bool,
    /// The result is final and being recorded: signals and decisions can no longer change it.
    /// The phase becomes `Finished` only once the store holds the run, so a client that sees
    /// `finished` finds the run in the history.
    pub(crate) concluded: bool,
}

fn invalid(e: ValidationError) -> ApplicationFailure {
    ApplicationFailure::builder(e.to_string())
        .type_name(INVALID_REQUEST.to_owned())
        .non_retryable(true)
        .build()
}

#[workflow_methods]
impl SegmentRetryWorkflow {
    /// The argument is taken as raw payloads and validated here (see [`crate::argument`]), so
    /// malformed input fails the workflow with a message naming the field instead of failing
    /// workflow tasks forever.
    #[run]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: RawValue,
    ) -> WorkflowResult<RetryResult> {
        let input = json_argument(&input).map_err(invalid)?;
        let req = RetryRequest::parse(&input).map_err(invalid)?;
        // A segment's retry is found by its workflow id (the console's link, the API's controls,
        // the idempotent start): a run under another id would be attributed to a segment whose
        // page links elsewhere.
        let expected = retake_domain::workflow_id(&req.segment_id);
        if ctx.workflow_id() != expected {
            return Err(invalid(ValidationError::single(
                "segment_id",
                format!(
                    "segment {} runs as workflow {expected}, not {}",
                    req.segment_id,
                    ctx.workflow_id()
                ),
            ))
            .into());
        }
        ctx.state_mut(|s| {
            s.segment_id = req.segment_id.to_string();
            s.project_id = req.project_id.to_string();
            s.scene_type = req.scene_type.to_string();
        });
        // A patch taken after v1 (`ctx.patched`, docs/versioning.md) is decided here: before this
        // upsert, which records the behaviour version the patches taken imply, and before the
        // first local activity (a patch marker recorded after a local activity's marker, in a
        // workflow task that a query split, fails to replay: "patch marker encountered ... but
        // there is no corresponding change command").
        ctx.upsert_search_attributes([
            SEGMENT_ID.value_set(req.segment_id.to_string()),
            PROJECT_ID.value_set(req.project_id.to_string()),
            SCENE_TYPE.value_set(req.scene_type.to_string()),
            RETRY_OUTCOME.value_set("running".to_owned()),
            BEHAVIOUR_KEY.value_set(crate::BEHAVIOUR.to_owned()),
        ]);
        ctx.set_current_details(format!("Segment {}: loading policy", req.segment_id));
        let settings = store_steps::run(
            ctx,
            RetryActivities::load_settings,
            LoadPolicy {
                scene_type: req.scene_type.clone(),
            },
            format!("load settings · {}", req.scene_type),
        )
        .await?;
        let mut policy =
            RetryPolicy::resolve(settings.policy.as_ref(), req.policy.as_ref()).map_err(invalid)?;
        // Seeds the generator really uses, so the recorded seed reproduces the output.
        policy.seed_bits = policy.seed_bits.min(settings.seed_bits);
        let params_taken = settings.params_taken;
        policy.vary_only(params_taken.as_deref());
        ctx.state_mut(|s| {
            s.policy = Some(policy.clone());
            s.phase = Phase::Retrying;
        });
        let (mut result, review) = match plan::should_retry(&policy, &req.failed_qa) {
            Err(reason) => (plan::not_retried(&req, reason), Review::None),
            Ok(()) => {
                Run::new(ctx, req, policy, params_taken)
                    .retry_and_review()
                    .await?
            }
        };
        result.decisions = ctx.state(|s| s.events.clone());
        ctx.state_mut(|s| {
            s.concluded = true;
            s.result = Some(result.clone());
        });
        ctx.upsert_search_attributes([RETRY_OUTCOME.value_set(result.outcome.as_str().to_owned())]);
        ctx.set_current_details(result.report.clone());
        record_outcome(ctx, &result, review).await?;
        ctx.state_mut(|s| s.phase = Phase::Finished);
        Ok(result)
    }

    /// Stop now: the in-flight attempt is cancelled and its reservation released; finished
    /// attempts stay recorded; outcome `aborted`. Payload `{"reason": "...", "by": "..."}`.
    #[signal]
    pub fn abort(&mut self, _ctx: &mut SyncWorkflowContext<Self>, payload: Value) {
        if self.concluded || self.abort.is_some() {
            return;
        }
        let event = CreatorEvent::from_signal("abort", &payload);
        for (_, token) in &self.running {
            token.cancel_with_reason(format!("aborted by {}", event.by));
        }
        self.events.push(event.clone());
        self.abort = Some(event);
    }

    /// Stop retrying and go to human review: the attempt in flight finishes first, or, with
    /// `parallelism` > 1, every attempt in flight is cancelled (recorded `cancelled`). Payload
    /// `{"reason": "...", "by": "..."}`.
    #[signal]
    pub fn escalate(&mut self, _ctx: &mut SyncWorkflowContext<Self>, payload: Value) {
        if self.concluded || self.phase == Phase::AwaitingReview || self.escalate.is_some() {
            return;
        }
        let event = CreatorEvent::from_signal("escalate", &payload);
        if self.escalate_cancels {
            let why = format!("cancelled: escalated by {}", event.by);
            for (_, token) in &self.running {
                token.cancel_with_reason(why.clone());
            }
            self.cancel_reason.get_or_insert(why);
        }
        self.events.push(event.clone());
        self.escalate = Some(event);
    }

    #[update_validator(decide)]
    pub fn validate_decide(
        &self,
        _ctx: &WorkflowContextView,
        input: &Value,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.phase != Phase::AwaitingReview {
            return Err(format!(
                "segment {} is not awaiting review (phase {})",
                self.segment_id,
                json!(self.phase).as_str().unwrap_or("?")
            )
            .into());
        }
        if self.decision.is_some() || self.review_closed || self.concluded {
            return Err(format!(
                "segment {}'s review is already closing; no further decision is taken",
                self.segment_id
            )
            .into());
        }
        let policy = self.policy.clone().unwrap_or_default();
        Decision::parse(input, &policy, &self.attempts)
            .map(|_| ())
            .map_err(|e| e.to_string().into())
    }

    /// A creator's review decision: `retry_with` (new params / wider jitter / more attempts),
    /// `accept` (an attempt as final) or `reject`. Validated by `validate_decide`.
    #[update]
    pub fn decide(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        input: Value,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let policy = self.policy.clone().unwrap_or_default();
        let (decision, event) = Decision::parse(&input, &policy, &self.attempts)?;
        self.events.push(event.clone());
        let answer = json!({"accepted": event.action, "by": event.by});
        self.decision = Some((decision, event));
        Ok(answer)
    }

    /// The live attempt table, phase and report text (the result shape plus `phase`).
    #[query]
    pub fn report(&self, _ctx: &WorkflowContextView) -> Status {
        if let Some(result) = &self.result {
            let mut status = Status::concluded(self.phase, result);
            status.decisions = self.events.clone();
            return status;
        }
        let policy = self.policy.clone().unwrap_or_default();
        let mut running: Vec<u32> = self.running.iter().map(|(k, _)| *k).collect();
        running.sort_unstable();
        Status {
            phase: self.phase,
            segment_id: self.segment_id.clone(),
            project_id: self.project_id.clone(),
            scene_type: self.scene_type.clone(),
            outcome: None,
            reason: match running.as_slice() {
                [] => "starting".to_owned(),
                [k] => format!("attempt {k} of {} running", policy.max_attempts),
                ks => format!(
                    "attempts {} of {} running",
                    ks.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
                    policy.max_attempts
                ),
            },
            selected_attempt: None,
            running_attempt: running.first().copied(),
            gpu_ms_total: self.attempts.iter().map(|a| a.gpu_ms).sum(),
            report: report::progress(&self.segment_id, &policy, &self.attempts, &running),
            running_attempts: running,
            attempts: self.attempts.clone(),
            decisions: self.events.clone(),
        }
    }
}

/// Record the run's outcome (or standing, while in review) in the store.
pub(crate) async fn record_outcome(
    ctx: &WorkflowContext<SegmentRetryWorkflow>,
    result: &RetryResult,
    review: Review,
) -> WorkflowResult<()> {
    store_steps::run(
        ctx,
        RetryActivities::record_outcome,
        RecordOutcome {
            workflow_id: ctx.workflow_id().to_owned(),
            run_id: ctx.run_id().to_owned(),
            result: result.clone(),
            review,
        },
        format!(
            "record outcome · {} · review {}",
            result.outcome.as_str(),
            review.as_str()
        ),
    )
    .await?;
    Ok(())
}

/// Marker type of the run method: what client workflow handles are typed by.
pub type SegmentRetryRun = segment_retry_workflow::Run;
