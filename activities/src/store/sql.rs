//! The one place generic over [`sqlx::Database`]: a statement with its arguments ([`Stmt`]) runs
//! on a connection of either backend, and columns read back as the few Rust types the store
//! uses ([`Cell`]). The port modules are written against [`Db`] alone. sqlx's per-driver bounds
//! (an executor for `&mut Connection`, `Encode`/`Decode` for each type) are stated once, on the
//! blanket implementation below: Rust does not carry such bounds along with a trait, so code
//! generic over `sqlx::Database` directly would have to repeat them on every function.

use super::map_sqlx;
use crate::ports::StoreError;
use sqlx::postgres::PgQueryResult;
use sqlx::query::Query;
use sqlx::sqlite::SqliteQueryResult;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};
use std::borrow::Cow;
use std::future::Future;

/// A statement argument: the column types the store binds. A `None` keeps its type, so
/// Postgres sees a typed `NULL` as it did with a bound `Option`.
#[derive(Debug, Clone)]
pub(super) enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    Flag(bool),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_owned()))
    }
}

impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_owned))
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}

impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Flag(v)
    }
}

/// SQL with its arguments in `$n` order, ready to run on either backend.
#[derive(Debug, Clone)]
pub(super) struct Stmt {
    sql: Cow<'static, str>,
    args: Vec<Arg>,
}

/// A statement without arguments yet; add them with [`Stmt::bind`].
pub(super) fn stmt(sql: impl Into<Cow<'static, str>>) -> Stmt {
    Stmt {
        sql: sql.into(),
        args: Vec::new(),
    }
}

impl Stmt {
    /// Bind the next `$n`.
    pub(super) fn bind(mut self, value: impl Into<Arg>) -> Stmt {
        self.args.push(value.into());
        self
    }
}

/// A query result's count of changed rows (an inherent method on each driver's type).
pub(super) trait RowsAffected {
    fn rows(&self) -> u64;
}

impl RowsAffected for SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

/// A column type the store reads. Each reads through the matching [`Db`] method, so a `NULL`
/// in a non-`Option` column fails as sqlx's decoding does (`Invalid`).
pub(super) trait Cell: Sized {
    fn read<DB: Db>(row: &DB::Row, column: &str) -> Result<Self, StoreError>;
}

impl Cell for i64 {
    fn read<DB: Db>(row: &DB::Row, column: &str) -> Result<Self, StoreError> {
        DB::int(row, column)
    }
}

impl Cell for Option<i64> {
    fn read<DB: Db>(row: &DB::Row, column: &str) -> Result<Self, StoreError> {
        DB::opt_int(row, column)
    }
}

impl Cell for String {
    fn read<DB: Db>(row: &DB::Row, column: &str) -> Result<Self, StoreError> {
        DB::text(row, column)
    }
}

impl Cell for Option<String> {
    fn read<DB: Db>(row: &DB::Row, column: &str) -> Result<Self, StoreError> {
        DB::opt_text(row, column)
    }
}

impl Cell for bool {
    fn read<DB: Db>(row: &DB::Row, column: &str) -> Result<Self, StoreError> {
        DB::flag(row, column)
    }
}

/// Running [`Stmt`]s and reading columns on a database sqlx supports with the store's types;
/// SQLite and Postgres get it from the blanket implementation. Every error is mapped by
/// [`map_sqlx`].
pub(super) trait Db: Database {
    /// Run `stmt`; the number of rows it changed.
    fn execute(
        conn: &mut Self::Connection,
        stmt: Stmt,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send + '_;
    fn fetch_optional(
        conn: &mut Self::Connection,
        stmt: Stmt,
    ) -> impl Future<Output = Result<Option<Self::Row>, StoreError>> + Send + '_;
    fn fetch_one(
        conn: &mut Self::Connection,
        stmt: Stmt,
    ) -> impl Future<Output = Result<Self::Row, StoreError>> + Send + '_;
    fn fetch_all(
        conn: &mut Self::Connection,
        stmt: Stmt,
    ) -> impl Future<Output = Result<Vec<Self::Row>, StoreError>> + Send + '_;
    fn int(row: &Self::Row, column: &str) -> Result<i64, StoreError>;
    fn opt_int(row: &Self::Row, column: &str) -> Result<Option<i64>, StoreError>;
    fn text(row: &Self::Row, column: &str) -> Result<String, StoreError>;
    fn opt_text(row: &Self::Row, column: &str) -> Result<Option<String>, StoreError>;
    fn flag(row: &Self::Row, column: &str) -> Result<bool, StoreError>;

    /// Read a column, mapping a missing or undecodable column to `Invalid`.
    fn get<T: Cell>(row: &Self::Row, column: &str) -> Result<T, StoreError> {
        T::read::<Self>(row, column)
    }
}

impl<DB> Db for DB
where
    DB: Database,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    async fn execute(conn: &mut DB::Connection, stmt: Stmt) -> Result<u64, StoreError> {
        let Stmt { sql, args } = stmt;
        let done = bind(sqlx::query(&sql), args)
            .execute(conn)
            .await
            .map_err(map_sqlx)?;
        Ok(done.rows())
    }

    async fn fetch_optional(
        conn: &mut DB::Connection,
        stmt: Stmt,
    ) -> Result<Option<DB::Row>, StoreError> {
        let Stmt { sql, args } = stmt;
        bind(sqlx::query(&sql), args)
            .fetch_optional(conn)
            .await
            .map_err(map_sqlx)
    }

    async fn fetch_one(conn: &mut DB::Connection, stmt: Stmt) -> Result<DB::Row, StoreError> {
        let Stmt { sql, args } = stmt;
        bind(sqlx::query(&sql), args)
            .fetch_one(conn)
            .await
            .map_err(map_sqlx)
    }

    async fn fetch_all(conn: &mut DB::Connection, stmt: Stmt) -> Result<Vec<DB::Row>, StoreError> {
        let Stmt { sql, args } = stmt;
        bind(sqlx::query(&sql), args)
            .fetch_all(conn)
            .await
            .map_err(map_sqlx)
    }

    fn int(row: &DB::Row, column: &str) -> Result<i64, StoreError> {
        row.try_get(column).map_err(map_sqlx)
    }

    fn opt_int(row: &DB::Row, column: &str) -> Result<Option<i64>, StoreError> {
        row.try_get(column).map_err(map_sqlx)
    }

    fn text(row: &DB::Row, column: &str) -> Result<String, StoreError> {
        row.try_get(column).map_err(map_sqlx)
    }

    fn opt_text(row: &DB::Row, column: &str) -> Result<Option<String>, StoreError> {
        row.try_get(column).map_err(map_sqlx)
    }

    fn flag(row: &DB::Row, column: &str) -> Result<bool, StoreError> {
        row.try_get(column).map_err(map_sqlx)
    }
}

/// `query` with `args` bound in order.
fn bind<'q, DB>(
    mut query: Query<'q, DB, DB::Arguments<'q>>,
    args: Vec<Arg>,
) -> Query<'q, DB, DB::Arguments<'q>>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB>,
    Option<String>: Encode<'q, DB>,
{
    for arg in args {
        query = match arg {
            Arg::Int(v) => query.bind(v),
            Arg::Text(v) => query.bind(v.map(storable)),
            Arg::Flag(v) => query.bind(v),
        };
    }
    query
}

/// `text` as every text column stores it, on both backends alike: each NUL (U+0000) becomes the
/// visible escape `\0`, the rest is kept as it is.
///
/// Postgres refuses NUL in `TEXT` (`invalid byte sequence for encoding "UTF8": 0x00`, a data
/// error, so `Invalid`), and text from outside carries it: a backend's error message, an output
/// URI, a creator's abort reason. Refused, the attempt or outcome would not be recorded at all
/// although GPU time was spent, and the workflow would fail. SQLite would keep the NUL, so the
/// escape is applied here, where every argument of either backend is bound, for records to read
/// back the same from both. Lookups by a key go through here too, so they find what was stored.
/// JSON columns never reach this with a NUL: serde_json writes it as `\u0000`, and such
/// columns read back exactly.
pub(super) fn storable(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\\0")
    } else {
        text
    }
}
