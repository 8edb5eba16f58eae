//! PostgreSQL: the pool and the migrations in `migrations/`, embedded in the binary.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgPoolOptions;
/// The pool type every database call takes, for callers that do not depend on sqlx themselves.
pub use sqlx::PgPool;

/// The schema migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects a pool; fails fast when the server is down so callers can report or retry.
pub async fn connect(url: &SecretString, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url.expose_secret())
        .await
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Connects a pool and applies the migrations: what every command that writes needs first.
pub async fn connect_migrated(url: &SecretString, max_connections: u32) -> anyhow::Result<PgPool> {
    use anyhow::Context;
    let pool = connect(url, max_connections)
        .await
        .context("connecting to PostgreSQL")?;
    migrate(&pool).await.context("applying migrations")?;
    Ok(pool)
}

/// A PostgreSQL session advisory lock, held on a connection of its own (taken out of the pool,
/// never returned to it).
///
/// [`SessionLock::release`] unlocks it before closing the connection, so a run started right
/// after this one finds it free. Dropped without a release (a crash, a panic), the lock lasts
/// until the server notices the connection is gone, and never longer.
#[derive(Debug)]
pub struct SessionLock {
    conn: sqlx::PgConnection,
}

impl SessionLock {
    /// Takes the lock whose key the SQL expression `key` computes from `$1` = `name`, or
    /// None when another session holds it.
    pub async fn try_take(
        pool: &PgPool,
        key: &'static str,
        name: &str,
    ) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = pool.acquire().await?.detach();
        let taken: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT pg_try_advisory_lock({key})"
        )))
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
        Ok(taken.then_some(Self { conn }))
    }

    /// Releases the lock now: unlocked, then the connection closed. A failure is only logged:
    /// the lock goes with the connection, which is closed whatever the unlock answered.
    pub async fn release(mut self) {
        if let Err(e) = sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut self.conn)
            .await
        {
            tracing::warn!(error = %e, "advisory lock not unlocked; closing its connection releases it");
        }
        let _ = sqlx::Connection::close(self.conn).await;
    }
}
