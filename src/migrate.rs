//! The migrations in `sql/`, embedded in the binary and applied by refinery.
//!
//! refinery's history table lives in the private `bookengine` schema, not in `public`,
//! so PostgREST never exposes it.

use crate::error::{Error, Result};
use tokio_postgres::Client;

mod embedded {
    refinery::embed_migrations!("sql");
}

const HISTORY_SCHEMA: &str = "bookengine";
/// refinery's history of what `migrate` applied (read by `bookengine doctor`).
pub const HISTORY_TABLE: &str = "bookengine.refinery_schema_history";

/// One migration and whether the database has it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationState {
    pub version: i64,
    pub name: String,
    pub applied: bool,
}

/// Connect with TLS when the server offers it (hosted Supabase requires it); see
/// [`crate::pgtls`] for what is and is not checked.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client> {
    let tls =
        crate::pgtls::connector().map_err(|e| Error::internal(format!("TLS setup failed: {e}")))?;
    let (client, connection) = config.connect(tls).await.map_err(|e| {
        Error::unavailable(format!(
            "cannot connect to Postgres at {}: {e}",
            describe_host(config)
        ))
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// host:port/db, never the password.
pub fn describe_host(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        config.get_dbname().unwrap_or("postgres")
    )
}

/// The migrations built into this binary, in version order (with their SQL).
pub fn embedded() -> Vec<refinery::Migration> {
    embedded::migrations::runner().get_migrations().clone()
}

fn runner() -> refinery::Runner {
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name(HISTORY_TABLE);
    runner
}

async fn ensure_history_schema(client: &Client) -> Result<()> {
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {HISTORY_SCHEMA}"))
        .await
        .map_err(|e| Error::internal(format!("creating schema {HISTORY_SCHEMA}: {e}")))
}

/// Apply every pending migration. Returns the versions applied now (empty: no-op).
pub async fn run(client: &mut Client) -> Result<Vec<MigrationState>> {
    ensure_history_schema(client).await?;
    let report = runner()
        .run_async(client)
        .await
        .map_err(|e| Error::internal(format!("migration failed: {e}")))?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| MigrationState {
            version: i64::from(m.version()),
            name: m.name().to_string(),
            applied: true,
        })
        .collect())
}

/// Every embedded migration, applied or pending.
pub async fn status(client: &mut Client) -> Result<Vec<MigrationState>> {
    ensure_history_schema(client).await?;
    let runner = runner();
    let applied = runner
        .get_applied_migrations_async(client)
        .await
        .map_err(|e| Error::internal(format!("reading migration history: {e}")))?;
    Ok(runner
        .get_migrations()
        .iter()
        .map(|m| MigrationState {
            version: i64::from(m.version()),
            name: m.name().to_string(),
            applied: applied.iter().any(|a| a.version() == m.version()),
        })
        .collect())
}
