//! The budget ledger: limits, idempotency, concurrency.

use super::*;

async fn a_reservation_within_the_limit_is_granted_and_held(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    let answer = store.reserve(&key("r1", 1), "p1", 400).await.unwrap();
    assert_eq!(answer, Reservation::Granted { gpu_ms: 400 });
    let b = budget(&store, "p1").await;
    assert_eq!(
        (b.limit_ms, b.reserved_ms, b.spent_ms),
        (Some(1000), 400, 0)
    );
}

/// A refusal is not kept for the attempt: a call for its key is made again only when the
/// workflow lacks the first answer (or gives the number to a later round), so it is checked
/// against the limit again (see `Stored::answers_again`).
async fn a_reservation_over_the_limit_is_refused_and_asking_again_checks_the_limit_again(
    db: &TestDb,
) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    store.reserve(&key("r1", 1), "p1", 700).await.unwrap();
    let refused = Reservation::Refused {
        limit_ms: 1000,
        committed_ms: 700,
        requested_ms: 400,
    };
    assert_eq!(
        store.reserve(&key("r1", 2), "p1", 400).await.unwrap(),
        refused
    );
    // Asked again with nothing changed: the same refusal, nothing held.
    assert_eq!(
        store.reserve(&key("r1", 2), "p1", 400).await.unwrap(),
        refused
    );
    assert_eq!(budget(&store, "p1").await.reserved_ms, 700);
    // Releasing or settling a refusal changes nothing.
    store.release(&key("r1", 2)).await.unwrap();
    store.settle(&key("r1", 2), 400).await.unwrap();
    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (700, 0));
    // Once the budget allows it, the attempt is granted and held once.
    store.set_limit("p1", Some(5000)).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            store.reserve(&key("r1", 2), "p1", 400).await.unwrap(),
            Reservation::Granted { gpu_ms: 400 }
        );
    }
    assert_eq!(budget(&store, "p1").await.reserved_ms, 1100);
}

async fn a_project_without_a_budget_has_no_limit_but_its_gpu_time_is_tracked(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.budget("p9").await.unwrap(), None);
    let answer = store
        .reserve(&key("r1", 1), "p9", u64::from(u32::MAX))
        .await
        .unwrap();
    assert_eq!(
        answer,
        Reservation::Granted {
            gpu_ms: u64::from(u32::MAX)
        }
    );
    store.settle(&key("r1", 1), 1234).await.unwrap();
    let expected = Budget {
        project_id: "p9".to_owned(),
        limit_ms: None,
        reserved_ms: 0,
        spent_ms: 1234,
    };
    assert_eq!(budget(&store, "p9").await, expected);
}

async fn a_second_reservation_for_the_same_attempt_changes_nothing(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    let first = store.reserve(&key("r1", 1), "p1", 300).await.unwrap();
    // A different amount on the retry does not matter: the first answer stands.
    let second = store.reserve(&key("r1", 1), "p1", 500).await.unwrap();
    assert_eq!(first, Reservation::Granted { gpu_ms: 300 });
    assert_eq!(second, first);
    assert_eq!(budget(&store, "p1").await.reserved_ms, 300);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM budget_reservations").await,
        1
    );
}

async fn settling_moves_the_reservation_to_spent_once_even_if_called_twice(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    store.reserve(&key("r1", 1), "p1", 500).await.unwrap();
    store.reserve(&key("r1", 2), "p1", 200).await.unwrap();
    store.settle(&key("r1", 1), 420).await.unwrap();
    store.settle(&key("r1", 1), 420).await.unwrap();
    store.settle(&key("r1", 1), 999).await.unwrap();
    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (200, 420));
    // A settled reservation cannot be released any more.
    store.release(&key("r1", 1)).await.unwrap();
    assert_eq!(budget(&store, "p1").await, b);
    let status = store
        .text("SELECT status FROM budget_reservations WHERE attempt = 1")
        .await;
    assert_eq!(status, "settled");
}

async fn releasing_gives_the_reservation_back_once(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    store.reserve(&key("r1", 1), "p1", 600).await.unwrap();
    store.reserve(&key("r1", 2), "p1", 300).await.unwrap();
    store.release(&key("r1", 1)).await.unwrap();
    store.release(&key("r1", 1)).await.unwrap();
    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (300, 0));
    // The released time can be reserved again.
    let answer = store.reserve(&key("r1", 3), "p1", 700).await.unwrap();
    assert_eq!(answer, Reservation::Granted { gpu_ms: 700 });
}

async fn settling_or_releasing_an_attempt_without_a_reservation_does_nothing(db: &TestDb) {
    let store = db.open().await;
    store.settle(&key("r1", 1), 100).await.unwrap();
    store.release(&key("r1", 2)).await.unwrap();
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM budget_reservations").await,
        0
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM project_budgets").await,
        0
    );
}

async fn setting_a_limit_keeps_reserved_and_spent_time(db: &TestDb) {
    let store = db.open().await;
    store.reserve(&key("r1", 1), "p1", 300).await.unwrap();
    store.reserve(&key("r1", 2), "p1", 200).await.unwrap();
    store.settle(&key("r1", 2), 250).await.unwrap();
    let b = store.set_limit("p1", Some(600)).await.unwrap();
    let expected = Budget {
        project_id: "p1".to_owned(),
        limit_ms: Some(600),
        reserved_ms: 300,
        spent_ms: 250,
    };
    assert_eq!(b, expected);
    let refused = store.reserve(&key("r1", 3), "p1", 100).await.unwrap();
    assert_eq!(
        refused,
        Reservation::Refused {
            limit_ms: 600,
            committed_ms: 550,
            requested_ms: 100
        }
    );
    let b = store.set_limit("p1", None).await.unwrap();
    assert_eq!((b.limit_ms, b.reserved_ms, b.spent_ms), (None, 300, 250));
}

async fn forty_concurrent_reservations_from_two_stores_never_exceed_the_limit(db: &TestDb) {
    let first = db.open().await;
    // A second pool on the same database stands in for another worker process.
    let second = db.open().await;
    first.set_limit("p1", Some(1000)).await.unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (store, done) = (second.clone(), done.clone());
        tokio::spawn(async move {
            let mut max = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let b = store.budget("p1").await.unwrap().unwrap();
                max = max.max(b.reserved_ms + b.spent_ms);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            max
        })
    };
    let tasks: Vec<_> = (1..=40u32)
        .map(|i| {
            let store = if i % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move { store.reserve(&key("r1", i), "p1", 100).await })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Reservation::Granted { gpu_ms } => {
                assert_eq!(gpu_ms, 100);
                granted += 1;
            }
            Reservation::Refused {
                limit_ms,
                committed_ms,
                requested_ms,
            } => {
                assert_eq!((limit_ms, requested_ms), (1000, 100));
                assert!(committed_ms + requested_ms > limit_ms && committed_ms <= limit_ms);
            }
        }
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(watcher.await.unwrap() <= 1000);
    assert_eq!(granted, 10);
    let b = budget(&first, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (1000, 0));
    let held = count(
        &first,
        "SELECT COUNT(*) FROM budget_reservations WHERE status = 'reserved'",
    )
    .await;
    assert_eq!(held, 10);
    assert_eq!(
        count(&first, "SELECT COUNT(*) FROM budget_reservations").await,
        40
    );
}

async fn recording_a_runs_outcome_releases_a_reservation_it_abandoned(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    // Attempt 1 of run r1 reserved and was never settled (e.g. its workflow was cut short);
    // another run's reservation must stay.
    store.reserve(&key("r1", 1), "p1", 300).await.unwrap();
    store.reserve(&key("r2", 1), "p1", 200).await.unwrap();

    store
        .record_outcome(&outcome("r1", Outcome::Escalated, None, vec![]))
        .await
        .unwrap();

    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (200, 0));
    // Releasing without use, again, changes nothing.
    store.release(&key("r1", 1)).await.unwrap();
    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (200, 0));
}

/// The report: a worker killed 50 ms after creators' `retry_with` decisions left attempts
/// recorded with their GPU time whose reservations were `released`, never settled, and `spent`
/// short of the recorded attempts' sum. The store calls as the next worker made them, replaying
/// the run and running again the local store steps whose results the history lacked: the
/// outcome of review round 1 (attempts 1 and 2) is recorded again after round 2 reserved
/// attempt 3, which releases that reservation; attempt 3's reserve, run again, is answered
/// from its row; the attempt generates, and is settled and recorded in one step.
async fn an_attempt_whose_reservation_a_replayed_outcome_released_is_still_billed(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(10_000)).await.unwrap();
    let round_one = vec![record(1, 0.1), record(2, 0.2)];
    for rec in &round_one {
        store
            .reserve(&key("r1", rec.attempt), "p1", 500)
            .await
            .unwrap();
        store
            .record_settled(&record_attempt("r1", rec.clone()), rec.gpu_ms)
            .await
            .unwrap();
    }
    let escalated = || outcome("r1", Outcome::Escalated, None, round_one.clone());
    store.record_outcome(&escalated()).await.unwrap();
    // Round 2, on the worker that is then killed: attempt 3 reserves.
    store.reserve(&key("r1", 3), "p1", 500).await.unwrap();
    // The next worker: round 1's outcome again, attempt 3's reserve again, then attempt 3.
    store.record_outcome(&escalated()).await.unwrap();
    let again = store.reserve(&key("r1", 3), "p1", 500).await.unwrap();
    assert_eq!(again, Reservation::Granted { gpu_ms: 500 });
    let third = record(3, 0.3);
    store
        .record_settled(&record_attempt("r1", third.clone()), third.gpu_ms)
        .await
        .unwrap();

    let recorded: u64 = store
        .attempts("5")
        .await
        .unwrap()
        .iter()
        .map(|a| a.record.gpu_ms)
        .sum();
    assert_eq!(recorded, 100 + 200 + 300);
    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (0, recorded));
    // Settling or recording again bills nothing twice.
    store.settle(&key("r1", 3), third.gpu_ms).await.unwrap();
    store.record_outcome(&escalated()).await.unwrap();
    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (0, recorded));
}

/// Issue 28.5, the hold: the same replay as above, and attempt 3's reserve, run again, holds its
/// time again, so the budget cap counts the attempt while it runs (it answered `Granted` from
/// the released row before, holding nothing); and when the project's time went elsewhere in
/// between, it is refused.
async fn a_reserve_run_again_after_its_reservation_was_released_holds_the_time_again(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    store.reserve(&key("r1", 3), "p1", 500).await.unwrap();
    store.release(&key("r1", 3)).await.unwrap();
    let again = store.reserve(&key("r1", 3), "p1", 500).await.unwrap();
    assert_eq!(again, Reservation::Granted { gpu_ms: 500 });
    assert_eq!(budget(&store, "p1").await.reserved_ms, 500);
    // Asked again while held: the same answer, held once.
    let same = store.reserve(&key("r1", 3), "p1", 500).await.unwrap();
    assert_eq!((same, budget(&store, "p1").await.reserved_ms), (again, 500));

    store.release(&key("r1", 3)).await.unwrap();
    store.reserve(&key("r2", 1), "p1", 800).await.unwrap();
    let refused = store.reserve(&key("r1", 3), "p1", 500).await.unwrap();
    assert_eq!(
        refused,
        Reservation::Refused {
            limit_ms: 1000,
            committed_ms: 800,
            requested_ms: 500
        }
    );
    assert_eq!(budget(&store, "p1").await.reserved_ms, 800);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM budget_reservations").await,
        2
    );
}

/// Numbering goes on above the highest recorded attempt, so a number the budget refused in one
/// review round is asked for again in the next: after an admin raised the limit, the new round's
/// attempt is granted, not refused with the old round's answer.
async fn a_number_refused_in_one_round_is_checked_against_the_limit_again_in_the_next(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    store.reserve(&key("r1", 1), "p1", 900).await.unwrap();
    store.settle(&key("r1", 1), 900).await.unwrap();
    let refused = store.reserve(&key("r1", 2), "p1", 500).await.unwrap();
    assert!(
        matches!(refused, Reservation::Refused { .. }),
        "{refused:?}"
    );
    store.set_limit("p1", Some(2000)).await.unwrap();
    let granted = store.reserve(&key("r1", 2), "p1", 500).await.unwrap();
    assert_eq!(granted, Reservation::Granted { gpu_ms: 500 });
    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (500, 900));
    store.settle(&key("r1", 2), 450).await.unwrap();
    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (0, 1350));
}

/// Whatever released an attempt's hold before its settle (the run's recorded outcome, the
/// sweeper), an outcome that lists the attempt bills the GPU time it recorded, once; an
/// attempt that used nothing stays released.
async fn an_outcome_bills_its_attempts_whose_reservations_were_not_settled(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(10_000)).await.unwrap();
    for k in 1..=3 {
        store.reserve(&key("r1", k), "p1", 500).await.unwrap();
    }
    // Attempt 1 still held, attempt 2 released; attempt 3 used nothing.
    store.release(&key("r1", 2)).await.unwrap();
    let mut nothing = record(3, 0.3);
    nothing.gpu_ms = 0;
    let attempts = vec![record(1, 0.1), record(2, 0.2), nothing];
    let escalated = outcome("r1", Outcome::Escalated, None, attempts);
    store.record_outcome(&escalated).await.unwrap();
    store.record_outcome(&escalated).await.unwrap();

    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (0, 100 + 200));
    assert_eq!(
        store
            .text("SELECT status FROM budget_reservations WHERE attempt = 3")
            .await,
        "released"
    );
}

/// Twenty calls for one attempt key at once, from two stores, and then ten settles at once.
async fn concurrent_calls_for_the_same_attempt_reserve_and_settle_once(db: &TestDb) {
    let first = db.open().await;
    let second = db.open().await;
    first.set_limit("p1", Some(1000)).await.unwrap();
    let reserves: Vec<_> = (0..20)
        .map(|i| {
            let store = if i % 2 == 0 { &first } else { &second }.clone();
            tokio::spawn(async move { store.reserve(&key("r1", 1), "p1", 300).await })
        })
        .collect();
    for task in reserves {
        let answer = task.await.unwrap().unwrap();
        assert_eq!(answer, Reservation::Granted { gpu_ms: 300 });
    }
    assert_eq!(budget(&first, "p1").await.reserved_ms, 300);
    assert_eq!(
        count(&first, "SELECT COUNT(*) FROM budget_reservations").await,
        1
    );
    let settles: Vec<_> = (0..10)
        .map(|i| {
            let store = if i % 2 == 0 { &first } else { &second }.clone();
            tokio::spawn(async move { store.settle(&key("r1", 1), 250).await })
        })
        .collect();
    for task in settles {
        task.await.unwrap().unwrap();
    }
    let b = budget(&first, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (0, 250));
}

/// A run's outcome (which bills its attempts and releases what the run still holds) racing the
/// settle of its attempt: the reservation is taken off the project's reserved time and its GPU
/// time billed exactly once, either way.
async fn an_outcome_racing_a_settle_takes_the_reservation_off_once(db: &TestDb) {
    let first = db.open().await;
    let second = db.open().await;
    let runs: Vec<String> = (1..=20).map(|i| format!("r{i}")).collect();
    for run in &runs {
        first.reserve(&key(run, 1), "p1", 100).await.unwrap();
    }
    let mut tasks = Vec::new();
    for run in &runs {
        let (store, settled_run) = (first.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            store.settle(&key(&settled_run, 1), 60).await
        }));
        let (store, run) = (second.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            store
                .record_outcome(&outcome(&run, Outcome::Passed, Some(1), vec![used_60()]))
                .await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let settled = count(
        &first,
        "SELECT COUNT(*) FROM budget_reservations WHERE status = 'settled'",
    )
    .await;
    let released = count(
        &first,
        "SELECT COUNT(*) FROM budget_reservations WHERE status = 'released'",
    )
    .await;
    assert_eq!((settled, released), (20, 0));
    let b = budget(&first, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (0, 60 * 20));
}

/// Attempt 1, passed, having used the 60 ms its settle says.
fn used_60() -> AttemptRecord {
    let mut rec = record(1, 0.9);
    rec.gpu_ms = 60;
    rec
}

/// `record_settled`: the settlement and the record in one transaction, both or neither.
async fn recording_settled_settles_and_records_together_once_or_not_at_all(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    store.reserve(&key("r1", 1), "p1", 300).await.unwrap();
    store.reserve(&key("r1", 2), "p1", 300).await.unwrap();
    let first = record_attempt("r1", record(1, 0.5));
    store.record_settled(&first, 250).await.unwrap();
    store.record_settled(&first, 250).await.unwrap();
    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (300, 250), "settled once");
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM retry_attempts").await,
        1,
        "recorded once"
    );

    // A record the store refuses (its attempt is not the key's) settles nothing either.
    let mut wrong = record_attempt("r1", record(3, 0.5));
    wrong.key = key("r1", 2);
    assert!(matches!(
        store.record_settled(&wrong, 200).await,
        Err(StoreError::Invalid(_))
    ));
    let b = budget(&store, "p1").await;
    assert_eq!(
        (b.reserved_ms, b.spent_ms),
        (300, 250),
        "attempt 2 still held"
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM retry_attempts").await,
        1
    );
}

store_tests! {
    #[tokio::test] recording_settled_settles_and_records_together_once_or_not_at_all,
    #[tokio::test] a_reservation_within_the_limit_is_granted_and_held,
    #[tokio::test] a_reservation_over_the_limit_is_refused_and_asking_again_checks_the_limit_again,
    #[tokio::test] a_project_without_a_budget_has_no_limit_but_its_gpu_time_is_tracked,
    #[tokio::test] a_second_reservation_for_the_same_attempt_changes_nothing,
    #[tokio::test] settling_moves_the_reservation_to_spent_once_even_if_called_twice,
    #[tokio::test] releasing_gives_the_reservation_back_once,
    #[tokio::test] settling_or_releasing_an_attempt_without_a_reservation_does_nothing,
    #[tokio::test] setting_a_limit_keeps_reserved_and_spent_time,
    #[tokio::test] recording_a_runs_outcome_releases_a_reservation_it_abandoned,
    #[tokio::test] an_attempt_whose_reservation_a_replayed_outcome_released_is_still_billed,
    #[tokio::test] an_outcome_bills_its_attempts_whose_reservations_were_not_settled,
    #[tokio::test] a_reserve_run_again_after_its_reservation_was_released_holds_the_time_again,
    #[tokio::test] a_number_refused_in_one_round_is_checked_against_the_limit_again_in_the_next,
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    forty_concurrent_reservations_from_two_stores_never_exceed_the_limit,
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    concurrent_calls_for_the_same_attempt_reserve_and_settle_once,
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    an_outcome_racing_a_settle_takes_the_reservation_off_once,
}
