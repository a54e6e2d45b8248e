//! The attempt loop and the human-review wait of one run.

use crate::failure;
use crate::options::{self, Queue};
use crate::search::RETRY_OUTCOME;
use crate::segment_retry::{SegmentRetryWorkflow, record_outcome};
use crate::store_steps;
use retake_activities::RetryActivities;
use retake_activities::io::{
    AttemptKey, GenerateRequest, Generated, HeldBudget, LoadEvidence, PlaceGeneration,
    RecordAttempt, RecordSettled, Reservation, ReserveAttempt, ReserveBudget, Review, ScoreRequest,
    Scored, SettleBudget,
};
use retake_domain::RetryPolicy;
use retake_domain::adapt::EvidenceQuery;
use retake_domain::contract::{AttemptRecord, Outcome, RetryRequest, RetryResult};
use retake_domain::event::CreatorEvent;
use retake_domain::ladder;
use retake_domain::parallel::{self, Next};
use retake_domain::plan::{self, AttemptPlan};
use retake_domain::policy::{Placement, Selection};
use retake_domain::review::{Decision, Phase, RetryWith};
use retake_domain::stop::Stop;
use retake_domain::strategy::Strategy;
use std::time::Duration;
use temporalio_sdk::{
    ActivityExecutionError, TimerOptions, WorkflowCancellationToken, WorkflowContext,
    WorkflowResult,
};

/// One run's inputs (the base parameters and policy change when a reviewer retries with new
/// ones) and the loops that use them.
pub(crate) struct Run {
    ctx: WorkflowContext<SegmentRetryWorkflow>,
    workflow_id: String,
    run_id: String,
    req: RetryRequest,
    policy: RetryPolicy,
    /// The parameters the generator sends on, when only some (`load_settings`): a creator's
    /// `retry_with` may widen `vary`, and is fitted to them as the stored policy was.
    params_taken: Option<Vec<String>>,
}

/// The earlier runs of one attempt's generation: the workers that failed it and why, the GPU
/// time they used, and the worker the last run was placed on by name.
#[derive(Debug, Default)]
struct Reruns {
    failed: Vec<(String, String)>,
    used_ms: u64,
    target: Option<String>,
    /// Times a generation placed by name was placed again because it did not start in time.
    waits: u32,
}

/// How a human review ended.
enum ReviewEnd {
    /// The run is over: its result and review state.
    Final(RetryResult, Review),
    /// A reviewer asked for another round of attempts.
    Retry(RetryWith),
}

/// How often one attempt's generation is re-run on another worker after infrastructure
/// failures before the attempt is recorded as an error.
pub(crate) const MAX_RERUNS: usize = 2;

/// How often a generation placed on a worker by name that did not start within
/// `options::PLACED_START_TIMEOUT` (the worker busy or gone) is placed again, at most: 20 × 30 s,
/// ten minutes of waiting for a GPU, before the attempt is recorded as an error.
pub(crate) const MAX_PLACED_WAITS: u32 = 20;

/// What a reservation means for attempt `k`: the GPU ms granted, or why to stop.
fn granted(k: u32, answer: Reservation) -> Result<u64, Stop> {
    match answer {
        Reservation::Granted { gpu_ms } => Ok(gpu_ms),
        Reservation::Refused {
            limit_ms,
            committed_ms,
            requested_ms,
        } => Err(Stop::BudgetRefused {
            attempt: k,
            detail: format!(
                "{requested_ms} GPU ms requested, {committed_ms} of {limit_ms} already committed"
            ),
        }),
    }
}

impl Run {
    pub(crate) fn new(
        ctx: &WorkflowContext<SegmentRetryWorkflow>,
        req: RetryRequest,
        policy: RetryPolicy,
        params_taken: Option<Vec<String>>,
    ) -> Self {
        Self {
            ctx: ctx.clone(),
            workflow_id: ctx.workflow_id().to_owned(),
            run_id: ctx.run_id().to_owned(),
            params_taken,
            req,
            policy,
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
            let stop = self.slots(round_start).await?;
            let result = self.conclude(&stop);
            if result.outcome != Outcome::Escalated {
                return Ok((result, Review::None));
            }
            let window = self.policy.review_window_secs;
            if window == 0 {
                return Ok((result, Review::Pending));
            }
            match self.await_review(result, window).await? {
                ReviewEnd::Final(result, review) => return Ok((result, review)),
                ReviewEnd::Retry(retry) => {
                    let made = plan::made(&self.attempts_so_far());
                    let (p, mut policy) = retry.apply(&self.req.params, &self.policy, made);
                    policy.vary_only(self.params_taken.as_deref());
                    self.req.params = p;
                    self.policy = policy.clone();
                    round_start = made;
                    self.ctx.state_mut(|s| {
                        s.policy = Some(policy);
                        s.phase = Phase::Retrying;
                        s.escalate = None;
                        s.result = None;
                        s.review_closed = false;
                        s.cancel_reason = None;
                        s.refused = None;
                    });
                    self.ctx
                        .upsert_search_attributes([RETRY_OUTCOME.value_set("running".to_owned())]);
                }
            }
        }
    }

    /// Record the escalation and wait for a decision, an abort or the end of the window.
    async fn await_review(
        &self,
        result: RetryResult,
        window_secs: u64,
    ) -> WorkflowResult<ReviewEnd> {
        self.ctx
            .upsert_search_attributes([RETRY_OUTCOME.value_set("awaiting_review".to_owned())]);
        self.ctx.set_current_details(format!(
            "{} — awaiting a creator's decision (update `decide`) for up to {window_secs} s",
            result.report
        ));
        record_outcome(&self.ctx, &result, Review::Pending).await?;
        // Only now, with the review pending in the store, does the query say so (and `decide`
        // accept decisions): a client that sees the phase finds the review recorded.
        self.ctx.state_mut(|s| {
            s.phase = Phase::AwaitingReview;
            s.result = Some(result.clone());
        });
        // The window's timer gets a token of its own, held here until the wait ends. On the
        // workflow's own token (the SDK's default) a timer dropped before it fires (a decision
        // came first, or the worker evicted the parked run) stays registered with a handle to
        // the workflow's context, which holds that token: a cycle that kept every such run's
        // context in memory for good (temporalio-workflow 1.1.1). The workflow's cancellation
        // still reaches the timer: this token is a child of the workflow's. No command changes.
        let window = self.ctx.cancellation_token().child_token();
        let timer = TimerOptions::builder(Duration::from_secs(window_secs))
            .cancellation_token(window.clone())
            .build();
        let decided = temporalio_sdk::workflows::select! {
            _ = self.ctx.timer(timer) => false,
            _ = self.ctx.wait_condition(|s: &SegmentRetryWorkflow| s.decision.is_some() || s.abort.is_some()) => true,
        };
        drop(window);
        self.ctx.state_mut(|s| s.review_closed = true);
        if !decided {
            return Ok(ReviewEnd::Final(
                plan::review_expired(result, window_secs),
                Review::Pending,
            ));
        }
        if let Some(abort) = self.ctx.state(|s| s.abort.clone()) {
            let stop = Stop::Aborted {
                by: abort.by,
                reason: abort.reason,
            };
            return Ok(ReviewEnd::Final(self.conclude(&stop), Review::None));
        }
        let Some((decision, event)) = self.ctx.state_mut(|s| s.decision.take()) else {
            return Ok(ReviewEnd::Final(result, Review::Pending));
        };
        let mut result = result;
        result.decisions = self.ctx.state(|s| s.events.clone());
        Ok(match decision {
            Decision::Accept { attempt } => {
                ReviewEnd::Final(plan::accepted(result, attempt, &event), Review::Accepted)
            }
            Decision::Reject => ReviewEnd::Final(plan::rejected(result, &event), Review::Rejected),
            Decision::RetryWith(retry) => {
                record_outcome(&self.ctx, &result, Review::Retrying).await?;
                ReviewEnd::Retry(retry)
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

    /// Run the round's attempts in up to `parallelism` slots, each starting the attempt
    /// `parallel::next` gives it until the plan, the budget or a creator says stop; then why the
    /// round ended. With `parallelism` 1 the slot runs one attempt after another, each recorded
    /// before the next is planned.
    async fn slots(&self, round_start: u32) -> WorkflowResult<Stop> {
        let parallelism = self.policy.parallelism.max(1);
        self.ctx.state_mut(|s| {
            s.escalate_cancels = parallelism > 1;
            s.cancel_reason = None;
            s.refused = None;
        });
        let slots = (0..parallelism).map(|_| self.slot(round_start));
        for ended in temporalio_sdk::workflows::join_all(slots).await {
            ended?;
        }
        if let Some(stop) = self.creator_stop() {
            return Ok(stop);
        }
        if let Some(stop) = self.ctx.state(|s| s.refused.clone()) {
            return Ok(stop);
        }
        let attempts = self.attempts_so_far();
        Ok(
            match parallel::next(&self.req, &self.policy, &attempts, &[], round_start) {
                Next::Stop(stop) => stop,
                // Unreachable: a slot ends only on a stop, and the last to end saw none in
                // flight. Ending the round is the safe answer.
                Next::Start(_) | Next::Wait => Stop::AttemptsUsed,
            },
        )
    }

    /// One slot: claim the next attempt, run it, record it; wait while the next rung needs the
    /// drafts in flight; end when the plan, the budget or a creator says stop.
    async fn slot(&self, round_start: u32) -> WorkflowResult<()> {
        loop {
            let stopping = self.ctx.state(|s| {
                s.abort.is_some()
                    || s.escalate.is_some()
                    || s.refused.is_some()
                    || s.cancel_reason.is_some()
            });
            if stopping {
                return Ok(());
            }
            let (attempts, in_flight) = self.ctx.state(|s| (s.attempts.clone(), s.claimed.clone()));
            let plan =
                match parallel::next(&self.req, &self.policy, &attempts, &in_flight, round_start) {
                    Next::Start(plan) => *plan,
                    Next::Stop(_) => return Ok(()),
                    Next::Wait => {
                        let seen = attempts.len();
                        self.ctx
                            .wait_condition(move |s: &SegmentRetryWorkflow| {
                                s.attempts.len() != seen
                                    || s.abort.is_some()
                                    || s.escalate.is_some()
                            })
                            .await?;
                        continue;
                    }
                };
            let k = plan.attempt;
            // Claimed before the first await, so the next slot to ask gets attempt k + 1.
            self.ctx.state_mut(|s| s.claimed.push(k));
            let ran = self.claimed_attempt(plan).await;
            self.ctx.state_mut(|s| s.claimed.retain(|&c| c != k));
            ran?;
        }
    }

    /// Plan with evidence, reserve, generate and score, record: one claimed attempt of a slot.
    async fn claimed_attempt(&self, plan: AttemptPlan) -> WorkflowResult<()> {
        let attempt = self.with_evidence(plan).await?;
        let k = attempt.attempt;
        if self.creator_stop().is_some() {
            return Ok(());
        }
        let (reserved_ms, eager) = match self.reserve_attempt(&attempt).await? {
            Ok(granted) => granted,
            Err(stop) => {
                self.ctx.state_mut(|s| {
                    s.refused.get_or_insert(stop);
                });
                return Ok(());
            }
        };
        let cancelled = self
            .ctx
            .state(|s| s.abort.is_some() || s.cancel_reason.is_some());
        if cancelled {
            self.release(k).await?;
            return Ok(());
        }
        let token = self.ctx.cancellation_token().child_token();
        self.ctx.state_mut(|s| s.running.push((k, token.clone())));
        let (record, unsettled) = self
            .generate_and_score(attempt, reserved_ms, eager, &token)
            .await?;
        self.ctx.state_mut(|s| {
            s.running.retain(|(r, _)| *r != k);
            // The first pass of a `first_pass` round cancels the attempts still running.
            if record.passed
                && self.policy.selection == Selection::FirstPass
                && s.cancel_reason.is_none()
                && s.abort.is_none()
            {
                let why = format!("cancelled: attempt {k} passed first");
                for (_, token) in &s.running {
                    token.cancel_with_reason(why.clone());
                }
                s.cancel_reason = Some(why);
            }
        });
        self.finish(k, &record, unsettled).await?;
        self.ctx.state_mut(|s| {
            let at = s.attempts.partition_point(|a| a.attempt < k);
            s.attempts.insert(at, record);
        });
        Ok(())
    }

    /// Record attempt `k`; with `unsettled` GPU ms (a scored attempt), settle its reservation to
    /// them in the same step (activity `record_settled`), one store transaction, so the attempt
    /// is never billed without its record or recorded without its bill.
    async fn finish(
        &self,
        k: u32,
        record: &AttemptRecord,
        unsettled: Option<u64>,
    ) -> WorkflowResult<()> {
        let Some(gpu_ms) = unsettled else {
            return self.record(k, record).await;
        };
        store_steps::run(
            &self.ctx,
            RetryActivities::record_settled,
            RecordSettled {
                attempt: self.record_input(k, record),
                gpu_ms,
            },
            format!(
                "attempt {k} · settle {gpu_ms} GPU ms · record · {}",
                record.status.as_str()
            ),
        )
        .await?;
        Ok(())
    }

    fn record_input(&self, k: u32, record: &AttemptRecord) -> RecordAttempt {
        RecordAttempt {
            key: self.key(k),
            segment_id: self.req.segment_id.clone(),
            project_id: self.req.project_id.clone(),
            scene_type: self.req.scene_type.clone(),
            record: record.clone(),
        }
    }

    /// Record attempt `k` in the store (activity `record_attempt`).
    async fn record(&self, k: u32, record: &AttemptRecord) -> WorkflowResult<()> {
        store_steps::run(
            &self.ctx,
            RetryActivities::record_attempt,
            self.record_input(k, record),
            format!("attempt {k} · record · {}", record.status.as_str()),
        )
        .await?;
        Ok(())
    }

    /// An `adaptive` attempt re-planned with what the store's records say fixes its failure
    /// (the evidence is read by a store step, so a replay chooses the same); any other plan as
    /// it is.
    async fn with_evidence(&self, plan: AttemptPlan) -> WorkflowResult<AttemptPlan> {
        if plan.strategy != Some(Strategy::Adaptive) {
            return Ok(plan);
        }
        let k = plan.attempt;
        let evidence = store_steps::run(
            &self.ctx,
            RetryActivities::load_evidence,
            LoadEvidence {
                scene_type: self.req.scene_type.clone(),
                query: EvidenceQuery {
                    window: self.policy.adaptive.window,
                    scope: self.policy.adaptive.scope.clone(),
                },
            },
            format!("attempt {k} · evidence · {}", self.req.scene_type),
        )
        .await?;
        Ok(ladder::adapt(&self.policy, plan, &evidence))
    }

    /// Reserve attempt `k`'s budget (the policy's estimate, or what the scene type's recent
    /// attempts really took when that is more) and, unless its generation must go to a
    /// particular worker (`same_worker` with a previous one), ask the worker running this step
    /// whether it takes the generation eagerly: the amount granted and that answer, or why to
    /// stop. The answer is in the history (the local activity's marker), so a replay schedules
    /// the generation on the same queue.
    async fn reserve_attempt(
        &self,
        attempt: &AttemptPlan,
    ) -> WorkflowResult<Result<(u64, bool), Stop>> {
        let k = attempt.attempt;
        let wanted =
            !(self.policy.placement == Placement::SameWorker && self.previous_worker(k).is_some());
        let answer = store_steps::run(
            &self.ctx,
            RetryActivities::reserve_attempt,
            ReserveAttempt {
                budget: ReserveBudget {
                    key: self.key(k),
                    project_id: self.req.project_id.clone(),
                    gpu_ms: self.policy.est_gpu_ms_per_attempt,
                    scene_type: Some(self.req.scene_type.clone()),
                },
                eager: wanted,
            },
            format!(
                "attempt {k} · reserve {} GPU ms",
                self.policy.est_gpu_ms_per_attempt
            ),
        )
        .await?;
        Ok(granted(k, answer.reservation).map(|ms| (ms, answer.eager)))
    }

    async fn release(&self, k: u32) -> WorkflowResult<()> {
        store_steps::run(
            &self.ctx,
            RetryActivities::release_budget,
            self.key(k),
            format!("attempt {k} · release budget"),
        )
        .await?;
        Ok(())
    }

    /// Generate and score. A failed generation's reservation is settled (or released) here; a
    /// generated attempt's settlement is left to the step that records it: the GPU ms still to
    /// settle are the second value. An abort cancels generation and scoring through `token`.
    async fn generate_and_score(
        &self,
        attempt: AttemptPlan,
        reserved_ms: u64,
        eager: bool,
        token: &WorkflowCancellationToken,
    ) -> WorkflowResult<(AttemptRecord, Option<u64>)> {
        let (generated, reruns) = self
            .placed_generation(&attempt, reserved_ms, eager, token)
            .await?;
        let mut attempt = attempt;
        attempt.note = retake_domain::report::rerun_note(attempt.note.take(), &reruns.failed);
        let mut generated = match generated {
            Ok(generated) => generated,
            Err(e) => {
                let mut record = self.generation_failed(attempt, &e, reruns.used_ms).await?;
                record.worker = failure::worker(&e).or(reruns.target);
                return Ok((record, None));
            }
        };
        generated.gpu_ms = generated.gpu_ms.saturating_add(reruns.used_ms);
        let worker = generated.worker.take();
        let k = attempt.attempt;
        self.ctx.set_current_details(format!(
            "Segment {}: attempt {k}/{} scoring",
            self.req.segment_id, self.policy.max_attempts
        ));
        let scored = self.score(&attempt, &generated, token).await;
        let mut record = match (scored, self.aborted_by(), self.cancel_reason()) {
            (Ok(qa), _, _) => attempt.scored(
                &self.policy,
                qa,
                generated.gpu_ms,
                Some(generated.output_uri),
            ),
            (Err(ActivityExecutionError::Cancelled(_)), Some(by), _) => {
                attempt.aborted(&by, generated.gpu_ms, Some(generated.output_uri))
            }
            (Err(ActivityExecutionError::Cancelled(_)), None, Some(why)) => {
                attempt.cancelled(why, generated.gpu_ms, Some(generated.output_uri))
            }
            (Err(e), _, _) => {
                let cause = failure::of(&e);
                // The output exists and was paid for: the record keeps where it is.
                attempt.errored(
                    generated.gpu_ms,
                    &cause.kind,
                    format!("QA scoring failed: {}", cause.message),
                    Some(generated.output_uri),
                )
            }
        };
        record.worker = worker;
        Ok((record, Some(generated.gpu_ms)))
    }

    /// Generate on the shared generate queue (or eagerly on the workflow's own queue when
    /// `eager`, or on the previous attempt's worker under `same_worker`), and re-run a
    /// generation that failed because of its machine on another worker (policy `placement`),
    /// at most [`MAX_RERUNS`] times: the same attempt, seed and parameters. What the failed runs
    /// used is billed with the attempt.
    async fn placed_generation(
        &self,
        attempt: &AttemptPlan,
        reserved_ms: u64,
        eager: bool,
        token: &WorkflowCancellationToken,
    ) -> WorkflowResult<(Result<Generated, ActivityExecutionError>, Reruns)> {
        let mut reruns = Reruns::default();
        // The first run on the workflow's own queue, handed to the worker that promised a GPU.
        let mut eager = eager;
        let k = attempt.attempt;
        let shared = Queue::Shared(retake_domain::generate_queue(self.ctx.task_queue()));
        let mut queue = shared.clone();
        if self.policy.placement == Placement::SameWorker
            && let Some(previous) = self.previous_worker(k)
        {
            // The previous worker's own queue while it is alive and healthy; else any free one.
            let placed = self.place(k, &[], Some(previous.clone())).await?;
            if let Some(Queue::Worker { worker, queue: own }) = placed
                && worker == previous
            {
                queue = Queue::Worker { worker, queue: own };
            }
        }
        loop {
            reruns.target = match &queue {
                Queue::Worker { worker, .. } => Some(worker.clone()),
                Queue::Shared(_) | Queue::Eager => None,
            };
            let by_name = reruns.target.is_some();
            let left_ms = reserved_ms.saturating_sub(reruns.used_ms);
            let on = if std::mem::take(&mut eager) {
                Queue::Eager
            } else {
                queue.clone()
            };
            // Each failed run is billed by this loop (`used_ms`); the re-run is a run of its own,
            // under its own key, so the backend's count of it never includes an earlier one.
            let run = u32::try_from(reruns.failed.len()).unwrap_or(u32::MAX);
            let generated = self.generate(attempt, left_ms, token, on, run).await;
            let Err(e) = &generated else {
                return Ok((generated, reruns));
            };
            let avoid: Vec<String> = reruns.failed.iter().map(|(w, _)| w.clone()).collect();
            if by_name && failure::not_started(e) && reruns.waits < MAX_PLACED_WAITS {
                // The worker it was placed on did not start it in time: busy, or gone. Place it
                // again (the registry knows who is alive); only a failure counts as a re-run.
                reruns.waits += 1;
                queue = self.place(k, &avoid, None).await?.unwrap_or(shared.clone());
                continue;
            }
            if self.policy.placement == Placement::Any
                || reruns.failed.len() >= MAX_RERUNS
                || !failure::infrastructure(e)
            {
                return Ok((generated, reruns));
            }
            let worker = failure::worker(e)
                .or_else(|| reruns.target.clone())
                .unwrap_or_else(|| "an unknown worker".to_owned());
            let cause = failure::of(e);
            reruns.used_ms = reruns
                .used_ms
                .saturating_add(failure::used_gpu_ms(e).unwrap_or(0));
            reruns
                .failed
                .push((worker.clone(), format!("{}: {}", cause.kind, cause.message)));
            let mut avoid = avoid;
            avoid.push(worker);
            queue = self.place(k, &avoid, None).await?.unwrap_or(shared.clone());
        }
    }

    /// A worker's own queue for attempt `k`'s generation (`prefer` when it qualifies, never one
    /// in `avoid`), or `None` when no worker qualifies.
    async fn place(
        &self,
        k: u32,
        avoid: &[String],
        prefer: Option<String>,
    ) -> WorkflowResult<Option<Queue>> {
        let why = match (&prefer, avoid) {
            (Some(p), _) => format!("same worker as before ({p})"),
            (None, []) => "any worker".to_owned(),
            (None, failed) => format!("away from {}", failed.join(", ")),
        };
        let placement = store_steps::run(
            &self.ctx,
            RetryActivities::place_generation,
            PlaceGeneration {
                task_queue: self.ctx.task_queue().to_owned(),
                avoid: avoid.to_vec(),
                prefer,
            },
            format!("attempt {k} · place generation · {why}"),
        )
        .await?;
        Ok(match (placement.worker, placement.queue) {
            (Some(worker), Some(queue)) => Some(Queue::Worker { worker, queue }),
            _ => None,
        })
    }

    /// The worker that generated the latest recorded attempt before `k`.
    fn previous_worker(&self, k: u32) -> Option<String> {
        self.ctx.state(|s| {
            s.attempts
                .iter()
                .rev()
                .filter(|a| a.attempt < k)
                .find_map(|a| a.worker.clone())
        })
    }

    /// Why attempts in flight are being cancelled without an abort (see
    /// `SegmentRetryWorkflow::cancel_reason`).
    fn cancel_reason(&self) -> Option<String> {
        self.ctx.state(|s| s.cancel_reason.clone())
    }

    fn aborted_by(&self) -> Option<String> {
        self.ctx.state(|s| s.abort.as_ref().map(|e| e.by.clone()))
    }

    async fn generate(
        &self,
        attempt: &AttemptPlan,
        reserved_ms: u64,
        token: &WorkflowCancellationToken,
        queue: Queue,
        run: u32,
    ) -> Result<Generated, ActivityExecutionError> {
        let k = attempt.attempt;
        let how = attempt
            .strategy
            .map_or_else(String::new, |s| format!(" · {s}"));
        self.ctx.set_current_details(format!(
            "Segment {}: attempt {k}/{}{how} generating (seed {})",
            self.req.segment_id, self.policy.max_attempts, attempt.seed
        ));
        // The reservation the activity raises as the GPU time grows, or stops the attempt at.
        let budget = Some(HeldBudget {
            project_id: self.req.project_id.clone(),
            reserved_ms,
        });
        self.ctx
            .execute_activity(
                RetryActivities::generate,
                GenerateRequest {
                    key: self.key(k),
                    segment_id: self.req.segment_id.clone(),
                    scene_type: self.req.scene_type.clone(),
                    seed: attempt.seed,
                    params: attempt.params.clone(),
                    strategy: attempt.strategy,
                    prompt: attempt.prompt.clone(),
                    revise_uri: attempt.revise_uri.clone(),
                    budget,
                    eager: queue == Queue::Eager,
                    run,
                },
                options::generate_on(
                    match &queue {
                        Queue::Worker { worker, .. } => format!(
                            "attempt {k} · generate{how} · seed {:#x} · on {worker}",
                            attempt.seed
                        ),
                        _ => format!("attempt {k} · generate{how} · seed {:#x}", attempt.seed),
                    },
                    token,
                    queue,
                ),
            )
            .await
    }

    /// The record of an attempt whose generation failed or was cancelled. Its reservation is
    /// settled with the GPU time the backend reported it used (an interrupted ComfyUI prompt, a
    /// cancelled job, an attempt the budget stopped) plus what its earlier failed runs used
    /// (`earlier_ms`), else released.
    async fn generation_failed(
        &self,
        attempt: AttemptPlan,
        e: &ActivityExecutionError,
        earlier_ms: u64,
    ) -> WorkflowResult<AttemptRecord> {
        let k = attempt.attempt;
        let used = failure::used_gpu_ms(e)
            .unwrap_or(0)
            .saturating_add(earlier_ms);
        if used > 0 {
            self.settle(k, used).await?;
        } else {
            self.release(k).await?;
        }
        // An output the backend finished anyway (an abort landing in ComfyUI's last node) is
        // kept: it was paid for.
        let output = failure::used(e).and_then(|u| u.output_uri);
        Ok(match (self.aborted_by(), self.cancel_reason(), e) {
            (Some(by), _, ActivityExecutionError::Cancelled(_)) => {
                attempt.aborted(&by, used, output)
            }
            (None, Some(why), ActivityExecutionError::Cancelled(_)) => {
                attempt.cancelled(why, used, output)
            }
            _ => {
                let cause = failure::of(e);
                attempt.errored(
                    used,
                    &cause.kind,
                    format!("generation failed: {}", cause.message),
                    None,
                )
            }
        })
    }

    async fn score(
        &self,
        attempt: &AttemptPlan,
        generated: &Generated,
        token: &WorkflowCancellationToken,
    ) -> Result<Scored, ActivityExecutionError> {
        let k = attempt.attempt;
        self.ctx
            .execute_activity(
                RetryActivities::score_qa,
                ScoreRequest {
                    key: self.key(k),
                    segment_id: self.req.segment_id.clone(),
                    scene_type: self.req.scene_type.clone(),
                    seed: attempt.seed,
                    params: attempt.params.clone(),
                    output_uri: generated.output_uri.clone(),
                },
                options::score(
                    format!("attempt {k} · score QA · seed {:#x}", attempt.seed),
                    token,
                ),
            )
            .await
    }

    async fn settle(&self, k: u32, gpu_ms: u64) -> WorkflowResult<()> {
        store_steps::run(
            &self.ctx,
            RetryActivities::settle_budget,
            SettleBudget {
                key: self.key(k),
                project_id: self.req.project_id.clone(),
                gpu_ms,
            },
            format!("attempt {k} · settle {gpu_ms} GPU ms"),
        )
        .await?;
        Ok(())
    }
}
