//! A fresh Postgres database per test, on the server of `RETAKE_TEST_POSTGRES_URL`, and an
//! outage of it on demand.

use sqlx::PgPool;

/// A database `retake_it_<pid>_<n>` that the test owns, dropped with this value (also when the
/// test panics), whoever is still connected to it.
pub struct FreshPostgres {
    /// Where the store reaches it.
    pub url: String,
    name: String,
    admin_url: String,
    /// A connection to the server's maintenance database, which stays usable while this
    /// database refuses connections.
    admin: PgPool,
}

/// A fresh Postgres database for one test, or `None` (skip, after saying why) when no server
/// answers and `CI` is not set; on CI that is an error.
pub async fn fresh_postgres() -> Option<FreshPostgres> {
    let admin_url = std::env::var("RETAKE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let admin = match PgPool::connect(&admin_url).await {
        Ok(pool) => pool,
        Err(e) if std::env::var("CI").is_ok_and(|v| !v.is_empty()) => {
            panic!("Postgres at {admin_url} is unreachable on CI (scripts/test starts it): {e}")
        }
        Err(e) => {
            eprintln!("skipping: no Postgres at {admin_url}: {e}");
            return None;
        }
    };
    let name = format!("retake_it_{}_{}", std::process::id(), unique_suffix());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let mut url = url::Url::parse(&admin_url).expect("RETAKE_TEST_POSTGRES_URL is a URL");
    url.set_path(&name);
    Some(FreshPostgres {
        url: url.to_string(),
        name,
        admin_url,
        admin,
    })
}

/// Distinct for every call in this process (and, with the pid, on the server).
fn unique_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64 % 1_000_000_007);
    nanos * 1000 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000
}

impl FreshPostgres {
    /// The outage seen in production: the database refuses new connections
    /// (`ALLOW_CONNECTIONS false`, SQLSTATE 55000) and its open ones are terminated.
    pub async fn refuse_connections(&self) {
        self.admin_sql(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            self.name
        ))
        .await;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .execute(&self.admin)
        .await
        .expect("terminate the database's backends");
    }

    /// End the outage.
    pub async fn allow_connections(&self) {
        self.admin_sql(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        ))
        .await;
    }

    async fn admin_sql(&self, sql: &str) {
        sqlx::query(sql)
            .execute(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for FreshPostgres {
    /// On a thread of its own with its own runtime, so that it works from inside the test's
    /// runtime and while a panic unwinds.
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                use sqlx::Connection;
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await?;
                Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop the test database {}", self.name);
        }
    }
}
