//! [`AttemptStore`] on Postgres: the statements of the SQLite version (`store::attempts`).

use super::{PgStore, get};
use crate::io::{RecordAttempt, RecordOutcome};
use crate::ports::{AttemptStore, StoreError, StoredAttempt, StoredOutcome};
use crate::store::attempts::{
    INSERT_ATTEMPT, KEEP_EXISTING, MARK_SELECTED, Owner, REPLACE_DATA, SELECT_ATTEMPTS,
    SELECT_OUTCOMES, UPSERT_OUTCOME, attempt_store,
};
use crate::store::{from_json, map_sqlx, now, to_i64, to_json, to_u32, to_u64};
use async_trait::async_trait;
use retake_domain::contract::{AttemptRecord, AttemptStatus, Params};
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgRow};
// One transaction per write, as on SQLite. In `record_outcome` the run's projects are locked first
// (by `release_abandoned`); the `segment_retries` upsert then serializes two calls for the same
// run, so the outcome and the selected mark always come from the same call.
attempt_store!(PgStore, PgConnection, PgRow, begin);
