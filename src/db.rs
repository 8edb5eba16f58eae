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
