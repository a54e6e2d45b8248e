//! Raising an attempt's reservation while it generates: the budget as a hard cap.

use super::*;

async fn raising_a_held_reservation_within_the_limit_holds_the_new_total(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    store.reserve(&key("r1", 1), "p1", 200).await.unwrap();
    store.reserve(&key("r1", 2), "p1", 100).await.unwrap();

    let answer = store.raise(&key("r1", 1), "p1", 500).await.unwrap();

    assert_eq!(answer, Reservation::Granted { gpu_ms: 500 });
    assert_eq!(budget(&store, "p1").await.reserved_ms, 600);
    let held = store
        .count("SELECT reserved_ms FROM budget_reservations WHERE attempt = 1")
        .await;
    assert_eq!(held, 500);
    // A total, not a delta: the same call again changes nothing.
    let again = store.raise(&key("r1", 1), "p1", 500).await.unwrap();
    assert_eq!(again, Reservation::Granted { gpu_ms: 500 });
    assert_eq!(budget(&store, "p1").await.reserved_ms, 600);
}

async fn raising_to_less_than_is_held_answers_the_held_amount_and_changes_nothing(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    store.reserve(&key("r1", 1), "p1", 400).await.unwrap();

    let lower = store.raise(&key("r1", 1), "p1", 150).await.unwrap();
    let equal = store.raise(&key("r1", 1), "p1", 400).await.unwrap();

    assert_eq!(lower, Reservation::Granted { gpu_ms: 400 });
    assert_eq!(equal, Reservation::Granted { gpu_ms: 400 });
    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (400, 0));
}

async fn a_raise_past_the_limit_is_refused_and_changes_nothing(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    store.reserve(&key("r1", 1), "p1", 300).await.unwrap();
    store.reserve(&key("r2", 1), "p1", 200).await.unwrap();
    store.settle(&key("r2", 1), 250).await.unwrap();
    // Held 300 of reserved 300 + spent 250: everything else committed 250, so 750 fits exactly
    // and 751 does not.
    let refused = store.raise(&key("r1", 1), "p1", 751).await.unwrap();
    assert_eq!(
        refused,
        Reservation::Refused {
            limit_ms: 1000,
            committed_ms: 250,
            requested_ms: 751
        }
    );
    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (300, 250));
    assert_eq!(
        store
            .text("SELECT status FROM budget_reservations WHERE run_id = 'r1'")
            .await,
        "reserved"
    );
    assert_eq!(
        store
            .count("SELECT reserved_ms FROM budget_reservations WHERE run_id = 'r1'")
            .await,
        300
    );
    // A refused raise is not a refused reservation.
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM budget_reservations WHERE status = 'refused'"
        )
        .await,
        0
    );
    let granted = store.raise(&key("r1", 1), "p1", 750).await.unwrap();
    assert_eq!(granted, Reservation::Granted { gpu_ms: 750 });
    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (750, 250));
}

async fn a_project_without_a_limit_grants_any_raise(db: &TestDb) {
    let store = db.open().await;
    store.reserve(&key("r1", 1), "p1", 100).await.unwrap();
    let answer = store
        .raise(&key("r1", 1), "p1", u64::from(u32::MAX))
        .await
        .unwrap();
    assert_eq!(
        answer,
        Reservation::Granted {
            gpu_ms: u64::from(u32::MAX)
        }
    );
    assert_eq!(budget(&store, "p1").await.reserved_ms, u64::from(u32::MAX));
}

async fn settling_or_releasing_a_raised_reservation_takes_the_raised_amount_off(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    store.reserve(&key("r1", 1), "p1", 100).await.unwrap();
    store.reserve(&key("r1", 2), "p1", 100).await.unwrap();
    store.raise(&key("r1", 1), "p1", 400).await.unwrap();
    store.raise(&key("r1", 2), "p1", 300).await.unwrap();

    store.settle(&key("r1", 1), 380).await.unwrap();
    store.release(&key("r1", 2)).await.unwrap();

    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (0, 380));
    // The idempotent answer of reserve for the key is what it held last.
    let answer = store.reserve(&key("r1", 1), "p1", 100).await.unwrap();
    assert_eq!(answer, Reservation::Granted { gpu_ms: 400 });
}

async fn raising_without_a_held_reservation_is_invalid_and_names_the_attempt(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1000)).await.unwrap();
    store.reserve(&key("settled", 1), "p1", 100).await.unwrap();
    store.settle(&key("settled", 1), 90).await.unwrap();
    store.reserve(&key("released", 1), "p1", 100).await.unwrap();
    store.release(&key("released", 1)).await.unwrap();
    store.reserve(&key("big", 1), "p1", 900).await.unwrap();
    store.reserve(&key("refused", 1), "p1", 500).await.unwrap();
    store.reserve(&key("other", 1), "p2", 100).await.unwrap();
    let before = (budget(&store, "p1").await, budget(&store, "p2").await);

    for (run, project, why) in [
        ("never", "p1", "it has none"),
        ("settled", "p1", "is settled"),
        ("released", "p1", "is released"),
        ("refused", "p1", "is refused"),
        ("other", "p1", "in project \"p2\""),
    ] {
        let err = store
            .raise(&key(run, 1), project, 950)
            .await
            .expect_err(run);
        let StoreError::Invalid(message) = &err else {
            panic!("{run}: {err:?}");
        };
        assert!(
            message.contains(&key(run, 1).idempotency_key()) && message.contains(why),
            "{run}: {message}"
        );
    }
    assert_eq!(
        (budget(&store, "p1").await, budget(&store, "p2").await),
        before
    );
}

/// Three attempts of one project raise their reservations step by step at once, from three
/// stores (three workers): the project's committed time never passes the limit, each attempt
/// holds what it was last granted, and the limit ends up exactly filled.
async fn three_workers_raising_at_once_never_exceed_the_limit(db: &TestDb) {
    let stores = [db.open().await, db.open().await, db.open().await];
    stores[0].set_limit("p1", Some(1000)).await.unwrap();
    for attempt in 1..=3 {
        stores[0]
            .reserve(&key("r1", attempt), "p1", 100)
            .await
            .unwrap();
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (store, done) = (stores[0].clone(), done.clone());
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
    let tasks: Vec<_> = (1..=3u32)
        .map(|attempt| {
            let store = stores[attempt as usize - 1].clone();
            tokio::spawn(async move {
                // Up to 600 each in steps of 50, stopping at the first refusal.
                let mut held = 100;
                for to in (150..=600).step_by(50) {
                    match store.raise(&key("r1", attempt), "p1", to).await.unwrap() {
                        Reservation::Granted { gpu_ms } => {
                            assert_eq!(gpu_ms, to);
                            held = to;
                        }
                        Reservation::Refused {
                            limit_ms,
                            committed_ms,
                            requested_ms,
                        } => {
                            assert_eq!((limit_ms, requested_ms), (1000, to));
                            assert!(committed_ms + requested_ms > limit_ms);
                            break;
                        }
                    }
                }
                held
            })
        })
        .collect();
    let mut total = 0;
    for (attempt, task) in (1..=3).zip(tasks) {
        let held = task.await.unwrap();
        let stored = stores[0]
            .count(&format!(
                "SELECT reserved_ms FROM budget_reservations WHERE attempt = {attempt}"
            ))
            .await;
        assert_eq!(stored, i64::try_from(held).unwrap(), "attempt {attempt}");
        total += held;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(watcher.await.unwrap() <= 1000);
    // 3 × 600 > 1000, so someone was refused, which happens only once fewer than 50 ms are
    // left: with steps of 50 from 300, the limit is filled exactly.
    assert_eq!(total, 1000);
    let b = budget(&stores[0], "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (1000, 0));
}

/// A write whose caller stops waiting (an activity cancelled, a meter whose generation ended
/// first) is dropped wherever it is: before, inside or after its `BEGIN`. None of those points
/// may leave a transaction open on a pooled connection: the next write on it would fail, or
/// worse, run inside a transaction that never commits.
async fn a_write_dropped_at_any_point_leaves_no_transaction_open(db: &TestDb) {
    let store = db.open().await;
    store.set_limit("p1", Some(1_000_000)).await.unwrap();
    store.reserve(&key("r1", 1), "p1", 100).await.unwrap();
    for i in 0..200u64 {
        let cut = Duration::from_micros(i * 25);
        let (held, fresh) = (key("r1", 1), key("r2", 1 + i as u32));
        let _ = tokio::time::timeout(cut, store.raise(&held, "p1", 200 + i)).await;
        let _ = tokio::time::timeout(cut, store.reserve(&fresh, "p1", 1)).await;
    }
    // Every connection of the pool takes the next writes.
    for n in 0..8u32 {
        let held = key("r1", 1);
        let answer = store.raise(&held, "p1", 1_000 + u64::from(n)).await;
        assert_eq!(
            answer.unwrap(),
            Reservation::Granted {
                gpu_ms: 1_000 + u64::from(n)
            }
        );
    }
    // And what they wrote is committed: another connection sees it.
    let other = db.open().await;
    let held = other
        .count("SELECT reserved_ms FROM budget_reservations WHERE run_id = 'r1'")
        .await;
    assert_eq!(held, 1_007);
}

store_tests! {
    #[tokio::test] raising_a_held_reservation_within_the_limit_holds_the_new_total,
    #[tokio::test] raising_to_less_than_is_held_answers_the_held_amount_and_changes_nothing,
    #[tokio::test] a_raise_past_the_limit_is_refused_and_changes_nothing,
    #[tokio::test] a_project_without_a_limit_grants_any_raise,
    #[tokio::test] settling_or_releasing_a_raised_reservation_takes_the_raised_amount_off,
    #[tokio::test] raising_without_a_held_reservation_is_invalid_and_names_the_attempt,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_write_dropped_at_any_point_leaves_no_transaction_open,
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    three_workers_raising_at_once_never_exceed_the_limit,
}
