//! [`PolicyStore`] on SQL, the same statements on both backends: `retry_policies` holds each
//! scene type's policy as JSON text.

use super::sql::stmt;
use super::{Backend, SqlxStore, from_json, map_sqlx, now, to_json};
use crate::ports::{PolicyStore, StoreError};
use async_trait::async_trait;
use serde_json::Value;

const SELECT_POLICY: &str = "SELECT policy FROM retry_policies WHERE scene_type = $1";

const UPSERT_POLICY: &str = "INSERT INTO retry_policies (scene_type, policy, updated_at) \
     VALUES ($1, $2, $3) ON CONFLICT (scene_type) DO UPDATE SET policy = excluded.policy, \
     updated_at = excluded.updated_at";

#[async_trait]
impl<DB: Backend> PolicyStore for SqlxStore<DB> {
    async fn policy(&self, scene_type: &str) -> Result<Option<Value>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        let row = DB::fetch_optional(&mut conn, stmt(SELECT_POLICY).bind(scene_type)).await?;
        row.map(|row| from_json(&DB::get::<String>(&row, "policy")?, "retry_policies.policy"))
            .transpose()
    }

    async fn set_policy(&self, scene_type: &str, policy: &Value) -> Result<(), StoreError> {
        let upsert = stmt(UPSERT_POLICY)
            .bind(scene_type)
            .bind(to_json(policy)?)
            .bind(now());
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        DB::execute(&mut conn, upsert).await?;
        Ok(())
    }
}
