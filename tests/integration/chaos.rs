//! Chaos: worker processes SIGKILLed at random, and replaced, while 20 retries run. Every retry
//! completes; its attempts are the ones in the store, with the documented seeds; the budget is
//! charged exactly once per attempt and nothing stays reserved. On SQLite and on Postgres.
//!
//! The kills follow a seeded generator: the seed is printed, and `RETAKE_CHAOS_SEED=<seed>`
//! replays the same kill schedule (which worker, after how long).

use crate::harness::{TestApp, comparable, find_segment, fresh_postgres, request};
use retake::retries;
use retake_domain::contract::{AttemptRecord, RetryResult};
use retake_domain::seed::attempt_seeds;
use serde_json::json;
use std::time::{Duration, SystemTime};

/// Retries in flight. 20 keeps a run within about a minute on a 2-core machine that also runs
/// the dev server and the workers: a store activity in flight on a killed worker is retried
/// only after its 30 s start-to-close timeout (store activities do not heartbeat), so a run
/// lasts at least that long whenever a kill lands on one, and more retries add little but CPU.
const RETRIES: usize = 20;

/// Worker processes alive at any time.
const WORKERS: usize = 3;

/// Simulated GPU time per attempt: long enough that most kills land mid-generation.
const GPU_MS: u64 = 600;

/// Kills at most; after that the retries finish in peace (bounds the run time).
const MAX_KILLS: u32 = 15;

/// The original seed of every request (`harness::request`) and the default `seed_bits`.
const ORIGINAL_SEED: u64 = 1234;
const SEED_BITS: u32 = 53;

/// SplitMix64 (Steele, Lea and Flood 2014): a tiny seeded generator, enough to pick victims and
/// pauses reproducibly.
struct Chaos(u64);

impl Chaos {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for a test.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `RETAKE_CHAOS_SEED`, or one from the clock.
fn chaos_seed() -> u64 {
    match std::env::var("RETAKE_CHAOS_SEED") {
        Ok(seed) => seed
            .parse()
            .unwrap_or_else(|_| panic!("RETAKE_CHAOS_SEED={seed:?} is not a u64")),
        Err(_) => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    }
}

/// Start the retries on a fleet of worker processes, kill random workers at random moments
/// (each replaced at once) until every retry has finished, and check what was recorded.
async fn retries_survive_random_kills(app: &TestApp, store: &str) {
    let seed = chaos_seed();
    eprintln!("chaos on {store}: seed {seed} (RETAKE_CHAOS_SEED={seed} replays the kills)");
    let mut chaos = Chaos(seed);
    let mut workers: Vec<_> = (0..WORKERS).map(|_| app.spawn_worker(GPU_MS, 0)).collect();
    let project = format!("{}-chaos", app.tag);
    app.store
        .set_limit(&project, Some(1_000_000_000))
        .await
        .unwrap();
    let policy = json!({"enabled": true, "est_gpu_ms_per_attempt": 5000});
    let mut runs = Vec::new();
    for i in 0..RETRIES {
        let (segment, predicted) =
            find_segment(&app.tag, &format!("chaos{i}"), &policy, |a| !a.is_empty());
        let handle = app
            .start(request(&segment, &project, Some(policy.clone())))
            .await;
        runs.push((segment, predicted, handle));
    }

    let all_done = async {
        let mut results = Vec::new();
        for (segment, _, handle) in &runs {
            let result = retries::result(handle)
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: segment {segment} failed: {e:#}"));
            results.push(result);
        }
        results
    };
    tokio::pin!(all_done);
    // A run takes 35-40 s alone on 2 cores; the bound leaves room for a loaded machine.
    let deadline = tokio::time::sleep(Duration::from_secs(150));
    tokio::pin!(deadline);
    let started = tokio::time::Instant::now();
    let mut kills = 0;
    let results: Vec<RetryResult> = loop {
        // 0.3–1.2 s: at least three kills land while the retries run even when they finish in
        // a few seconds (kills that hit no store step cost little time; 0.5–2 s left a
        // 3.6 s run with 2 kills).
        let pause = Duration::from_millis(300 + chaos.below(900));
        tokio::select! {
            results = &mut all_done => break results,
            () = tokio::time::sleep(pause), if kills < MAX_KILLS => {
                let victim = chaos.below(WORKERS as u64) as usize;
                workers[victim].kill().await.expect("SIGKILL the worker");
                workers[victim] = app.spawn_worker(GPU_MS, 0);
                kills += 1;
            }
            () = &mut deadline => panic!(
                "seed {seed}: the retries did not finish within 150 s ({kills} kills)"
            ),
        }
    };
    eprintln!(
        "chaos on {store}: {RETRIES} retries finished in {:.1} s with {kills} kills",
        started.elapsed().as_secs_f64()
    );
    assert!(
        kills >= 3,
        "seed {seed}: the workers must really have been killed"
    );

    let mut spent = 0;
    for ((segment, predicted, _), result) in runs.iter().zip(&results) {
        let rows: Vec<AttemptRecord> = app
            .store
            .attempts(segment)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.record)
            .collect();
        assert_eq!(
            rows, result.attempts,
            "seed {seed}: segment {segment}: the store holds exactly the result's attempts"
        );
        let seeds: Vec<u64> = result.attempts.iter().map(|a| a.seed).collect();
        let derived = attempt_seeds(segment, ORIGINAL_SEED, seeds.len() as u32, SEED_BITS);
        assert_eq!(
            seeds, derived,
            "seed {seed}: segment {segment}: derived seeds"
        );
        assert_eq!(
            comparable(&result.attempts),
            comparable(predicted),
            "seed {seed}: segment {segment}: the attempts of an uninterrupted run"
        );
        let attempt_ms: u64 = result.attempts.iter().map(|a| a.gpu_ms).sum();
        assert_eq!(result.gpu_ms_total, attempt_ms, "seed {seed}: {segment}");
        spent += attempt_ms;
    }
    let b = app.store.budget(&project).await.unwrap().unwrap();
    assert_eq!(
        (b.reserved_ms, b.spent_ms),
        (0, spent),
        "seed {seed}: spent must be the attempts' GPU time, charged once, nothing reserved"
    );
    let far_future = SystemTime::now() + Duration::from_secs(86_400);
    let held = app.store.held_before(far_future).await.unwrap();
    assert!(held.is_empty(), "seed {seed}: reservations left: {held:?}");
}

#[tokio::test]
async fn twenty_retries_survive_random_worker_kills_on_sqlite() {
    let app = TestApp::builder().without_worker().spawn().await;
    retries_survive_random_kills(&app, "SQLite").await;
}

#[tokio::test]
async fn twenty_retries_survive_random_worker_kills_on_postgres() {
    let Some(db) = fresh_postgres().await else {
        return;
    };
    let app = TestApp::builder()
        .without_worker()
        .database(db.url.clone())
        .spawn()
        .await;
    retries_survive_random_kills(&app, "Postgres").await;
}
