//! The decision core of one run: a pure state machine that owns every decision the retry
//! workflow carries out.
//!
//! The workflow is its interpreter (the "imperative shell"). It feeds the core [`Event`]s — the
//! run's request and settings, what each activity answered, a creator's signals and decisions,
//! the review window's end — and carries out the [`Command`]s the core answers with: store steps,
//! generations and scorings where the core says, cancellations, the review timer, the final
//! result. Nothing here reads a clock, the environment or a random source, and nothing here
//! knows Temporal: the same events give the same commands, which is what replay needs, and what
//! [`crate::simulate`] checks through every interleaving it can draw.
//!
//! # One owner per fact
//! - **GPU time billed** for an attempt is computed here, once: the sum of what each run of its
//!   generation reported (a failed run on a broken GPU, the re-run that finished), nothing
//!   added anywhere else. Adapters report their own run only.
//! - **Seed and parameters** of attempt `k` come from [`crate::ladder`] via
//!   [`crate::parallel::next`]: from the segment and `k`, whatever the parallelism or re-runs.
//! - **When a round stops** is [`crate::parallel::next`] and [`crate::parallel::decided`] plus a
//!   creator's abort or escalation and the budget's refusal, judged in [`Machine::advance`] only.
//!
//! # An attempt's life
//! claimed (planned) → evidence (adaptive rungs) → reserve → [place] → generate (re-run on
//! another worker after an infrastructure failure, placed again when a named worker did not
//! start it) → score → record (settling the reservation to what the runs used, one step). An
//! attempt refused by the budget, or stopped before its reservation was used, is never started
//! and not recorded; every attempt whose generation was asked for is recorded exactly once.

use crate::adapt::{Evidence, EvidenceQuery};
use crate::contract::{AttemptRecord, Outcome, QaScores, RetryRequest, RetryResult};
use crate::error::ValidationError;
use crate::event::CreatorEvent;
use crate::ladder;
use crate::parallel::{self, Next};
use crate::plan::{self, AttemptPlan};
use crate::policy::{Placement, RetryPolicy, Selection};
use crate::report;
use crate::review::{Decision, Phase, RetryWith, Review};
use crate::status::{InFlight, Status};
use crate::stop::Stop;
use crate::strategy::Strategy;

/// How often one attempt's generation is re-run on another worker after infrastructure
/// failures before the attempt is recorded as an error.
pub const MAX_RERUNS: usize = 2;

/// How often a generation placed on a worker by name that did not start in time (the worker
/// busy or gone) is placed again before the attempt is recorded as an error.
pub const MAX_PLACED_WAITS: u32 = 20;

/// What the run starts from: the request and the settings the store gave for its scene type.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The scene type's stored policy (JSON, as stored), if any.
    pub policy: Option<serde_json::Value>,
    /// The bits of seed the generator really uses: seeds stay below them, so the recorded seed
    /// reproduces the output.
    pub seed_bits: u32,
    /// The parameters the generator sends on, when only some: jitter is limited to them.
    pub params_taken: Option<Vec<String>>,
}

/// A worker's own generate queue, as placement named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub worker: String,
    pub queue: String,
}

/// Where a generation is scheduled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum On {
    /// The shared generate queue: whichever worker is free.
    Shared,
    /// The worker that reserved the attempt said it has a GPU free: the workflow's own queue,
    /// which the server hands back to it eagerly.
    Eager,
    /// A worker's own queue: that worker (placement), which must start it in time.
    Worker(Target),
}

/// Why a run (a generation, or a scoring) ended without a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// It was cancelled (the core asked for it: an abort, an escalation, another attempt
    /// passing first).
    Cancelled,
    /// The backend said its machine failed (`InfrastructureFailure`): re-run elsewhere.
    Infrastructure,
    /// No worker started it in time (a schedule-to-start timeout).
    NotStarted,
    /// Anything else: the backend refused, timed out, the budget stopped it, …
    Other,
}

/// What a failed run reported of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFailure {
    pub kind: FailureKind,
    /// The root failure's type (`BackendRejected`, `Timeout`, `Cancelled`, …).
    pub error_type: String,
    /// The root failure's message.
    pub message: String,
    /// GPU time this run used, as its backend reported it (0 when it reported none).
    pub gpu_ms: u64,
    /// An output this run finished anyway (an abort landing in the last node).
    pub output_uri: Option<String>,
    /// The worker that ran it, as Temporal or the run itself reported it.
    pub worker: Option<String>,
}

impl RunFailure {
    /// A run the core cancelled that reported nothing of itself (it never started, or finished
    /// anyway and its output is kept from the generation).
    fn cancelled() -> Self {
        Self {
            kind: FailureKind::Cancelled,
            error_type: "Cancelled".to_owned(),
            message: "cancelled".to_owned(),
            gpu_ms: 0,
            output_uri: None,
            worker: None,
        }
    }
}

/// Something that happened to the run, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The run began (the first event).
    Started {
        req: Box<RetryRequest>,
        settings: Settings,
    },
    /// The store's evidence for attempt `attempt`'s adaptive rung.
    Evidence { attempt: u32, evidence: Evidence },
    /// The budget reserved `gpu_ms` for the attempt; `eager`: the reserving worker takes its
    /// first generation.
    Reserved {
        attempt: u32,
        gpu_ms: u64,
        eager: bool,
    },
    /// The budget refused the attempt.
    Refused {
        attempt: u32,
        limit_ms: u64,
        committed_ms: u64,
        requested_ms: u64,
    },
    /// Placement answered: a worker's own queue, or none qualifies.
    Placed {
        attempt: u32,
        target: Option<Target>,
    },
    /// Run `run` of the attempt's generation finished.
    Generated {
        attempt: u32,
        run: u32,
        gpu_ms: u64,
        output_uri: String,
        worker: Option<String>,
    },
    /// Run `run` of the attempt's generation failed or was cancelled.
    GenerationFailed {
        attempt: u32,
        run: u32,
        failure: RunFailure,
    },
    /// QA scored the attempt's output.
    Scored { attempt: u32, qa: QaScores },
    /// QA scoring failed or was cancelled.
    ScoringFailed { attempt: u32, failure: RunFailure },
    /// The attempt's record is stored (its reservation settled in the same step).
    Recorded { attempt: u32 },
    /// The attempt's reservation was released (it never started).
    Released { attempt: u32 },
    /// The run's outcome (or review standing) is stored.
    OutcomeRecorded,
    /// A creator's `abort` signal.
    Abort(CreatorEvent),
    /// A creator's `escalate` signal.
    Escalate(CreatorEvent),
    /// A validated review decision.
    Decided {
        decision: Decision,
        event: CreatorEvent,
    },
    /// The review window's timer fired.
    ReviewWindowEnded,
}

/// A generation to schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The attempt's plan: seed, parameters, strategy, prompt.
    pub plan: AttemptPlan,
    /// 0 for the attempt's first run, n for its n-th re-run (the backend's idempotency key).
    pub run: u32,
    /// What is left of the attempt's reservation for this run.
    pub reserved_ms: u64,
    pub on: On,
}

/// What the workflow must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Read the store's evidence for an adaptive rung.
    LoadEvidence { attempt: u32, query: EvidenceQuery },
    /// Reserve the attempt's estimated GPU time; `eager`: ask the reserving worker whether it
    /// takes the first generation itself.
    Reserve {
        attempt: u32,
        gpu_ms: u64,
        eager: bool,
    },
    /// Find a worker's own queue for the attempt: `prefer` when it qualifies, never one in
    /// `avoid`.
    Place {
        attempt: u32,
        avoid: Vec<String>,
        prefer: Option<String>,
    },
    /// Generate.
    Generate(Box<Generation>),
    /// Score the attempt's output.
    Score {
        attempt: u32,
        seed: u64,
        params: crate::contract::Params,
        output_uri: String,
    },
    /// Cancel the attempt's generation or scoring in flight.
    Cancel { attempt: u32, reason: String },
    /// Release the attempt's reservation: it never started.
    Release { attempt: u32 },
    /// Store the attempt's record and settle its reservation to `settle_ms`, in one step; or,
    /// with `release` (its generation never finished and its runs reported no GPU time), release
    /// the reservation and store the record.
    Record {
        record: Box<AttemptRecord>,
        settle_ms: u64,
        release: bool,
    },
    /// Keep the `RetryOutcome` search attribute current (`running`, `awaiting_review`, the
    /// outcome).
    Publish(String),
    /// Store the run's outcome, or its standing while in review.
    RecordOutcome {
        result: Box<RetryResult>,
        review: Review,
    },
    /// Start the review window's timer.
    AwaitReview { window_secs: u64 },
    /// Stop waiting for the review window (a decision or an abort came first).
    EndReviewWait,
    /// The run is over: its result.
    Finish(Box<RetryResult>),
    /// The request cannot run (its policy override is invalid): fail the run with this.
    Fail(ValidationError),
}

/// Where an attempt in flight stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Evidence,
    Reserving,
    Releasing,
    /// Placement asked for the first run's (`same_worker`) or a re-run's queue.
    Placing,
    Generating,
    Scoring,
    Recording,
}

/// A failed run of an attempt's generation.
#[derive(Debug, Clone, PartialEq)]
struct FailedRun {
    worker: String,
    why: String,
    gpu_ms: u64,
}

/// An attempt claimed and not yet recorded (or released).
#[derive(Debug, Clone)]
struct Flight {
    plan: AttemptPlan,
    stage: Stage,
    reserved_ms: u64,
    eager: bool,
    /// The runs that failed on their machine and were re-run.
    failed: Vec<FailedRun>,
    /// Times a generation placed by name was placed again because it did not start in time.
    waits: u32,
    /// The worker the current run was placed on by name.
    target: Option<String>,
    /// The queue a run was placed on by the `same_worker` preference.
    preferred: Option<String>,
    /// The finished generation: GPU time billed (every run), output, worker.
    generated: Option<(u64, String, Option<String>)>,
    /// A cancellation was asked for (the attempt is being aborted or cancelled).
    cancelled: bool,
}

impl Flight {
    fn k(&self) -> u32 {
        self.plan.attempt
    }

    /// The attempt's plan, its note naming the runs that failed on their machine and were
    /// re-run: what every record of it starts from.
    fn noted_plan(&self) -> AttemptPlan {
        let mut plan = self.plan.clone();
        plan.note = report::rerun_note(plan.note.take(), &reruns(&self.failed));
        plan
    }

    /// GPU time the failed runs used.
    fn failed_ms(&self) -> u64 {
        self.failed.iter().map(|r| r.gpu_ms).sum()
    }

    /// Whether a generation or scoring may be in flight (what a cancellation reaches, and what
    /// the query calls running).
    fn running(&self) -> bool {
        matches!(
            self.stage,
            Stage::Placing | Stage::Generating | Stage::Scoring
        )
    }
}

/// How the run's end, or review, stands once the attempts stopped.
#[derive(Debug, Clone, PartialEq)]
enum Ending {
    /// Attempts are being made.
    Running,
    /// Escalated with a review window: the pending review is being recorded.
    OpeningReview(RetryResult),
    /// Waiting for a decision, an abort or the window's end.
    InReview(RetryResult),
    /// A reviewer asked for another round: the `retrying` standing is being recorded.
    RetryRecording(RetryResult, RetryWith),
    /// The result is final and being recorded.
    Concluding(RetryResult),
    /// Done: the result.
    Finished(RetryResult),
    /// The request could not run.
    Failed,
}

/// The decision core of one run (see the module docs).
#[derive(Debug, Clone)]
pub struct Machine {
    req: Option<RetryRequest>,
    policy: Option<RetryPolicy>,
    params_taken: Option<Vec<String>>,
    phase: Phase,
    /// Recorded attempts, in attempt order.
    attempts: Vec<AttemptRecord>,
    /// Attempts claimed and not yet recorded, in the order they were claimed.
    flights: Vec<Flight>,
    /// Attempts made before the current round (a reviewer's `retry_with` starts a round).
    round_start: u32,
    /// Why attempts in flight are cancelled though nobody aborted (one passed first, a creator
    /// escalated a parallel round): recorded `cancelled`.
    cancel_reason: Option<String>,
    /// The budget refused an attempt of this round.
    refused: Option<Stop>,
    events: Vec<CreatorEvent>,
    abort: Option<CreatorEvent>,
    escalate: Option<CreatorEvent>,
    ending: Ending,
    /// A defect planted on purpose by the simulator's own tests and `retake-bench simulate`;
    /// never set by the workflow.
    planted: Option<crate::simulate::Defect>,
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

impl Machine {
    pub fn new() -> Self {
        Self {
            req: None,
            policy: None,
            params_taken: None,
            phase: Phase::Starting,
            attempts: vec![],
            flights: vec![],
            round_start: 0,
            cancel_reason: None,
            refused: None,
            events: vec![],
            abort: None,
            escalate: None,
            ending: Ending::Running,
            planted: None,
        }
    }

    /// Plant a defect on purpose, to show the simulator catches it (never called by the
    /// workflow).
    #[doc(hidden)]
    pub fn plant(&mut self, defect: crate::simulate::Defect) {
        self.planted = Some(defect);
    }

    fn planted(&self, defect: crate::simulate::Defect) -> bool {
        self.planted == Some(defect)
    }

    /// Take one event; the commands it calls for, in the order they are to be issued.
    pub fn on(&mut self, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        self.handle(event, &mut out);
        out
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The policy in force (after the request's override and a reviewer's `retry_with`).
    pub fn policy(&self) -> Option<&RetryPolicy> {
        self.policy.as_ref()
    }

    /// The recorded attempts, in attempt order.
    pub fn attempts(&self) -> &[AttemptRecord] {
        &self.attempts
    }

    /// Every creator signal and decision taken, in order.
    pub fn events(&self) -> &[CreatorEvent] {
        &self.events
    }

    /// The attempts whose generation or scoring may be in flight, in attempt order.
    pub fn running(&self) -> Vec<u32> {
        let mut ks: Vec<u32> = self
            .flights
            .iter()
            .filter(|f| f.running())
            .map(Flight::k)
            .collect();
        ks.sort_unstable();
        ks
    }

    /// Whether a `decide` update may be taken now, or why not.
    pub fn decidable(&self) -> Result<(), String> {
        let segment = self.req.as_ref().map_or("?", |r| r.segment_id.as_str());
        match &self.ending {
            Ending::InReview(_) => Ok(()),
            Ending::Concluding(_) | Ending::RetryRecording(..) | Ending::Finished(_)
                if self.phase == Phase::AwaitingReview =>
            {
                Err(format!(
                    "segment {segment}'s review is already closing; no further decision is taken"
                ))
            }
            _ => Err(format!(
                "segment {segment} is not awaiting review (phase {})",
                self.phase.as_str()
            )),
        }
    }

    /// Whether `decision` (recorded as `event`) may be taken now: [`Machine::decidable`], and for
    /// a `retry_with`, room for another round ([`crate::review::room_for_round`]). What the
    /// `decide` update's validator asks, so a refused decision leaves nothing in the history.
    pub fn admits(&self, decision: &Decision, event: &CreatorEvent) -> Result<(), String> {
        self.decidable()?;
        match (&self.ending, decision) {
            (Ending::InReview(result), Decision::RetryWith(retry)) => {
                crate::review::room_for_round(result, retry, event)
            }
            _ => Ok(()),
        }
    }

    /// Whether an `escalate` signal would be taken now (attempts are being made).
    pub fn escalatable(&self) -> bool {
        self.ending == Ending::Running && self.escalate.is_none() && self.phase == Phase::Retrying
    }

    /// The live report (the `report` query).
    pub fn status(&self) -> Status {
        match &self.ending {
            Ending::InReview(r)
            | Ending::RetryRecording(r, _)
            | Ending::Concluding(r)
            | Ending::Finished(r) => {
                let mut status = Status::concluded(self.phase, r);
                status.decisions = self.events.clone();
                return status;
            }
            Ending::Running | Ending::OpeningReview(_) | Ending::Failed => {}
        }
        let policy = self.policy.clone().unwrap_or_default();
        let running = self.running();
        let (segment_id, project_id, scene_type) = self.req.as_ref().map_or_else(
            || (String::new(), String::new(), String::new()),
            |r| {
                (
                    r.segment_id.to_string(),
                    r.project_id.to_string(),
                    r.scene_type.to_string(),
                )
            },
        );
        Status {
            phase: self.phase,
            segment_id: segment_id.clone(),
            project_id,
            scene_type,
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
            report: report::progress(&segment_id, &policy, &self.attempts, &running),
            running_attempts: running,
            attempts: self.attempts.clone(),
            decisions: self.events.clone(),
            in_flight: self.in_flight(),
        }
    }

    /// What is known of each attempt whose generation or scoring may be running.
    fn in_flight(&self) -> Vec<InFlight> {
        let mut known: Vec<InFlight> = self
            .flights
            .iter()
            .filter(|f| f.running())
            .map(|f| InFlight {
                attempt: f.k(),
                seed: f.plan.seed,
                params: f.plan.params.clone(),
                jitter: f.plan.jitter.clone(),
                strategy: f.plan.strategy.map(|s| s.as_str().to_owned()),
                stage: match f.stage {
                    Stage::Placing => "placing",
                    Stage::Scoring => "scoring",
                    _ => "generating",
                }
                .to_owned(),
                worker: f.target.clone(),
                reruns: u32::try_from(f.failed.len()).unwrap_or(u32::MAX),
            })
            .collect();
        known.sort_by_key(|i| i.attempt);
        known
    }

    fn handle(&mut self, event: Event, out: &mut Vec<Command>) {
        if matches!(self.ending, Ending::Finished(_) | Ending::Failed) {
            return;
        }
        match event {
            Event::Started { req, settings } => self.start(*req, settings, out),
            Event::Evidence { attempt, evidence } => {
                let policy = self.policy.clone().unwrap_or_default();
                if let Some(f) = self.flight(attempt).filter(|f| f.stage == Stage::Evidence) {
                    f.plan = ladder::adapt(&policy, f.plan.clone(), &evidence);
                    self.reserve(attempt, out);
                }
            }
            Event::Reserved {
                attempt,
                gpu_ms,
                eager,
            } => self.reserved(attempt, gpu_ms, eager, out),
            Event::Refused {
                attempt,
                limit_ms,
                committed_ms,
                requested_ms,
            } => {
                if self.take(attempt, Stage::Reserving).is_some() {
                    self.refused.get_or_insert(Stop::BudgetRefused {
                        attempt,
                        detail: format!(
                            "{requested_ms} GPU ms requested, {committed_ms} of {limit_ms} \
                             already committed"
                        ),
                    });
                }
            }
            Event::Placed { attempt, target } => self.placed(attempt, target, out),
            Event::Generated {
                attempt,
                run,
                gpu_ms,
                output_uri,
                worker,
            } => self.generated(attempt, run, gpu_ms, output_uri, worker, out),
            Event::GenerationFailed {
                attempt,
                run,
                failure,
            } => self.generation_failed(attempt, run, failure, out),
            Event::Scored { attempt, qa } => self.scored(attempt, qa, out),
            Event::ScoringFailed { attempt, failure } => self.scoring_failed(attempt, failure, out),
            Event::Recorded { attempt } => {
                if let Some(f) = self.flights.iter().position(|f| f.k() == attempt) {
                    let _ = self.flights.remove(f);
                }
            }
            Event::Released { attempt } => {
                self.take(attempt, Stage::Releasing);
            }
            Event::OutcomeRecorded => self.outcome_recorded(out),
            Event::Abort(event) => self.aborted(event, out),
            Event::Escalate(event) => self.escalated(event, out),
            Event::Decided { decision, event } => self.decided(decision, event, out),
            Event::ReviewWindowEnded => {
                if let Ending::InReview(result) = &self.ending {
                    let window = self.policy.as_ref().map_or(0, |p| p.review_window_secs);
                    let result = plan::review_expired(result.clone(), window);
                    self.conclude(result, Review::Pending, out);
                }
            }
        }
        self.advance(out);
    }

    fn start(&mut self, req: RetryRequest, settings: Settings, out: &mut Vec<Command>) {
        if self.req.is_some() {
            return;
        }
        let mut policy = match RetryPolicy::resolve(settings.policy.as_ref(), req.policy.as_ref()) {
            Ok(policy) => policy,
            Err(e) => {
                self.ending = Ending::Failed;
                out.push(Command::Fail(e));
                return;
            }
        };
        policy.seed_bits = policy.seed_bits.min(settings.seed_bits);
        policy.vary_only(settings.params_taken.as_deref());
        self.params_taken = settings.params_taken;
        self.phase = Phase::Retrying;
        let not_retried = plan::should_retry(&policy, &req.failed_qa).err();
        self.policy = Some(policy);
        self.req = Some(req);
        if let Some(reason) = not_retried {
            let result = plan::not_retried(self.req(), reason);
            self.conclude(result, Review::None, out);
        }
    }

    fn req(&self) -> &RetryRequest {
        self.req.as_ref().expect("the run has started")
    }

    fn pol(&self) -> &RetryPolicy {
        self.policy.as_ref().expect("the run has started")
    }

    fn flight(&mut self, k: u32) -> Option<&mut Flight> {
        self.flights.iter_mut().find(|f| f.k() == k)
    }

    /// Remove attempt `k`'s flight if it is at `stage`.
    fn take(&mut self, k: u32, stage: Stage) -> Option<Flight> {
        let at = self
            .flights
            .iter()
            .position(|f| f.k() == k && f.stage == stage)?;
        Some(self.flights.remove(at))
    }

    /// A creator asked to stop: no attempt starts (an abort also ends those reserved).
    fn creator_stop(&self) -> Option<Stop> {
        self.abort
            .as_ref()
            .map(|e| Stop::Aborted {
                by: e.by.clone(),
                reason: e.reason.clone(),
            })
            .or_else(|| {
                self.escalate.as_ref().map(|e| Stop::Escalated {
                    by: e.by.clone(),
                    reason: e.reason.clone(),
                })
            })
    }

    /// No further attempt of this round starts.
    fn stopping(&self) -> bool {
        // The planted defect forgets the abort here.
        (self.abort.is_some() && !self.planted(crate::simulate::Defect::StartAfterAbort))
            || self.escalate.is_some()
            || self.refused.is_some()
            || self.cancel_reason.is_some()
    }

    /// Start what the round allows, and end the round once nothing is in flight and nothing
    /// more may start.
    fn advance(&mut self, out: &mut Vec<Command>) {
        if self.ending != Ending::Running || self.phase != Phase::Retrying || self.req.is_none() {
            return;
        }
        while !self.stopping() {
            // An attempt holds its slot until the store has its record (numbering goes by the
            // highest number, so one both recorded and in flight is not counted twice).
            let in_flight: Vec<u32> = self.flights.iter().map(Flight::k).collect();
            let next = parallel::next(
                self.req(),
                self.pol(),
                &self.attempts,
                &in_flight,
                self.round_start,
            );
            match next {
                Next::Start(plan) => self.claim(*plan, out),
                Next::Wait | Next::Stop(_) => break,
            }
        }
        if !self.flights.is_empty() {
            return;
        }
        let stop = self
            .creator_stop()
            .or_else(|| self.refused.clone())
            .unwrap_or_else(|| {
                match parallel::next(
                    self.req(),
                    self.pol(),
                    &self.attempts,
                    &[],
                    self.round_start,
                ) {
                    Next::Stop(stop) => stop,
                    // Unreachable: with nothing in flight the loop above started one.
                    Next::Start(_) | Next::Wait => Stop::AttemptsUsed,
                }
            });
        self.round_ended(&stop, out);
    }

    fn claim(&mut self, plan: AttemptPlan, out: &mut Vec<Command>) {
        let k = plan.attempt;
        let adaptive = plan.strategy == Some(Strategy::Adaptive);
        self.flights.push(Flight {
            plan,
            stage: Stage::Evidence,
            reserved_ms: 0,
            eager: false,
            failed: vec![],
            waits: 0,
            target: None,
            preferred: None,
            generated: None,
            cancelled: false,
        });
        if adaptive {
            let policy = self.pol();
            let query = EvidenceQuery {
                window: policy.adaptive.window,
                scope: policy.adaptive.scope.clone(),
            };
            out.push(Command::LoadEvidence { attempt: k, query });
        } else {
            self.reserve(k, out);
        }
    }

    /// Reserve attempt `k`'s budget, unless the round stopped while it read its evidence.
    fn reserve(&mut self, k: u32, out: &mut Vec<Command>) {
        if self.stopping() {
            self.take(k, Stage::Evidence);
            return;
        }
        let eager =
            self.previous_worker(k).is_none() || self.pol().placement != Placement::SameWorker;
        let gpu_ms = self.pol().est_gpu_ms_per_attempt;
        if let Some(f) = self.flight(k) {
            f.stage = Stage::Reserving;
        }
        out.push(Command::Reserve {
            attempt: k,
            gpu_ms,
            eager,
        });
    }

    /// The worker that generated the latest recorded attempt before `k`.
    fn previous_worker(&self, k: u32) -> Option<String> {
        self.attempts
            .iter()
            .rev()
            .filter(|a| a.attempt < k)
            .find_map(|a| a.worker.clone())
    }

    fn reserved(&mut self, k: u32, gpu_ms: u64, eager: bool, out: &mut Vec<Command>) {
        let cancelled = self.abort.is_some() || self.cancel_reason.is_some();
        let previous = (self.pol().placement == Placement::SameWorker)
            .then(|| self.previous_worker(k))
            .flatten();
        let Some(f) = self.flight(k).filter(|f| f.stage == Stage::Reserving) else {
            return;
        };
        f.reserved_ms = gpu_ms;
        f.eager = eager;
        if cancelled {
            f.stage = Stage::Releasing;
            out.push(Command::Release { attempt: k });
            return;
        }
        match previous {
            Some(previous) => {
                f.stage = Stage::Placing;
                f.preferred = Some(previous.clone());
                out.push(Command::Place {
                    attempt: k,
                    avoid: vec![],
                    prefer: Some(previous),
                });
            }
            None => {
                let on = if eager { On::Eager } else { On::Shared };
                self.generate(k, on, out);
            }
        }
    }

    fn placed(&mut self, k: u32, target: Option<Target>, out: &mut Vec<Command>) {
        let Some(f) = self.flight(k).filter(|f| f.stage == Stage::Placing) else {
            return;
        };
        let on = match (target, f.preferred.take()) {
            // `same_worker`: the previous worker's own queue while it qualifies, else any.
            (Some(t), Some(preferred)) if t.worker == preferred => On::Worker(t),
            (_, Some(_)) | (None, None) => On::Shared,
            (Some(t), None) => On::Worker(t),
        };
        if f.cancelled {
            // Cancelled between runs: nothing more runs.
            self.finish_failed(k, RunFailure::cancelled(), out);
            return;
        }
        self.generate(k, on, out);
    }

    fn generate(&mut self, k: u32, on: On, out: &mut Vec<Command>) {
        let Some(f) = self.flight(k) else { return };
        f.stage = Stage::Generating;
        f.target = match &on {
            On::Worker(t) => Some(t.worker.clone()),
            On::Shared | On::Eager => None,
        };
        let run = u32::try_from(f.failed.len()).unwrap_or(u32::MAX);
        let reserved_ms = f.reserved_ms.saturating_sub(f.failed_ms());
        out.push(Command::Generate(Box::new(Generation {
            plan: f.plan.clone(),
            run,
            reserved_ms,
            on,
        })));
    }

    fn generated(
        &mut self,
        k: u32,
        run: u32,
        gpu_ms: u64,
        output_uri: String,
        worker: Option<String>,
        out: &mut Vec<Command>,
    ) {
        let double = self.planted(crate::simulate::Defect::RerunBilledTwice);
        let Some(f) = self.flight(k).filter(|f| f.stage == Stage::Generating) else {
            return;
        };
        if run != u32::try_from(f.failed.len()).unwrap_or(u32::MAX) {
            return;
        }
        let mut billed = f.failed_ms().saturating_add(gpu_ms);
        if double {
            billed = billed.saturating_add(f.failed_ms());
        }
        f.generated = Some((billed, output_uri.clone(), worker));
        if f.cancelled {
            // Cancelled while generating, finished anyway: recorded with its output, unscored.
            self.scoring_failed(k, RunFailure::cancelled(), out);
            return;
        }
        f.stage = Stage::Scoring;
        let (seed, params) = (f.plan.seed, f.plan.params.clone());
        out.push(Command::Score {
            attempt: k,
            seed,
            params,
            output_uri,
        });
    }

    fn generation_failed(&mut self, k: u32, run: u32, failure: RunFailure, out: &mut Vec<Command>) {
        let placement = self.pol().placement;
        let Some(f) = self.flight(k).filter(|f| f.stage == Stage::Generating) else {
            return;
        };
        if run != u32::try_from(f.failed.len()).unwrap_or(u32::MAX) {
            return;
        }
        let avoid: Vec<String> = f.failed.iter().map(|r| r.worker.clone()).collect();
        if f.cancelled {
            self.finish_failed(k, failure, out);
            return;
        }
        if failure.kind == FailureKind::NotStarted
            && f.target.is_some()
            && f.waits < MAX_PLACED_WAITS
        {
            // The worker it was placed on did not start it in time: busy, or gone. Place it
            // again (the registry knows who is alive); only a failure counts as a re-run.
            f.waits += 1;
            f.stage = Stage::Placing;
            out.push(Command::Place {
                attempt: k,
                avoid,
                prefer: None,
            });
            return;
        }
        if placement == Placement::Any
            || f.failed.len() >= MAX_RERUNS
            || failure.kind != FailureKind::Infrastructure
        {
            self.finish_failed(k, failure, out);
            return;
        }
        let worker = failure
            .worker
            .clone()
            .or_else(|| f.target.clone())
            .unwrap_or_else(|| "an unknown worker".to_owned());
        f.failed.push(FailedRun {
            worker: worker.clone(),
            why: format!("{}: {}", failure.error_type, failure.message),
            gpu_ms: failure.gpu_ms,
        });
        let mut avoid = avoid;
        avoid.push(worker);
        f.stage = Stage::Placing;
        out.push(Command::Place {
            attempt: k,
            avoid,
            prefer: None,
        });
    }

    /// Record an attempt whose generation failed for good, or was cancelled: billed what every
    /// run used.
    fn finish_failed(&mut self, k: u32, failure: RunFailure, out: &mut Vec<Command>) {
        let Some(f) = self.flights.iter().find(|f| f.k() == k) else {
            return;
        };
        let used = f.failed_ms().saturating_add(failure.gpu_ms);
        let worker = failure.worker.clone().or_else(|| f.target.clone());
        let mut record = self.unfinished(
            f.noted_plan(),
            &failure,
            used,
            failure.output_uri.clone(),
            |plan| {
                let error = format!("generation failed: {}", failure.message);
                plan.errored(used, &failure.error_type, error, None)
            },
        );
        record.worker = worker;
        self.record(k, record, used, out);
    }

    /// The record of an attempt whose run ended without a result: aborted or cancelled (with
    /// `output`, paid for) when the core cancelled it, else what `failed` makes of it.
    fn unfinished(
        &self,
        plan: AttemptPlan,
        failure: &RunFailure,
        used: u64,
        output: Option<String>,
        failed: impl FnOnce(AttemptPlan) -> AttemptRecord,
    ) -> AttemptRecord {
        let cancelled = failure.kind == FailureKind::Cancelled;
        match (cancelled, &self.abort, &self.cancel_reason) {
            (true, Some(abort), _) => plan.aborted(&abort.by, used, output),
            (true, None, Some(why)) => plan.cancelled(why.clone(), used, output),
            _ => failed(plan),
        }
    }

    fn scored(&mut self, k: u32, qa: QaScores, out: &mut Vec<Command>) {
        let policy = self.pol().clone();
        let Some(f) = self.flight(k).filter(|f| f.stage == Stage::Scoring) else {
            return;
        };
        let Some((billed, output, worker)) = f.generated.clone() else {
            return;
        };
        let mut record = f.noted_plan().scored(&policy, qa, billed, Some(output));
        record.worker = worker;
        // The first pass of a `first_pass` round cancels the attempts still running.
        if record.passed
            && policy.selection == Selection::FirstPass
            && self.cancel_reason.is_none()
            && self.abort.is_none()
        {
            let why = format!("cancelled: attempt {k} passed first");
            self.cancel_running(&why, Some(k), out);
            self.cancel_reason = Some(why);
        }
        self.record(k, record, billed, out);
    }

    fn scoring_failed(&mut self, k: u32, failure: RunFailure, out: &mut Vec<Command>) {
        let Some(f) = self.flights.iter().find(|f| f.k() == k) else {
            return;
        };
        let Some((billed, output, worker)) = f.generated.clone() else {
            return;
        };
        let output = Some(output);
        let mut record =
            self.unfinished(f.noted_plan(), &failure, billed, output.clone(), |plan| {
                // The output exists and was paid for: the record keeps where it is.
                let error = format!("QA scoring failed: {}", failure.message);
                plan.errored(billed, &failure.error_type, error, output)
            });
        record.worker = worker;
        self.record(k, record, billed, out);
    }

    /// Store the record and settle the reservation in one step; the attempt counts as made
    /// from now on (the next plan reads it), while its flight ends once the store has it.
    fn record(&mut self, k: u32, record: AttemptRecord, settle_ms: u64, out: &mut Vec<Command>) {
        let Some(f) = self.flight(k) else { return };
        f.stage = Stage::Recording;
        let release = f.generated.is_none() && settle_ms == 0;
        let at = self.attempts.partition_point(|a| a.attempt < k);
        self.attempts.insert(at, record.clone());
        let twice = self.planted(crate::simulate::Defect::RecordedTwice);
        out.push(Command::Record {
            record: Box::new(record.clone()),
            settle_ms,
            release,
        });
        if twice {
            out.push(Command::Record {
                record: Box::new(record),
                settle_ms,
                release,
            });
        }
    }

    /// Cancel the attempts running, all but `except`.
    fn cancel_running(&mut self, reason: &str, except: Option<u32>, out: &mut Vec<Command>) {
        for f in self
            .flights
            .iter_mut()
            .filter(|f| f.running() && Some(f.k()) != except)
        {
            if !f.cancelled {
                out.push(Command::Cancel {
                    attempt: f.k(),
                    reason: reason.to_owned(),
                });
            }
            f.cancelled = true;
        }
    }

    fn aborted(&mut self, event: CreatorEvent, out: &mut Vec<Command>) {
        if self.abort.is_some()
            || self.req.is_none()
            || matches!(
                self.ending,
                Ending::Concluding(_) | Ending::Finished(_) | Ending::Failed
            )
        {
            return;
        }
        self.events.push(event.clone());
        self.abort = Some(event.clone());
        // An escalation's or a first pass's cancellation already asked; an abort says so.
        let reason = format!("aborted by {}", event.by);
        for f in self.flights.iter_mut().filter(|f| f.running()) {
            out.push(Command::Cancel {
                attempt: f.k(),
                reason: reason.clone(),
            });
            f.cancelled = true;
        }
        if let Ending::InReview(_) = self.ending {
            out.push(Command::EndReviewWait);
            let stop = Stop::Aborted {
                by: event.by,
                reason: event.reason,
            };
            let result = plan::conclude(self.req(), self.pol(), self.attempts.clone(), &stop);
            self.conclude(result, Review::None, out);
        }
    }

    fn escalated(&mut self, event: CreatorEvent, out: &mut Vec<Command>) {
        if !self.escalatable() {
            return;
        }
        self.events.push(event.clone());
        if self.pol().parallelism > 1 {
            // Attempts running at once are cancelled; a single one finishes first.
            let why = format!("cancelled: escalated by {}", event.by);
            self.cancel_running(&why, None, out);
            self.cancel_reason.get_or_insert(why);
        }
        self.escalate = Some(event);
    }

    fn decided(&mut self, decision: Decision, event: CreatorEvent, out: &mut Vec<Command>) {
        let Ending::InReview(result) = &self.ending else {
            return;
        };
        let result = result.clone();
        self.events.push(event.clone());
        out.push(Command::EndReviewWait);
        match decision {
            Decision::Accept { attempt } => {
                let result = plan::accepted(result, attempt, &event);
                self.conclude(result, Review::Accepted, out);
            }
            Decision::Reject => {
                let result = plan::rejected(result, &event);
                self.conclude(result, Review::Rejected, out);
            }
            Decision::RetryWith(retry) => {
                let mut result = result;
                result.decisions = self.events.clone();
                out.push(Command::RecordOutcome {
                    result: Box::new(result.clone()),
                    review: Review::Retrying,
                });
                self.ending = Ending::RetryRecording(result, retry);
            }
        }
    }

    /// The round ended: conclude, or open a review.
    fn round_ended(&mut self, stop: &Stop, out: &mut Vec<Command>) {
        let result = plan::conclude(self.req(), self.pol(), self.attempts.clone(), stop);
        let window = self.pol().review_window_secs;
        if result.outcome != Outcome::Escalated || window == 0 || self.abort.is_some() {
            let review = if result.outcome == Outcome::Escalated {
                Review::Pending
            } else {
                Review::None
            };
            self.conclude(result, review, out);
            return;
        }
        let mut result = result;
        result.decisions = self.events.clone();
        out.push(Command::Publish("awaiting_review".to_owned()));
        out.push(Command::RecordOutcome {
            result: Box::new(result.clone()),
            review: Review::Pending,
        });
        self.ending = Ending::OpeningReview(result);
    }

    /// The result is final: publish it, record it, then finish.
    fn conclude(&mut self, mut result: RetryResult, review: Review, out: &mut Vec<Command>) {
        result.decisions = self.events.clone();
        out.push(Command::Publish(result.outcome.as_str().to_owned()));
        out.push(Command::RecordOutcome {
            result: Box::new(result.clone()),
            review,
        });
        self.ending = Ending::Concluding(result);
    }

    fn outcome_recorded(&mut self, out: &mut Vec<Command>) {
        match std::mem::replace(&mut self.ending, Ending::Running) {
            Ending::OpeningReview(result) => {
                // Only now, with the review pending in the store, does the query say so (and
                // `decide` take decisions): a client that sees the phase finds it recorded.
                self.phase = Phase::AwaitingReview;
                if let Some(abort) = self.abort.clone() {
                    let stop = Stop::Aborted {
                        by: abort.by,
                        reason: abort.reason,
                    };
                    self.ending = Ending::InReview(result);
                    let result =
                        plan::conclude(self.req(), self.pol(), self.attempts.clone(), &stop);
                    self.conclude(result, Review::None, out);
                    return;
                }
                let window_secs = self.pol().review_window_secs;
                self.ending = Ending::InReview(result);
                out.push(Command::AwaitReview { window_secs });
            }
            Ending::RetryRecording(_, retry) => {
                let made = plan::made(&self.attempts);
                let (params, mut policy) = retry.apply(&self.req().params, self.pol(), made);
                policy.vary_only(self.params_taken.as_deref());
                if let Some(req) = &mut self.req {
                    req.params = params;
                }
                self.policy = Some(policy);
                self.round_start = made;
                self.phase = Phase::Retrying;
                self.escalate = None;
                self.cancel_reason = None;
                self.refused = None;
                out.push(Command::Publish("running".to_owned()));
            }
            Ending::Concluding(result) => {
                self.phase = Phase::Finished;
                out.push(Command::Finish(Box::new(result.clone())));
                self.ending = Ending::Finished(result);
            }
            other => self.ending = other,
        }
    }
}

fn reruns(failed: &[FailedRun]) -> Vec<(String, String)> {
    failed
        .iter()
        .map(|r| (r.worker.clone(), r.why.clone()))
        .collect()
}

#[cfg(test)]
mod tests;
