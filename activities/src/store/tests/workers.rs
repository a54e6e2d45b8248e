//! The worker registry: placement chooses a live, healthy worker other than those to avoid.

use super::*;
use crate::ports::{WORKER_ALIVE_MS, WORKER_FORGET_MS, WorkerRow};

fn worker(id: &str, seen_at_ms: u64, cooling_until_ms: u64) -> WorkerRow {
    WorkerRow {
        worker_id: id.to_owned(),
        task_queue: "q".to_owned(),
        generate_queue: format!("q/generate/{id}"),
        seen_at_ms,
        cooling_until_ms,
    }
}

/// The ids of the workers the registry lists on queue `q`.
async fn ids_on_q(store: &AnyStore) -> Vec<String> {
    store
        .workers("q")
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.worker_id)
        .collect()
}

async fn placement_skips_dead_cooling_and_avoided_workers_and_spreads_the_rest(db: &TestDb) {
    let store = db.open().await;
    let now = 1_000_000_000;
    store.announce(&worker("a", now, 0)).await.unwrap();
    store.announce(&worker("b", now, 0)).await.unwrap();
    store
        .announce(&worker("dead", now - WORKER_ALIVE_MS - 1, 0))
        .await
        .unwrap();
    store
        .announce(&worker("cooling", now, now + 60_000))
        .await
        .unwrap();
    let mut other = worker("elsewhere", now, 0);
    other.task_queue = "other".to_owned();
    store.announce(&other).await.unwrap();

    let first = store.place("q", &[], None, now).await.unwrap().unwrap();
    let second = store.place("q", &[], None, now + 1).await.unwrap().unwrap();
    let mut both = [first.worker_id.clone(), second.worker_id.clone()];
    both.sort();
    assert_eq!(both, ["a", "b"], "the least recently placed on goes first");
    assert_eq!(
        first.generate_queue,
        format!("q/generate/{}", first.worker_id)
    );

    let avoided = store
        .place("q", &["a".to_owned()], None, now + 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(avoided.worker_id, "b");
    let preferred = store.place("q", &[], Some("a"), now + 3).await.unwrap();
    assert_eq!(preferred.unwrap().worker_id, "a");
    let none = store
        .place("q", &["a".to_owned(), "b".to_owned()], None, now + 4)
        .await
        .unwrap();
    assert_eq!(
        none, None,
        "dead, cooling and other queues' workers never qualify"
    );

    // Announcing again refreshes: the cooling worker's cool-down ends.
    store
        .announce(&worker("cooling", now + 5, 0))
        .await
        .unwrap();
    let back = store
        .place("q", &["a".to_owned(), "b".to_owned()], None, now + 6)
        .await
        .unwrap();
    assert_eq!(back.unwrap().worker_id, "cooling");
    let ids = ids_on_q(&store).await;
    assert_eq!(ids, ["a", "b", "cooling", "dead"]);
}

async fn workers_not_seen_for_a_day_are_forgotten_by_the_next_announcement(db: &TestDb) {
    let store = db.open().await;
    let now = 10_000_000_000;
    store
        .announce(&worker("gone", now - WORKER_FORGET_MS - 1, 0))
        .await
        .unwrap();
    store
        .announce(&worker("quiet", now - WORKER_FORGET_MS + 1, 0))
        .await
        .unwrap();
    store.announce(&worker("live", now, 0)).await.unwrap();
    let ids = ids_on_q(&store).await;
    assert_eq!(ids, ["live", "quiet"]);
}

store_tests! {
    #[tokio::test] placement_skips_dead_cooling_and_avoided_workers_and_spreads_the_rest,
    #[tokio::test] workers_not_seen_for_a_day_are_forgotten_by_the_next_announcement,
}
