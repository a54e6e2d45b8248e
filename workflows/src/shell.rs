//! The workflow as the interpreter of the decision core ([`retake_domain::machine`]).
//!
//! The core decides; this carries out. Each [`Command`] becomes an activity, a local store step,
//! a timer, a cancellation or a search-attribute upsert, and each result becomes an [`Event`]
//! for the core. Signals and the `decide` update feed the core from their handlers and leave
//! its commands in the workflow's queue, which the loop here drains first.
//!
//! Operations in flight are polled in the order they were started, and the first ready one is
//! taken, so the same history gives the same order of events on replay. An eviction is not an
//! event: dropping this future issues no command.

use crate::failure;
use crate::options::{self, Queue};
use crate::search::RETRY_OUTCOME;
use crate::segment_retry::{SegmentRetryWorkflow, invalid};
use crate::store_steps;
use retake_activities::RetryActivities;
use retake_activities::io::{
    AttemptKey, GenerateRequest, HeldBudget, LoadEvidence, PlaceGeneration, RecordAttempt,
    RecordOutcome, RecordSettled, Reservation, ReserveAttempt, ReserveBudget, ScoreRequest,
};
use retake_domain::contract::{RetryRequest, RetryResult};
use retake_domain::machine::{Command, Event, FailureKind, Generation, On, RunFailure, Target};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use temporalio_sdk::{
    ActivityExecutionError, TimerOptions, TimerResult, WorkflowCancellationToken, WorkflowContext,
    WorkflowResult,
};

type Ctx = WorkflowContext<SegmentRetryWorkflow>;

/// An operation in flight: the event it ends with (`None`: nothing to tell, a timer cancelled).
type Op<'a> = Pin<Box<dyn Future<Output = Result<Option<Event>, ActivityExecutionError>> + 'a>>;

/// What every command of one run needs besides the command.
struct Shell {
    ctx: Ctx,
    req: RetryRequest,
    workflow_id: String,
    run_id: String,
}

/// Carry out the core's commands, starting with `first`, until it says the run is finished.
pub(crate) async fn run(
    ctx: &Ctx,
    req: RetryRequest,
    first: Vec<Command>,
) -> WorkflowResult<RetryResult> {
    let shell = Shell {
        ctx: ctx.clone(),
        workflow_id: ctx.workflow_id().to_owned(),
        run_id: ctx.run_id().to_owned(),
        req,
    };
    let mut ops: Vec<Op<'_>> = Vec::new();
    // The tokens that cancel an attempt's generation and scoring, and the review window's.
    let mut tokens: BTreeMap<u32, WorkflowCancellationToken> = BTreeMap::new();
    let mut window: Option<WorkflowCancellationToken> = None;
    ctx.state_mut(|s| s.queue.extend(first));
    loop {
        let commands: Vec<Command> = ctx.state_mut(|s| s.queue.drain(..).collect());
        for command in commands {
            match command {
                Command::Finish(result) => {
                    ctx.set_current_details(result.report.clone());
                    return Ok(*result);
                }
                Command::Fail(e) => return Err(invalid(e).into()),
                Command::Cancel { attempt, reason } => {
                    if let Some(token) = tokens.get(&attempt) {
                        token.cancel_with_reason(reason);
                    }
                }
                Command::Publish(outcome) => {
                    ctx.upsert_search_attributes([RETRY_OUTCOME.value_set(outcome)]);
                }
                Command::EndReviewWait => {
                    if let Some(token) = window.take() {
                        token.cancel();
                    }
                }
                Command::AwaitReview { window_secs } => {
                    // The window's timer has a token of its own, a child of the workflow's: on
                    // the workflow's own token a timer dropped unfired (the worker evicted a
                    // parked run) kept a handle to the context that holds that token, a cycle
                    // that kept every such run in memory (temporalio-workflow 1.1.1).
                    let token = ctx.cancellation_token().child_token();
                    ctx.set_current_details(format!(
                        "{} — awaiting a creator's decision (update `decide`) for up to \
                         {window_secs} s",
                        ctx.state(|s| s.machine.status().report)
                    ));
                    let timer = TimerOptions::builder(Duration::from_secs(window_secs))
                        .cancellation_token(token.clone())
                        .build();
                    let fired = ctx.timer(timer);
                    window = Some(token);
                    ops.push(Box::pin(async move {
                        Ok(match fired.await {
                            TimerResult::Fired => Some(Event::ReviewWindowEnded),
                            TimerResult::Cancelled => None,
                        })
                    }));
                }
                other => ops.push(shell.start(other, &mut tokens)),
            }
        }
        let Some(event) = next_event(ctx, &mut ops).await? else {
            continue;
        };
        if let Event::Recorded { attempt } | Event::Released { attempt } = &event {
            tokens.remove(attempt);
        }
        ctx.state_mut(|s| {
            let commands = s.machine.on(event);
            s.queue.extend(commands);
        });
    }
}

/// The next event: commands a signal or an update left come first (`None`, so the loop carries
/// them out), then the first operation in flight that finished, in the order they started.
async fn next_event(
    ctx: &Ctx,
    ops: &mut Vec<Op<'_>>,
) -> Result<Option<Event>, ActivityExecutionError> {
    let mut queued = Box::pin(ctx.wait_condition(|s: &SegmentRetryWorkflow| !s.queue.is_empty()));
    std::future::poll_fn(|cx| {
        if queued.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(None));
        }
        for i in 0..ops.len() {
            if let Poll::Ready(done) = ops[i].as_mut().poll(cx) {
                drop(ops.remove(i));
                return Poll::Ready(done);
            }
        }
        Poll::Pending
    })
    .await
}

impl Shell {
    fn key(&self, attempt: u32) -> AttemptKey {
        AttemptKey {
            workflow_id: self.workflow_id.clone(),
            run_id: self.run_id.clone(),
            attempt,
        }
    }

    fn details(&self, what: String) {
        self.ctx
            .set_current_details(format!("Segment {}: {what}", self.req.segment_id));
    }

    fn max_attempts(&self) -> u32 {
        self.ctx
            .state(|s| s.machine.policy().map_or(0, |p| p.max_attempts))
    }

    /// Start the operation `command` asks for.
    fn start<'a>(
        &'a self,
        command: Command,
        tokens: &mut BTreeMap<u32, WorkflowCancellationToken>,
    ) -> Op<'a> {
        let ctx = &self.ctx;
        match command {
            Command::LoadEvidence { attempt, query } => Box::pin(async move {
                let evidence = store_steps::run(
                    ctx,
                    RetryActivities::load_evidence,
                    LoadEvidence {
                        scene_type: self.req.scene_type.clone(),
                        query,
                    },
                    format!("attempt {attempt} · evidence · {}", self.req.scene_type),
                )
                .await?;
                Ok(Some(Event::Evidence { attempt, evidence }))
            }),
            Command::Reserve {
                attempt,
                gpu_ms,
                eager,
            } => Box::pin(async move {
                let answer = store_steps::run(
                    ctx,
                    RetryActivities::reserve_attempt,
                    ReserveAttempt {
                        budget: ReserveBudget {
                            key: self.key(attempt),
                            project_id: self.req.project_id.clone(),
                            gpu_ms,
                            scene_type: Some(self.req.scene_type.clone()),
                        },
                        eager,
                    },
                    format!("attempt {attempt} · reserve {gpu_ms} GPU ms"),
                )
                .await?;
                Ok(Some(match answer.reservation {
                    Reservation::Granted { gpu_ms } => Event::Reserved {
                        attempt,
                        gpu_ms,
                        eager: answer.eager,
                    },
                    Reservation::Refused {
                        limit_ms,
                        committed_ms,
                        requested_ms,
                    } => Event::Refused {
                        attempt,
                        limit_ms,
                        committed_ms,
                        requested_ms,
                    },
                }))
            }),
            Command::Place {
                attempt,
                avoid,
                prefer,
            } => Box::pin(async move {
                let why = match (&prefer, avoid.as_slice()) {
                    (Some(p), _) => format!("same worker as before ({p})"),
                    (None, []) => "any worker".to_owned(),
                    (None, failed) => format!("away from {}", failed.join(", ")),
                };
                let placement = store_steps::run(
                    ctx,
                    RetryActivities::place_generation,
                    PlaceGeneration {
                        task_queue: ctx.task_queue().to_owned(),
                        avoid,
                        prefer,
                    },
                    format!("attempt {attempt} · place generation · {why}"),
                )
                .await?;
                let target = match (placement.worker, placement.queue) {
                    (Some(worker), Some(queue)) => Some(Target { worker, queue }),
                    _ => None,
                };
                Ok(Some(Event::Placed { attempt, target }))
            }),
            Command::Generate(generation) => {
                let token = self.token(tokens, generation.plan.attempt);
                Box::pin(async move { Ok(Some(self.generate(*generation, &token).await)) })
            }
            Command::Score {
                attempt,
                seed,
                params,
                output_uri,
            } => {
                let token = self.token(tokens, attempt);
                self.details(format!("attempt {attempt}/{} scoring", self.max_attempts()));
                Box::pin(async move {
                    let scored = ctx
                        .execute_activity(
                            RetryActivities::score_qa,
                            ScoreRequest {
                                key: self.key(attempt),
                                segment_id: self.req.segment_id.clone(),
                                scene_type: self.req.scene_type.clone(),
                                seed,
                                params,
                                output_uri,
                            },
                            options::score(
                                format!("attempt {attempt} · score QA · seed {seed:#x}"),
                                &token,
                            ),
                        )
                        .await;
                    Ok(Some(match scored {
                        Ok(qa) => Event::Scored { attempt, qa },
                        Err(e) => Event::ScoringFailed {
                            attempt,
                            failure: run_failure(&e),
                        },
                    }))
                })
            }
            Command::Release { attempt } => Box::pin(async move {
                self.release(attempt).await?;
                Ok(Some(Event::Released { attempt }))
            }),
            Command::Record {
                record,
                settle_ms,
                release,
            } => Box::pin(async move {
                let attempt = record.attempt;
                let summary = format!(
                    "attempt {attempt} · settle {settle_ms} GPU ms · record · {}",
                    record.status.as_str()
                );
                let input = RecordAttempt {
                    key: self.key(attempt),
                    segment_id: self.req.segment_id.clone(),
                    project_id: self.req.project_id.clone(),
                    scene_type: self.req.scene_type.clone(),
                    record: *record,
                };
                if !release {
                    store_steps::run(
                        ctx,
                        RetryActivities::record_settled,
                        RecordSettled {
                            attempt: input,
                            gpu_ms: settle_ms,
                        },
                        summary,
                    )
                    .await?;
                } else {
                    // Never generated, nothing used: the reservation is released.
                    self.release(attempt).await?;
                    let summary = format!(
                        "attempt {attempt} · record · {}",
                        input.record.status.as_str()
                    );
                    store_steps::run(ctx, RetryActivities::record_attempt, input, summary).await?;
                }
                Ok(Some(Event::Recorded { attempt }))
            }),
            Command::RecordOutcome { result, review } => Box::pin(async move {
                let summary = format!(
                    "record outcome · {} · review {}",
                    result.outcome.as_str(),
                    review.as_str()
                );
                store_steps::run(
                    ctx,
                    RetryActivities::record_outcome,
                    RecordOutcome {
                        workflow_id: self.workflow_id.clone(),
                        run_id: self.run_id.clone(),
                        result: *result,
                        review,
                    },
                    summary,
                )
                .await?;
                Ok(Some(Event::OutcomeRecorded))
            }),
            // Carried out by the loop itself.
            Command::Cancel { .. }
            | Command::Publish(_)
            | Command::AwaitReview { .. }
            | Command::EndReviewWait
            | Command::Finish(_)
            | Command::Fail(_) => Box::pin(async { Ok(None) }),
        }
    }

    /// The token that cancels attempt `attempt`'s generation and scoring: one per attempt, a
    /// child of the workflow's, kept until the attempt is recorded or released.
    fn token(
        &self,
        tokens: &mut BTreeMap<u32, WorkflowCancellationToken>,
        attempt: u32,
    ) -> WorkflowCancellationToken {
        tokens
            .entry(attempt)
            .or_insert_with(|| self.ctx.cancellation_token().child_token())
            .clone()
    }

    async fn release(&self, attempt: u32) -> Result<(), ActivityExecutionError> {
        store_steps::run(
            &self.ctx,
            RetryActivities::release_budget,
            self.key(attempt),
            format!("attempt {attempt} · release budget"),
        )
        .await
    }

    /// Run one generation where the core placed it; what it reported, as an event.
    async fn generate(&self, g: Generation, token: &WorkflowCancellationToken) -> Event {
        let plan = &g.plan;
        let k = plan.attempt;
        let how = plan
            .strategy
            .map_or_else(String::new, |s| format!(" · {s}"));
        self.details(format!(
            "attempt {k}/{}{how} generating (seed {})",
            self.max_attempts(),
            plan.seed
        ));
        let queue = match &g.on {
            On::Shared => Queue::Shared(retake_domain::generate_queue(self.ctx.task_queue())),
            On::Eager => Queue::Eager,
            On::Worker(t) => Queue::Worker {
                worker: t.worker.clone(),
                queue: t.queue.clone(),
            },
        };
        let summary = match &g.on {
            On::Worker(t) => format!(
                "attempt {k} · generate{how} · seed {:#x} · on {}",
                plan.seed, t.worker
            ),
            On::Shared | On::Eager => {
                format!("attempt {k} · generate{how} · seed {:#x}", plan.seed)
            }
        };
        let generated = self
            .ctx
            .execute_activity(
                RetryActivities::generate,
                GenerateRequest {
                    key: self.key(k),
                    segment_id: self.req.segment_id.clone(),
                    scene_type: self.req.scene_type.clone(),
                    seed: plan.seed,
                    params: plan.params.clone(),
                    strategy: plan.strategy,
                    prompt: plan.prompt.clone(),
                    revise_uri: plan.revise_uri.clone(),
                    budget: Some(HeldBudget {
                        project_id: self.req.project_id.clone(),
                        reserved_ms: g.reserved_ms,
                    }),
                    eager: g.on == On::Eager,
                    run: g.run,
                },
                options::generate_on(summary, token, queue),
            )
            .await;
        match generated {
            Ok(generated) => Event::Generated {
                attempt: k,
                run: g.run,
                gpu_ms: generated.gpu_ms,
                output_uri: generated.output_uri,
                worker: generated.worker,
            },
            Err(e) => Event::GenerationFailed {
                attempt: k,
                run: g.run,
                failure: run_failure(&e),
            },
        }
    }
}

/// What a failed or cancelled generation or scoring reported, for the core.
fn run_failure(e: &ActivityExecutionError) -> RunFailure {
    let kind = if matches!(e, ActivityExecutionError::Cancelled(_)) {
        FailureKind::Cancelled
    } else if failure::infrastructure(e) {
        FailureKind::Infrastructure
    } else if failure::not_started(e) {
        FailureKind::NotStarted
    } else {
        FailureKind::Other
    };
    let cause = failure::of(e);
    let used = failure::used(e);
    RunFailure {
        kind,
        error_type: cause.kind,
        message: cause.message,
        gpu_ms: used.as_ref().map_or(0, |u| u.gpu_ms),
        output_uri: used.and_then(|u| u.output_uri),
        worker: failure::worker(e),
    }
}
