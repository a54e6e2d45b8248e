//! [`WorkerRegistry`] on SQL, the same statements on both backends: `workers` holds one row per
//! worker process, refreshed while it runs. Placement reads the candidates and marks the chosen
//! one; two placements racing may choose the same worker, which only spreads re-runs less evenly.

use super::sql::stmt;
use super::{Backend, SqlxStore, map_sqlx, to_i64, to_u64};
use crate::ports::{StoreError, WORKER_ALIVE_MS, WORKER_FORGET_MS, WorkerRegistry, WorkerRow};
use async_trait::async_trait;

const UPSERT_WORKER: &str = "INSERT INTO workers (worker_id, task_queue, generate_queue, \
     seen_at_ms, cooling_until_ms, placed_at_ms) VALUES ($1, $2, $3, $4, $5, 0) \
     ON CONFLICT (worker_id) DO UPDATE SET task_queue = excluded.task_queue, \
     generate_queue = excluded.generate_queue, seen_at_ms = excluded.seen_at_ms, \
     cooling_until_ms = excluded.cooling_until_ms";

/// Alive and not cooling down at `$2`, least recently placed on first.
const CANDIDATES: &str = "SELECT worker_id, task_queue, generate_queue, seen_at_ms, \
     cooling_until_ms FROM workers WHERE task_queue = $1 AND seen_at_ms >= $2 \
     AND cooling_until_ms <= $3 ORDER BY placed_at_ms, worker_id";

const FORGET: &str = "DELETE FROM workers WHERE seen_at_ms < $1";

const MARK_PLACED: &str = "UPDATE workers SET placed_at_ms = $1 WHERE worker_id = $2";

const ALL: &str = "SELECT worker_id, task_queue, generate_queue, seen_at_ms, cooling_until_ms \
     FROM workers WHERE task_queue = $1 ORDER BY worker_id";

fn row<DB: Backend>(row: &DB::Row) -> Result<WorkerRow, StoreError> {
    Ok(WorkerRow {
        worker_id: DB::get(row, "worker_id")?,
        task_queue: DB::get(row, "task_queue")?,
        generate_queue: DB::get(row, "generate_queue")?,
        seen_at_ms: to_u64(DB::get(row, "seen_at_ms")?, "workers.seen_at_ms")?,
        cooling_until_ms: to_u64(
            DB::get(row, "cooling_until_ms")?,
            "workers.cooling_until_ms",
        )?,
    })
}

#[async_trait]
impl<DB: Backend> WorkerRegistry for SqlxStore<DB> {
    async fn announce(&self, w: &WorkerRow) -> Result<(), StoreError> {
        let upsert = stmt(UPSERT_WORKER)
            .bind(w.worker_id.as_str())
            .bind(w.task_queue.as_str())
            .bind(w.generate_queue.as_str())
            .bind(to_i64(w.seen_at_ms, "seen_at_ms")?)
            .bind(to_i64(w.cooling_until_ms, "cooling_until_ms")?);
        let forget_before = w.seen_at_ms.saturating_sub(WORKER_FORGET_MS);
        let forget = stmt(FORGET).bind(to_i64(forget_before, "seen_at_ms")?);
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        DB::execute(&mut conn, upsert).await?;
        DB::execute(&mut conn, forget).await?;
        Ok(())
    }

    async fn place(
        &self,
        task_queue: &str,
        avoid: &[String],
        prefer: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<WorkerRow>, StoreError> {
        let now = to_i64(now_ms, "now_ms")?;
        let alive_since = now.saturating_sub(to_i64(WORKER_ALIVE_MS, "alive")?);
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        let rows = DB::fetch_all(
            &mut conn,
            stmt(CANDIDATES)
                .bind(task_queue)
                .bind(alive_since)
                .bind(now),
        )
        .await?;
        let candidates = rows
            .iter()
            .map(row::<DB>)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|w| !avoid.contains(&w.worker_id));
        let mut chosen = None;
        for w in candidates {
            if prefer == Some(w.worker_id.as_str()) {
                chosen = Some(w);
                break;
            }
            chosen.get_or_insert(w);
        }
        if let Some(w) = &chosen {
            let mark = stmt(MARK_PLACED).bind(now).bind(w.worker_id.as_str());
            DB::execute(&mut conn, mark).await?;
        }
        Ok(chosen)
    }

    async fn workers(&self, task_queue: &str) -> Result<Vec<WorkerRow>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        DB::fetch_all(&mut conn, stmt(ALL).bind(task_queue))
            .await?
            .iter()
            .map(row::<DB>)
            .collect()
    }
}
