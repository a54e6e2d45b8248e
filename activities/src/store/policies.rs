//! [`PolicyStore`] on SQL, the same statements on both backends: `retry_policies` holds each
//! scene type's policy as JSON text, `policy_changes` every policy stored and who stored it.

use super::sql::stmt;
use super::{Backend, SqlxStore, from_json, map_sqlx, now, to_json};
use crate::ports::{PolicyChange, PolicyStore, StoreError};
use async_trait::async_trait;
use serde_json::Value;

const SELECT_POLICY: &str = "SELECT policy FROM retry_policies WHERE scene_type = $1";

const UPSERT_POLICY: &str = "INSERT INTO retry_policies (scene_type, policy, updated_at) \
     VALUES ($1, $2, $3) ON CONFLICT (scene_type) DO UPDATE SET policy = excluded.policy, \
     updated_at = excluded.updated_at";

const INSERT_CHANGE: &str = "INSERT INTO policy_changes (scene_type, changed_at, changed_by, \
     policy) VALUES ($1, $2, $3, $4)";

const SELECT_CHANGES: &str = "SELECT changed_at, changed_by, policy FROM policy_changes \
     WHERE scene_type = $1 ORDER BY id DESC LIMIT $2";

#[async_trait]
impl<DB: Backend> PolicyStore for SqlxStore<DB> {
    async fn policy(&self, scene_type: &str) -> Result<Option<Value>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        let row = DB::fetch_optional(&mut conn, stmt(SELECT_POLICY).bind(scene_type)).await?;
        row.map(|row| from_json(&DB::get::<String>(&row, "policy")?, "retry_policies.policy"))
            .transpose()
    }

    async fn set_policy(
        &self,
        scene_type: &str,
        policy: &Value,
        by: &str,
    ) -> Result<(), StoreError> {
        let text = to_json(policy)?;
        let at = now();
        let mut tx = DB::begin_write(&self.pool).await?;
        let upsert = stmt(UPSERT_POLICY)
            .bind(scene_type)
            .bind(text.as_str())
            .bind(at.as_str());
        DB::execute(&mut tx, upsert).await?;
        let change = stmt(INSERT_CHANGE)
            .bind(scene_type)
            .bind(at.as_str())
            .bind(by)
            .bind(text.as_str());
        DB::execute(&mut tx, change).await?;
        tx.commit().await.map_err(map_sqlx)
    }

    async fn policy_changes(
        &self,
        scene_type: &str,
        limit: u32,
    ) -> Result<Vec<PolicyChange>, StoreError> {
        let select = stmt(SELECT_CHANGES).bind(scene_type).bind(i64::from(limit));
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        DB::fetch_all(&mut conn, select)
            .await?
            .iter()
            .map(|row| {
                Ok(PolicyChange {
                    changed_at: DB::get(row, "changed_at")?,
                    by: DB::get(row, "changed_by")?,
                    policy: from_json(&DB::get::<String>(row, "policy")?, "policy_changes.policy")?,
                })
            })
            .collect()
    }
}
