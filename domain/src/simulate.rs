//! A deterministic simulator of the decision core ([`crate::machine`]): no Temporal, no
//! database, one thread, every choice drawn from a tape of numbers.
//!
//! A scenario is that tape. It draws a run (policy, parallelism, placement, budget, ladder,
//! fleet), then, step by step, which operation in flight finishes next and how — a generation
//! that passes, fails, fails on its machine, is not started by a named worker, outruns its
//! reservation; a scoring; a reservation granted or refused —, and when a creator aborts,
//! escalates or decides, when the review window ends, and when the worker "crashes" (the core is
//! rebuilt from the events so far and must issue the same commands). After every step it checks
//! the invariants ([`Sim::check`]). An exhausted tape reads as zeros, and zero is always the
//! plainest choice (the first operation finishes normally), so every tape ends, and a failing
//! tape can be shrunk ([`shrink`]) to a short one that fails the same way, printed step by step.
//!
//! This is the FoundationDB / TigerBeetle way: the simulator lives beside the code it checks and
//! runs in the test suite (`machine::tests`) and, for longer campaigns, in `retake-bench
//! simulate`.

use crate::adapt::{ArmStats, Evidence};
use crate::contract::{AttemptStatus, Outcome, QaScores, RetryRequest, RetryResult, Scores};
use crate::event::CreatorEvent;
use crate::machine::{Command, Event, FailureKind, Machine, On, RunFailure, Settings, Target};
use crate::policy::{RetryPolicy, Selection};
use crate::review::Decision;
use crate::scores::CategoryScore;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A defect planted in the core on purpose, to show that the simulator catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// A re-run after an infrastructure failure bills the failed run twice (the seam bug of a
    /// real ComfyUI: the adapter and the workflow both added it).
    RerunBilledTwice,
    /// An attempt's record is written twice.
    RecordedTwice,
    /// A new attempt starts after a creator aborted.
    StartAfterAbort,
}

impl Defect {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rerun-billed-twice" => Some(Self::RerunBilledTwice),
            "recorded-twice" => Some(Self::RecordedTwice),
            "start-after-abort" => Some(Self::StartAfterAbort),
            _ => None,
        }
    }
}

/// The choices a scenario makes, read in order; past the end, every choice is 0.
#[derive(Debug, Clone)]
struct Tape<'a> {
    data: &'a [u32],
    at: usize,
}

impl Tape<'_> {
    /// A choice in `0..n`.
    fn draw(&mut self, n: u32) -> u32 {
        let v = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        if n == 0 { 0 } else { v % n }
    }

    fn chance(&mut self, percent: u32) -> bool {
        // Zero is the plain choice: "no".
        let v = self.draw(100);
        v != 0 && v <= percent
    }
}

/// An operation the workflow would have in flight.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Evidence(u32),
    Reserve {
        k: u32,
        gpu_ms: u64,
        eager: bool,
    },
    Place {
        k: u32,
        avoid: Vec<String>,
        prefer: Option<String>,
    },
    Generate {
        k: u32,
        run: u32,
        reserved_ms: u64,
        on: On,
        cancelled: bool,
    },
    Score {
        k: u32,
        cancelled: bool,
    },
    Release(u32),
    Record {
        k: u32,
        settle_ms: u64,
    },
    RecordOutcome,
    Timer,
}

/// One simulated run.
struct Sim {
    machine: Machine,
    planted: Option<Defect>,
    req: RetryRequest,
    settings: Settings,
    policy: RetryPolicy,
    text: bool,
    workers: Vec<String>,
    broken: Vec<String>,
    limit_ms: u64,
    spent_ms: u64,
    holds: BTreeMap<u32, u64>,
    ops: Vec<Op>,
    events: Vec<Event>,
    commands: Vec<Command>,
    /// GPU ms each run of each attempt reported.
    reported: BTreeMap<u32, Vec<u64>>,
    /// The request's parameters as the current round has them (a reviewer's `retry_with`
    /// changes them): what a reseeding rung's parameters are computed from, independently here.
    base: crate::contract::Params,
    /// Seed and parameters each attempt generated with.
    generated_with: BTreeMap<u32, (u64, crate::contract::Params)>,
    records: BTreeMap<u32, u32>,
    /// Attempts reserved and not yet recorded, released or refused: at most `parallelism`.
    active: std::collections::BTreeSet<u32>,
    recorded: Vec<crate::contract::AttemptRecord>,
    accepted: Vec<u32>,
    aborted: bool,
    /// A passing attempt of a `first_pass` round was recorded: the round starts nothing more.
    passed_first: bool,
    /// The highest attempt of earlier rounds (a reviewer's `retry_with` starts a round).
    round_start: u32,
    /// Attempts claimed (evidence or reservation asked for).
    claims: std::collections::BTreeSet<u32>,
    finished: Option<RetryResult>,
    failed: bool,
    retries_asked: u32,
    log: Vec<String>,
    logging: bool,
}

/// A scenario's verdict: `Err` names the broken invariant, with the steps that led to it when
/// logging.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The invariant broken (a short stable phrase, compared when shrinking).
    pub invariant: String,
    pub detail: String,
    pub steps: Vec<String>,
}

/// What a scenario did, for the campaign's statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ran {
    pub steps: u64,
    pub attempts: u64,
    pub outcome: Option<Outcome>,
}

const MAX_STEPS: u32 = 5_000;

/// Run the scenario `tape` (with `defect` planted when given); `logging` keeps its steps in
/// words.
pub fn run(tape: &[u32], defect: Option<Defect>, logging: bool) -> Result<Ran, Failure> {
    let mut t = Tape { data: tape, at: 0 };
    let mut sim = Sim::draw(&mut t, defect, logging);
    let fail = |sim: &Sim, invariant: &str, detail: String| Failure {
        invariant: invariant.to_owned(),
        detail,
        steps: sim.log.clone(),
    };
    sim.feed(Event::Started {
        req: Box::new(sim.req.clone()),
        settings: sim.settings.clone(),
    })
    .map_err(|(i, d)| fail(&sim, i, d))?;
    let mut steps = 0;
    while sim.finished.is_none() && !sim.failed {
        steps += 1;
        if steps > MAX_STEPS {
            return Err(fail(&sim, "the run ends", format!("{MAX_STEPS} steps")));
        }
        sim.step(&mut t).map_err(|(i, d)| fail(&sim, i, d))?;
    }
    sim.replay().map_err(|(i, d)| fail(&sim, i, d))?;
    sim.at_end().map_err(|(i, d)| fail(&sim, i, d))?;
    Ok(Ran {
        steps: u64::from(steps),
        attempts: sim.recorded.len() as u64,
        outcome: sim.finished.as_ref().map(|r| r.outcome),
    })
}

type Broken = (&'static str, String);

impl Sim {
    fn draw(t: &mut Tape, defect: Option<Defect>, logging: bool) -> Self {
        let text = t.chance(15);
        let strategies = if text {
            [
                "revise",
                "revise_with_feedback",
                "partial_rewrite",
                "user_intervention",
            ]
            .as_slice()
        } else {
            ["reseed", "reseed_jitter", "adaptive"].as_slice()
        };
        let mut ladder: Vec<&str> = (0..=t.draw(3))
            .map(|_| strategies[t.draw(strategies.len() as u32) as usize])
            .collect();
        if t.draw(3) == 0 {
            ladder.clear();
        }
        let max_attempts = 1 + t.draw(6);
        let parallelism = 1 + t.draw(4);
        let selection = ["first_pass", "best_of_n"][t.draw(2) as usize];
        let placement = ["avoid_failed", "any", "same_worker"][t.draw(3) as usize];
        let window = [3600, 0][t.draw(2) as usize];
        let est = 100 * (1 + u64::from(t.draw(10)));
        let min_evidence = 1 + t.draw(3);
        // 0 (never), 1, the default 2, or 3 refusals in a row end a round.
        let same_refusals = t.draw(4);
        let mut policy = json!({
            "stop_after_same_refusals": same_refusals,
            "enabled": true,
            "max_attempts": max_attempts,
            "parallelism": parallelism,
            "selection": selection,
            "placement": placement,
            "review_window_secs": window,
            "est_gpu_ms_per_attempt": est,
            "adaptive": {"min_evidence": min_evidence},
        });
        if text {
            policy["profile"] = json!("text");
            policy["language"] = json!("en");
        }
        if !ladder.is_empty() {
            policy["ladder"] = json!(ladder);
        }
        let segment = t.draw(1000);
        let req = if text {
            json!({
                "segment_id": format!("ch-{segment}"), "project_id": "p",
                "scene_type": "chapter",
                "params": {"seed": 42, "chapter": 3, "output_uri": "file:///drafts/ch3.md"},
                "failed_qa": {"failures": ["below_threshold"], "breakdown": [
                    {"category": "narrative_quality", "score": 0.6, "feedback": "slow"}]},
                "policy": policy,
            })
        } else {
            json!({
                "segment_id": format!("seg-{segment}"), "project_id": "p",
                "scene_type": "dialogue",
                "params": {"seed": 1234, "cfg_scale": 7.0, "denoise_strength": 0.6},
                "failed_qa": {"scores": {"face": 0.42, "motion": 0.8}, "failures": ["face_melt"]},
                "policy": policy,
            })
        };
        let req = RetryRequest::parse(&req).expect("the simulator draws valid requests");
        let settings = Settings {
            policy: None,
            seed_bits: [53, 32][t.draw(2) as usize],
            params_taken: (t.draw(4) == 1).then(|| vec!["cfg_scale".to_owned()]),
        };
        let mut resolved = RetryPolicy::resolve(None, req.policy.as_ref()).expect("valid policy");
        resolved.vary_only(settings.params_taken.as_deref());
        let workers: Vec<String> = (0..1 + t.draw(3)).map(|i| format!("gpu-{i}")).collect();
        let broken = workers.iter().filter(|_| t.chance(30)).cloned().collect();
        let limit_ms = match t.draw(3) {
            0 => u64::MAX / 4,
            _ => 200 + 100 * u64::from(t.draw(40)),
        };
        let mut machine = Machine::new();
        if let Some(d) = defect {
            machine.plant(d);
        }
        let base = req.params.clone();
        let mut sim = Sim {
            base,
            machine,
            planted: defect,
            req,
            settings,
            policy: resolved,
            text,
            workers,
            broken,
            limit_ms,
            spent_ms: 0,
            holds: BTreeMap::new(),
            ops: vec![],
            events: vec![],
            commands: vec![],
            reported: BTreeMap::new(),
            generated_with: BTreeMap::new(),
            records: BTreeMap::new(),
            active: Default::default(),
            recorded: vec![],
            accepted: vec![],
            aborted: false,
            passed_first: false,
            round_start: 0,
            claims: Default::default(),
            finished: None,
            failed: false,
            retries_asked: 0,
            log: vec![],
            logging,
        };
        if sim.logging {
            let line = format!(
                "run: {} ladder {:?}, max_attempts {}, parallelism {}, {:?}, {:?}, review {} s, \
                 est {} ms, budget {}, workers {:?} (broken {:?}), seed_bits {}, params_taken {:?}, \
                 stop after {} same refusals",
                if text { "text" } else { "media" },
                sim.policy
                    .ladder
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>(),
                sim.policy.max_attempts,
                sim.policy.parallelism,
                sim.policy.selection,
                sim.policy.placement,
                sim.policy.review_window_secs,
                sim.policy.est_gpu_ms_per_attempt,
                if sim.limit_ms > u64::MAX / 8 {
                    "unlimited".to_owned()
                } else {
                    format!("{} ms", sim.limit_ms)
                },
                sim.workers,
                sim.broken,
                sim.settings.seed_bits,
                sim.settings.params_taken,
                sim.policy.stop_after_same_refusals,
            );
            sim.log.push(line);
        }
        sim
    }

    fn say(&mut self, line: impl FnOnce() -> String) {
        if self.logging {
            self.log.push(line());
        }
    }

    fn committed(&self) -> u64 {
        self.spent_ms
            .saturating_add(self.holds.values().copied().sum::<u64>())
    }

    /// Give the core an event; carry out (that is, put in flight) what it answers; check.
    fn feed(&mut self, event: Event) -> Result<(), Broken> {
        if self.logging {
            self.log.push(format!("  event {}", words(&event)));
        }
        if let Event::Refused { attempt, .. }
        | Event::Released { attempt }
        | Event::Recorded { attempt } = &event
        {
            self.active.remove(attempt);
        }
        self.events.push(event.clone());
        let commands = self.machine.on(event);
        for c in commands {
            if self.logging {
                self.log.push(format!("    → {}", command_words(&c)));
            }
            self.commands.push(c.clone());
            self.carry_out(c)?;
        }
        self.check()
    }

    fn carry_out(&mut self, c: Command) -> Result<(), Broken> {
        if self.finished.is_some() || self.failed {
            return Err(("no command after the end", format!("{c:?}")));
        }
        match c {
            Command::LoadEvidence { attempt, .. } => {
                self.claimed(attempt)?;
                self.ops.push(Op::Evidence(attempt))
            }
            Command::Reserve {
                attempt,
                gpu_ms,
                eager,
            } => {
                if self.aborted {
                    return Err((
                        "no attempt starts after an abort",
                        format!("attempt {attempt} reserved after the abort"),
                    ));
                }
                if self.passed_first {
                    return Err((
                        "no attempt starts after a first pass",
                        format!("attempt {attempt} reserved after an attempt passed"),
                    ));
                }
                self.claimed(attempt)?;
                self.active.insert(attempt);
                if self.active.len() > self.policy.parallelism as usize {
                    return Err((
                        "at most `parallelism` attempts hold a slot until recorded",
                        format!("attempts {:?} at once", self.active),
                    ));
                }
                self.ops.push(Op::Reserve {
                    k: attempt,
                    gpu_ms,
                    eager,
                })
            }
            Command::Place {
                attempt,
                avoid,
                prefer,
            } => self.ops.push(Op::Place {
                k: attempt,
                avoid,
                prefer,
            }),
            Command::Generate(g) => {
                let k = g.plan.attempt;
                let expected = crate::seed::attempt_seed(
                    self.req.segment_id.as_str(),
                    self.req.params.seed(),
                    k,
                    self.policy.seed_bits.min(self.settings.seed_bits),
                );
                if g.plan.seed != expected {
                    return Err((
                        "attempt k's seed comes from the segment and k",
                        format!("attempt {k}: seed {} instead of {expected}", g.plan.seed),
                    ));
                }
                // A reseeding rung's parameters depend on the segment, k and the round's base
                // parameters only, never on parallelism, interleaving or re-runs: computed here
                // with the jitter alone, not the planner.
                let rung_vary = match g.plan.strategy {
                    Some(crate::strategy::Strategy::Reseed) => Some(BTreeMap::new()),
                    Some(crate::strategy::Strategy::ReseedJitter) => Some(self.policy.vary.clone()),
                    _ => None,
                };
                if let Some(vary) = rung_vary {
                    let (expected, _) = crate::jitter::apply(&self.base, &vary, expected);
                    if g.plan.params != expected {
                        return Err((
                            "attempt k's parameters come from the segment, k and the round",
                            format!("attempt {k}: {:?} instead of {expected:?}", g.plan.params),
                        ));
                    }
                }
                let with = (g.plan.seed, g.plan.params.clone());
                if let Some(before) = self.generated_with.get(&k)
                    && *before != with
                {
                    return Err((
                        "every run of attempt k has the same seed and parameters",
                        format!("attempt {k} run {}: {with:?} after {before:?}", g.run),
                    ));
                }
                self.generated_with.insert(k, with);
                if !self.holds.contains_key(&k) {
                    return Err((
                        "a generation runs under a reservation",
                        format!("attempt {k} has none"),
                    ));
                }
                self.ops.push(Op::Generate {
                    k,
                    run: g.run,
                    reserved_ms: g.reserved_ms,
                    on: g.on,
                    cancelled: false,
                })
            }
            Command::Score { attempt, .. } => self.ops.push(Op::Score {
                k: attempt,
                cancelled: false,
            }),
            Command::Cancel { attempt, .. } => {
                for op in &mut self.ops {
                    match op {
                        Op::Generate { k, cancelled, .. } | Op::Score { k, cancelled }
                            if *k == attempt =>
                        {
                            *cancelled = true
                        }
                        _ => {}
                    }
                }
            }
            Command::Release { attempt } => self.ops.push(Op::Release(attempt)),
            Command::Record {
                record, settle_ms, ..
            } => {
                let k = record.attempt;
                let n = self.records.entry(k).or_default();
                *n += 1;
                if *n > 1 {
                    return Err((
                        "every attempt is recorded exactly once",
                        format!("attempt {k} recorded {n} times"),
                    ));
                }
                let reported: u64 = self.reported.get(&k).map_or(0, |r| r.iter().sum());
                if record.gpu_ms != reported || settle_ms != reported {
                    return Err((
                        "GPU billed = the sum of what each run reported, each run once",
                        format!(
                            "attempt {k}: runs reported {:?} = {reported} ms, record says {} ms, \
                             settled {settle_ms} ms",
                            self.reported.get(&k).cloned().unwrap_or_default(),
                            record.gpu_ms
                        ),
                    ));
                }
                if !self.generated_with.contains_key(&k)
                    && record.status != AttemptStatus::Aborted
                    && record.status != AttemptStatus::Cancelled
                {
                    return Err((
                        "only an attempt that started is recorded",
                        format!("attempt {k} recorded {:?}", record.status),
                    ));
                }
                if record.passed && self.policy.selection == Selection::FirstPass {
                    self.passed_first = true;
                }
                let at = self.recorded.partition_point(|a| a.attempt < k);
                self.recorded.insert(at, (*record).clone());
                self.ops.push(Op::Record { k, settle_ms });
            }
            Command::Publish(_) => {}
            Command::RecordOutcome { .. } => self.ops.push(Op::RecordOutcome),
            Command::AwaitReview { .. } => self.ops.push(Op::Timer),
            Command::EndReviewWait => self.ops.retain(|o| *o != Op::Timer),
            Command::Finish(result) => {
                if self.ops.iter().any(|o| !matches!(o, Op::Timer)) {
                    return Err((
                        "the run finishes with nothing in flight",
                        format!("{:?}", self.ops),
                    ));
                }
                self.finished = Some(*result);
            }
            Command::Fail(e) => {
                self.failed = true;
                return Err(("a valid request runs", e.to_string()));
            }
        }
        Ok(())
    }

    /// One step: an operation in flight finishes, or a creator acts, or the worker crashes.
    fn step(&mut self, t: &mut Tape) -> Result<(), Broken> {
        let phase = self.machine.phase();
        let action = t.draw(100);
        let busy = self.ops.iter().any(|o| *o != Op::Timer);
        if (90..93).contains(&action) || (!busy && action % 4 == 1) {
            let ev = CreatorEvent::from_signal("abort", &json!({"by": "mina", "reason": "stop"}));
            let fed = self.feed(Event::Abort(ev));
            // Taken unless the result was already final.
            self.aborted = self.machine.events().iter().any(|e| e.action == "abort");
            return fed;
        }
        if (93..96).contains(&action) {
            let ev = CreatorEvent::from_signal("escalate", &json!({"by": "jun"}));
            return self.feed(Event::Escalate(ev));
        }
        if (96..98).contains(&action) {
            self.say(|| "  crash: the core is rebuilt from the events so far".to_owned());
            return self.replay();
        }
        if busy && action < 90 {
            let live: Vec<usize> = (0..self.ops.len())
                .filter(|&i| self.ops[i] != Op::Timer)
                .collect();
            let i = live[t.draw(live.len() as u32) as usize];
            return self.finish_op(i, t);
        }
        if self.machine.decidable().is_ok() {
            return self.decide(t);
        }
        if busy {
            return Ok(());
        }
        Err((
            "a run with nothing in flight is awaiting review",
            format!(
                "phase {:?}, decidable {:?}",
                phase,
                self.machine.decidable()
            ),
        ))
    }

    fn decide(&mut self, t: &mut Tape) -> Result<(), Broken> {
        let attempts = self.machine.attempts().to_vec();
        let value = match t.draw(4) {
            0 => {
                self.ops.retain(|o| *o != Op::Timer);
                return self.feed(Event::ReviewWindowEnded);
            }
            1 => {
                let k = if attempts.is_empty() {
                    1
                } else {
                    attempts[t.draw(attempts.len() as u32) as usize].attempt
                };
                json!({"decision": "accept", "attempt": k, "by": "jun"})
            }
            2 => json!({"decision": "reject", "by": "jun", "reason": "no"}),
            _ if self.retries_asked < 2 => {
                self.retries_asked += 1;
                let more = 1 + t.draw(3);
                let params = if self.text {
                    json!({})
                } else {
                    json!({"cfg_scale": 8.5})
                };
                json!({"decision": "retry_with", "by": "jun", "attempts": more, "params": params})
            }
            _ => json!({"decision": "reject", "by": "jun"}),
        };
        let policy = self.machine.policy().cloned().unwrap_or_default();
        // As the workflow's `decide` validator: parsed, then admitted by the core.
        let decided = Decision::parse(&value, &policy, &attempts)
            .map_err(|e| e.to_string())
            .and_then(|(d, e)| self.machine.admits(&d, &e).map(|()| (d, e)));
        match decided {
            Ok((decision, event)) => {
                if let Decision::Accept { attempt } = decision {
                    self.accepted.push(attempt);
                }
                if let Decision::RetryWith(retry) = &decision {
                    self.passed_first = false;
                    self.round_start = self.recorded.last().map_or(0, |a| a.attempt);
                    for (name, value) in &retry.params {
                        self.base.0.insert(name.clone(), value.clone());
                    }
                }
                self.feed(Event::Decided { decision, event })
            }
            Err(e) => {
                self.say(|| format!("  decision refused: {e}"));
                Ok(())
            }
        }
    }

    fn finish_op(&mut self, i: usize, t: &mut Tape) -> Result<(), Broken> {
        let op = self.ops.remove(i);
        let event = match op {
            Op::Evidence(k) => Event::Evidence {
                attempt: k,
                evidence: if t.chance(50) {
                    Evidence {
                        rows: vec![ArmStats {
                            failure_kind: "face_melt".to_owned(),
                            arm: "cfg_scale+".to_owned(),
                            attempts: 1 + t.draw(40),
                            passes: t.draw(20),
                            gain_sum: 0.5,
                        }],
                    }
                } else {
                    Evidence::default()
                },
            },
            Op::Reserve { k, gpu_ms, eager } => {
                let committed = self.committed();
                if committed.saturating_add(gpu_ms) <= self.limit_ms && !t.chance(5) {
                    self.holds.insert(k, gpu_ms);
                    Event::Reserved {
                        attempt: k,
                        gpu_ms,
                        eager: eager && t.chance(50),
                    }
                } else {
                    Event::Refused {
                        attempt: k,
                        limit_ms: self.limit_ms,
                        committed_ms: committed,
                        requested_ms: gpu_ms,
                    }
                }
            }
            Op::Place { k, avoid, prefer } => {
                let alive: Vec<&String> =
                    self.workers.iter().filter(|w| !avoid.contains(w)).collect();
                let worker = match prefer {
                    Some(p) if alive.contains(&&p) && !t.chance(20) => Some(p),
                    _ if alive.is_empty() || t.chance(10) => None,
                    _ => Some(alive[t.draw(alive.len() as u32) as usize].clone()),
                };
                Event::Placed {
                    attempt: k,
                    target: worker.map(|w| Target {
                        queue: format!("q/generate/{w}"),
                        worker: w,
                    }),
                }
            }
            Op::Generate {
                k,
                run,
                reserved_ms,
                on,
                cancelled,
            } => self.generation(t, k, run, reserved_ms, on, cancelled),
            Op::Score { k, cancelled } => {
                if cancelled && !t.chance(30) {
                    Event::ScoringFailed {
                        attempt: k,
                        failure: failure(FailureKind::Cancelled, "Cancelled", "cancelled", 0),
                    }
                } else if t.chance(8) {
                    Event::ScoringFailed {
                        attempt: k,
                        failure: failure(FailureKind::Other, "ScorerFailed", "judge down", 0),
                    }
                } else {
                    let score = f64::from(t.draw(101)) / 100.0;
                    Event::Scored {
                        attempt: k,
                        qa: self.qa(score),
                    }
                }
            }
            Op::Release(k) => {
                self.holds.remove(&k);
                Event::Released { attempt: k }
            }
            Op::Record { k, settle_ms } => {
                self.holds.remove(&k);
                self.spent_ms = self.spent_ms.saturating_add(settle_ms);
                Event::Recorded { attempt: k }
            }
            Op::RecordOutcome => Event::OutcomeRecorded,
            Op::Timer => Event::ReviewWindowEnded,
        };
        self.feed(event)
    }

    fn qa(&self, score: f64) -> QaScores {
        if self.text {
            QaScores {
                breakdown: vec![CategoryScore {
                    category: "narrative_quality".to_owned(),
                    score,
                    feedback: "ok".to_owned(),
                }],
                ..Default::default()
            }
        } else {
            QaScores {
                scores: Scores::from([("face".to_owned(), score), ("motion".to_owned(), 0.9)]),
                ..Default::default()
            }
        }
    }

    fn generation(
        &mut self,
        t: &mut Tape,
        k: u32,
        run: u32,
        reserved_ms: u64,
        on: On,
        cancelled: bool,
    ) -> Event {
        let worker = match &on {
            On::Worker(target) => target.worker.clone(),
            On::Shared | On::Eager => {
                self.workers[t.draw(self.workers.len() as u32) as usize].clone()
            }
        };
        let used = |t: &mut Tape| {
            u64::from(
                t.draw(
                    u32::try_from(reserved_ms)
                        .unwrap_or(u32::MAX)
                        .saturating_add(1),
                ),
            )
        };
        let report = |sim: &mut Sim, ms: u64| sim.reported.entry(k).or_default().push(ms);
        if cancelled && !t.chance(30) {
            let ms = used(t);
            report(self, ms);
            let mut f = failure(FailureKind::Cancelled, "Cancelled", "cancelled", ms);
            f.worker = Some(worker);
            return Event::GenerationFailed {
                attempt: k,
                run,
                failure: f,
            };
        }
        let broken = self.broken.contains(&worker);
        let choice = if broken && t.draw(4) != 0 {
            1
        } else {
            t.draw(12)
        };
        let (kind, error_type, message, ms) = match choice {
            1 => (
                FailureKind::Infrastructure,
                crate::contract::INFRASTRUCTURE_FAILURE,
                "CUDA out of memory",
                used(t),
            ),
            2 if matches!(on, On::Worker(_)) => (
                FailureKind::NotStarted,
                "Timeout",
                "no worker picked it up in time",
                0,
            ),
            3 => (
                FailureKind::Other,
                crate::contract::BACKEND_REJECTED,
                "value out of range: cfg_scale",
                used(t) / 4,
            ),
            4 => (
                FailureKind::Other,
                "Timeout",
                "no heartbeat in time",
                used(t),
            ),
            _ => {
                // Generated, perhaps beyond the reservation: more is granted while the budget
                // allows, else the budget stops it.
                let ms = u64::from(
                    t.draw(
                        u32::try_from(reserved_ms)
                            .unwrap_or(u32::MAX)
                            .saturating_mul(3)
                            / 2
                            + 1,
                    ),
                );
                if ms > reserved_ms {
                    let more = ms - reserved_ms;
                    if self.committed().saturating_add(more) <= self.limit_ms {
                        *self.holds.entry(k).or_default() += more;
                    } else {
                        report(self, reserved_ms);
                        let mut f = failure(
                            FailureKind::Other,
                            crate::contract::BUDGET_EXHAUSTED,
                            "the budget refused more",
                            reserved_ms,
                        );
                        f.worker = Some(worker);
                        return Event::GenerationFailed {
                            attempt: k,
                            run,
                            failure: f,
                        };
                    }
                }
                report(self, ms);
                return Event::Generated {
                    attempt: k,
                    run,
                    gpu_ms: ms,
                    output_uri: format!("file:///out/{k}-{run}.png"),
                    worker: Some(worker),
                };
            }
        };
        report(self, ms);
        let mut f = failure(kind, error_type, message, ms);
        f.worker = Some(worker);
        Event::GenerationFailed {
            attempt: k,
            run,
            failure: f,
        }
    }

    /// Attempt `k` is claimed (its evidence loaded, or its budget reserved): a round that
    /// `stop_after_same_refusals` refusals in a row ended claims no further attempt. (One
    /// claimed before, still loading its evidence, may go on to reserve: the core judges stop
    /// rules when a slot is claimed.)
    fn claimed(&mut self, k: u32) -> Result<(), Broken> {
        if !self.claims.insert(k) {
            return Ok(());
        }
        match self.same_refusals() {
            Some(streak) => Err((
                "no attempt starts after `stop_after_same_refusals` same refusals in a row",
                format!("attempt {k} claimed after refusals of {streak:?}"),
            )),
            None => Ok(()),
        }
    }

    /// The first `stop_after_same_refusals` attempts of this round, recorded one after another
    /// in attempt order, that the backend refused with the same error; `None` when there are not
    /// that many in a row, or the policy never stops on refusals. Counted here, not by the core.
    fn same_refusals(&self) -> Option<Vec<u32>> {
        let need = self.policy.stop_after_same_refusals as usize;
        if need == 0 {
            return None;
        }
        let mut streak: Vec<&crate::contract::AttemptRecord> = vec![];
        for a in self
            .recorded
            .iter()
            .filter(|a| a.attempt > self.round_start)
        {
            let refused = a.error_type.as_deref() == Some(crate::contract::BACKEND_REJECTED);
            if !refused {
                streak.clear();
                continue;
            }
            if streak.last().is_some_and(|b| b.error != a.error) {
                streak.clear();
            }
            streak.push(a);
            if streak.len() == need {
                return Some(streak.iter().map(|a| a.attempt).collect());
            }
        }
        None
    }

    /// The invariants that hold after every step.
    fn check(&mut self) -> Result<(), Broken> {
        if self.spent_ms > self.limit_ms {
            return Err((
                "spent stays within the limit",
                format!("{} of {} ms", self.spent_ms, self.limit_ms),
            ));
        }
        let status = self.machine.status();
        if status.attempts != self.recorded {
            return Err((
                "the live report shows every attempt as recorded",
                format!(
                    "report {:?} vs recorded {:?}",
                    numbers(&status.attempts),
                    numbers(&self.recorded)
                ),
            ));
        }
        Ok(())
    }

    /// "Crash": a fresh core fed the events so far must issue the same commands.
    fn replay(&mut self) -> Result<(), Broken> {
        let mut fresh = Machine::new();
        if let Some(d) = self.planted {
            fresh.plant(d);
        }
        let mut again = Vec::with_capacity(self.commands.len());
        for e in &self.events {
            again.extend(fresh.on(e.clone()));
        }
        if again != self.commands {
            let at = again
                .iter()
                .zip(&self.commands)
                .position(|(a, b)| a != b)
                .unwrap_or(again.len().min(self.commands.len()));
            return Err((
                "the same events give the same commands",
                format!(
                    "command {at} differs: {:?} vs {:?}",
                    again.get(at),
                    self.commands.get(at)
                ),
            ));
        }
        self.machine = fresh;
        Ok(())
    }

    /// The invariants of a finished run.
    fn at_end(&self) -> Result<(), Broken> {
        let Some(result) = &self.finished else {
            return Err(("exactly one final outcome", "none".to_owned()));
        };
        let finishes = self
            .commands
            .iter()
            .filter(|c| matches!(c, Command::Finish(_)))
            .count();
        if finishes != 1 {
            return Err(("exactly one final outcome", format!("{finishes}")));
        }
        for k in self.generated_with.keys() {
            if self.records.get(k) != Some(&1) {
                return Err((
                    "every attempt that started is recorded exactly once",
                    format!("attempt {k}: {:?} records", self.records.get(k)),
                ));
            }
        }
        if !self.holds.is_empty() {
            return Err(("nothing reserved at the end", format!("{:?}", self.holds)));
        }
        if result.attempts != self.recorded {
            return Err((
                "the result names every attempt, in order, as recorded",
                format!(
                    "{:?} vs {:?}",
                    numbers(&result.attempts),
                    numbers(&self.recorded)
                ),
            ));
        }
        let billed: u64 = self.reported.values().flatten().sum();
        if result.gpu_ms_total != billed {
            return Err((
                "GPU billed = the sum of what each run reported, each run once",
                format!(
                    "result {} ms, runs reported {billed} ms",
                    result.gpu_ms_total
                ),
            ));
        }
        let mut from = 0;
        for a in &result.attempts {
            let name = format!("attempt {}", a.attempt);
            match result.report[from..].find(&name) {
                Some(at) => from += at + name.len(),
                None => {
                    return Err((
                        "the report names every attempt, in order",
                        format!("{name} missing or out of order in {:?}", result.report),
                    ));
                }
            }
        }
        if let Some(k) = result.selected_attempt {
            let passed = result.attempts.iter().any(|a| a.attempt == k && a.passed);
            if !passed && !self.accepted.contains(&k) {
                return Err((
                    "a selected attempt passed or was accepted",
                    format!("attempt {k} selected: {}", result.reason),
                ));
            }
            if let Some(a) = result.attempts.iter().find(|a| a.attempt == k)
                && !a.acceptable()
            {
                return Err((
                    "a selected attempt has an output",
                    format!("attempt {k} is {:?}", a.status),
                ));
            }
        }
        if result.reason.starts_with("the backend refused") {
            let need = self.policy.stop_after_same_refusals;
            let Some(streak) = self.same_refusals().filter(|_| need > 0) else {
                return Err((
                    "refusals end a round only after `stop_after_same_refusals` in a row",
                    format!("{need} needed: {}", result.reason),
                ));
            };
            let named = format!("attempt{} {}", if need == 1 { "" } else { "s" }, streak[0]);
            if !result.reason.contains(&named) {
                return Err((
                    "refusals end a round only after `stop_after_same_refusals` in a row",
                    format!("{streak:?} not named: {}", result.reason),
                ));
            }
        }
        if self.aborted && result.outcome != Outcome::Aborted {
            return Err((
                "an abort taken ends the run aborted",
                format!("{:?}: {}", result.outcome, result.reason),
            ));
        }
        Ok(())
    }
}

fn numbers(attempts: &[crate::contract::AttemptRecord]) -> Vec<u32> {
    attempts.iter().map(|a| a.attempt).collect()
}

fn failure(kind: FailureKind, error_type: &str, message: &str, gpu_ms: u64) -> RunFailure {
    RunFailure {
        kind,
        error_type: error_type.to_owned(),
        message: message.to_owned(),
        gpu_ms,
        output_uri: None,
        worker: None,
    }
}

fn words(e: &Event) -> String {
    match e {
        Event::Started { req, .. } => format!("started segment {}", req.segment_id.as_str()),
        Event::Evidence { attempt, evidence } => {
            format!("attempt {attempt}: evidence, {} rows", evidence.rows.len())
        }
        Event::Reserved {
            attempt,
            gpu_ms,
            eager,
        } => format!(
            "attempt {attempt}: reserved {gpu_ms} ms{}",
            if *eager { ", eager" } else { "" }
        ),
        Event::Refused {
            attempt,
            committed_ms,
            limit_ms,
            ..
        } => format!("attempt {attempt}: refused ({committed_ms} of {limit_ms} ms committed)"),
        Event::Placed { attempt, target } => format!(
            "attempt {attempt}: placed on {}",
            target.as_ref().map_or("no worker", |t| t.worker.as_str())
        ),
        Event::Generated {
            attempt,
            run,
            gpu_ms,
            worker,
            ..
        } => format!("attempt {attempt} run {run}: generated, {gpu_ms} ms on {worker:?}"),
        Event::GenerationFailed {
            attempt,
            run,
            failure,
        } => format!(
            "attempt {attempt} run {run}: generation failed {:?} {} ({} ms on {:?})",
            failure.kind, failure.error_type, failure.gpu_ms, failure.worker
        ),
        Event::Scored { attempt, qa } => format!("attempt {attempt}: scored {:?}", qa.scores),
        Event::ScoringFailed { attempt, failure } => {
            format!("attempt {attempt}: scoring failed {:?}", failure.kind)
        }
        Event::Recorded { attempt } => format!("attempt {attempt}: recorded"),
        Event::Released { attempt } => format!("attempt {attempt}: released"),
        Event::OutcomeRecorded => "outcome recorded".to_owned(),
        Event::Abort(e) => format!("abort by {}", e.by),
        Event::Escalate(e) => format!("escalate by {}", e.by),
        Event::Decided { event, .. } => format!("decision {} by {}", event.action, event.by),
        Event::ReviewWindowEnded => "review window ended".to_owned(),
    }
}

fn command_words(c: &Command) -> String {
    match c {
        Command::Generate(g) => format!(
            "generate attempt {} run {} ({} ms left) on {:?}",
            g.plan.attempt, g.run, g.reserved_ms, g.on
        ),
        Command::Record {
            record, settle_ms, ..
        } => format!(
            "record attempt {} {:?}, billed {} ms, settle {settle_ms} ms",
            record.attempt, record.status, record.gpu_ms
        ),
        Command::RecordOutcome { result, review } => format!(
            "record outcome {:?} (review {}): {}",
            result.outcome,
            review.as_str(),
            result.report
        ),
        Command::Finish(result) => format!("finish {:?}: {}", result.outcome, result.reason),
        other => format!("{other:?}"),
    }
}

/// The tape of scenario `seed`: numbers from a seeded ChaCha stream.
pub fn tape(seed: u64, len: usize) -> Vec<u32> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.next_u32()).collect()
}

/// A shorter tape that fails the same invariant as `tape` (which must fail): chunks removed,
/// numbers zeroed and halved while it still fails.
pub fn shrink(tape: &[u32], defect: Option<Defect>) -> Vec<u32> {
    let Err(first) = run(tape, defect, false) else {
        return tape.to_vec();
    };
    let fails =
        |t: &[u32]| matches!(run(t, defect, false), Err(f) if f.invariant == first.invariant);
    let mut best = tape.to_vec();
    // What is past the last choice read is never read: cut it first.
    let mut improved = true;
    while improved {
        improved = false;
        for size in [64, 16, 4, 1] {
            let mut i = 0;
            while i + size <= best.len() {
                let mut candidate = best.clone();
                candidate.drain(i..i + size);
                if fails(&candidate) {
                    best = candidate;
                    improved = true;
                } else {
                    i += size;
                }
            }
        }
        for i in 0..best.len() {
            for smaller in [0, best[i] / 2, best[i] % 100] {
                if smaller < best[i] {
                    let mut candidate = best.clone();
                    candidate[i] = smaller;
                    if fails(&candidate) {
                        best = candidate;
                        improved = true;
                        break;
                    }
                }
            }
        }
    }
    while best.last() == Some(&0) {
        best.pop();
    }
    best
}

/// A failure in words: the invariant, the detail and the steps of the (shrunk) scenario.
pub fn explain(tape: &[u32], defect: Option<Defect>) -> String {
    match run(tape, defect, true) {
        Ok(_) => "the scenario passes".to_owned(),
        Err(f) => {
            let mut s = format!(
                "invariant broken: {}\n  {}\nscenario (tape {:?}):\n",
                f.invariant, f.detail, tape
            );
            for line in &f.steps {
                let _ = writeln!(s, "  {line}");
            }
            s
        }
    }
}

/// Run scenarios `seeds`; the first failure, shrunk and explained, or how many steps ran.
pub fn campaign(
    seeds: std::ops::Range<u64>,
    defect: Option<Defect>,
) -> Result<(u64, u64), (u64, String)> {
    let mut steps = 0;
    let mut scenarios = 0;
    for seed in seeds {
        let tape = tape(seed, 600);
        match run(&tape, defect, false) {
            Ok(ran) => {
                steps += ran.steps;
                scenarios += 1;
            }
            Err(_) => {
                let small = shrink(&tape, defect);
                return Err((seed, explain(&small, defect)));
            }
        }
    }
    Ok((scenarios, steps))
}
