//! The workflow: its state, its signals, update and query, and `run`.
//!
//! Every decision is the decision core's ([`retake_domain::machine`]); the state here is that
//! core and the commands it answered a signal or an update with, and `run` is its interpreter
//! ([`crate::shell`]).

use crate::INVALID_REQUEST;
use crate::argument::json_argument;
use crate::search::{BEHAVIOUR_KEY, PROJECT_ID, RETRY_OUTCOME, SCENE_TYPE, SEGMENT_ID};
use crate::store_steps;
use retake_activities::RetryActivities;
use retake_activities::io::LoadPolicy;
use retake_domain::ValidationError;
use retake_domain::contract::{RetryRequest, RetryResult};
use retake_domain::event::CreatorEvent;
use retake_domain::machine::{Command, Event, Machine, Settings};
use retake_domain::review::Decision;
use retake_domain::status::Status;
use serde_json::{Value, json};
use std::collections::VecDeque;
use temporalio_common::data_converters::RawValue;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ApplicationFailure, SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult,
};

/// Retries a segment that failed its quality gate. Argument: the JSON of [`RetryRequest`];
/// result: [`RetryResult`]. Signals `abort` and `escalate`, update `decide`, query `report`.
#[workflow]
#[derive(Default)]
pub struct SegmentRetryWorkflow {
    /// The decision core: every fact of the run and every decision.
    pub(crate) machine: Machine,
    /// Commands the core answered a signal or update with, for the interpreter to carry out.
    pub(crate) queue: VecDeque<Command>,
    /// The segment, project and scene type, for the report before the run has started.
    pub(crate) names: (String, String, String),
}

pub(crate) fn invalid(e: ValidationError) -> ApplicationFailure {
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
            s.names = (
                req.segment_id.to_string(),
                req.project_id.to_string(),
                req.scene_type.to_string(),
            );
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
        let started = Event::Started {
            req: Box::new(req.clone()),
            settings: Settings {
                policy: settings.policy,
                seed_bits: settings.seed_bits,
                params_taken: settings.params_taken,
            },
        };
        let first = ctx.state_mut(|s| s.machine.on(started));
        crate::shell::run(ctx, req, first).await
    }

    /// Stop now: the attempts in flight are cancelled (their GPU time billed, reservations
    /// released), finished attempts stay recorded; outcome `aborted`, also from review. Payload
    /// `{"reason": "...", "by": "..."}`. Ignored once the result is final.
    #[signal]
    pub fn abort(&mut self, _ctx: &mut SyncWorkflowContext<Self>, payload: Value) {
        let event = CreatorEvent::from_signal("abort", &payload);
        let commands = self.machine.on(Event::Abort(event));
        self.queue.extend(commands);
    }

    /// Stop retrying and go to human review: the attempt in flight finishes first, or, with
    /// `parallelism` > 1, every attempt in flight is cancelled (recorded `cancelled`). Payload
    /// `{"reason": "...", "by": "..."}`. Ignored unless attempts are being made.
    #[signal]
    pub fn escalate(&mut self, _ctx: &mut SyncWorkflowContext<Self>, payload: Value) {
        let event = CreatorEvent::from_signal("escalate", &payload);
        let commands = self.machine.on(Event::Escalate(event));
        self.queue.extend(commands);
    }

    #[update_validator(decide)]
    pub fn validate_decide(
        &self,
        _ctx: &WorkflowContextView,
        input: &Value,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.machine.decidable()?;
        let policy = self.machine.policy().cloned().unwrap_or_default();
        let (decision, event) =
            Decision::parse(input, &policy, self.machine.attempts()).map_err(|e| e.to_string())?;
        // Validators do not run on replay and a refused update leaves no history, so a rule
        // added here changes no recorded run.
        Ok(self.machine.admits(&decision, &event)?)
    }

    /// A creator's review decision: `retry_with` (new params / wider jitter / more attempts),
    /// `accept` (an attempt as final) or `reject`. Validated by `validate_decide`.
    #[update]
    pub fn decide(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        input: Value,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        self.machine.decidable()?;
        let policy = self.machine.policy().cloned().unwrap_or_default();
        let (decision, event) = Decision::parse(&input, &policy, self.machine.attempts())?;
        let answer = json!({"accepted": event.action, "by": event.by});
        let commands = self.machine.on(Event::Decided { decision, event });
        self.queue.extend(commands);
        Ok(answer)
    }

    /// The live attempt table, phase and report text (the result shape plus `phase`).
    #[query]
    pub fn report(&self, _ctx: &WorkflowContextView) -> Status {
        let mut status = self.machine.status();
        if status.segment_id.is_empty() {
            (status.segment_id, status.project_id, status.scene_type) = self.names.clone();
        }
        status
    }
}

/// Marker type of the run method: what client workflow handles are typed by.
pub type SegmentRetryRun = segment_retry_workflow::Run;
