//! Schema migrations: numbered SQL files in `schema/`, compiled into the binary.
//!
//! Why embedded and applied at start: a relay binary and its schema must never disagree, and
//! operators should not need a separate tool. Each migration runs in its own transaction that
//! first takes a transaction-level advisory lock, so two processes starting at once against
//! the same database serialise instead of racing, and a failed migration leaves nothing
//! behind. Applied versions are recorded in `schema_migrations`, which makes re-running a
//! no-op. Migrations are append-only: never edit a file that has shipped; add a new one.

use tokio_postgres::Client;

use super::postgres::{Db, DbError};

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The number in the file name (`0001_init.sql` → 1).
    pub version: i32,
    /// The file name without `.sql`.
    pub name: &'static str,
    /// The SQL, run as one batch.
    pub sql: &'static str,
}

/// Every migration, in order. A test checks this list against the files in `schema/`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init",
        sql: include_str!("../../schema/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_checkpoint_inversion_override",
        sql: include_str!("../../schema/0002_checkpoint_inversion_override.sql"),
    },
    Migration {
        version: 3,
        name: "0003_account_admin",
        sql: include_str!("../../schema/0003_account_admin.sql"),
    },
    Migration {
        version: 4,
        name: "0004_hosts_subscribed_at",
        sql: include_str!("../../schema/0004_hosts_subscribed_at.sql"),
    },
];

/// The advisory lock key that serialises migrations ("rookery" in ASCII).
pub const MIGRATION_LOCK_KEY: i64 = 0x0072_6f6f_6b65_7279;

const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// What a migration run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this run, in order.
    pub applied: Vec<i32>,
    /// Versions that were already there.
    pub already_applied: usize,
}

/// Applies every pending migration using a pooled connection.
pub async fn migrate(db: &Db) -> Result<MigrationReport, DbError> {
    let mut client = db.client().await?;
    migrate_client(&mut client).await
}

/// Applies every pending migration on `client`.
pub async fn migrate_client(client: &mut Client) -> Result<MigrationReport, DbError> {
    let mut report = MigrationReport::default();
    for migration in MIGRATIONS {
        let applied = apply_one(client, migration)
            .await
            .map_err(|e| DbError::Migration {
                version: migration.version,
                name: migration.name,
                source: Box::new(e),
            })?;
        if applied {
            tracing::info!(
                version = migration.version,
                name = migration.name,
                "applied schema migration"
            );
            report.applied.push(migration.version);
        } else {
            report.already_applied += 1;
        }
    }
    let newest_known = MIGRATIONS.last().map_or(0, |m| m.version);
    let row = client
        .query_one("SELECT max(version) FROM schema_migrations", &[])
        .await?;
    if let Some(newest) = row.get::<_, Option<i32>>(0)
        && newest > newest_known
    {
        tracing::warn!(
            database_version = newest,
            binary_version = newest_known,
            "the database schema is newer than this binary knows"
        );
    }
    Ok(report)
}

/// Applies one migration unless recorded; true when it ran.
async fn apply_one(client: &mut Client, migration: &Migration) -> Result<bool, DbError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    // Migrations are deliberate, possibly long DDL: lift the pool's statement timeout for
    // this transaction only.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    tx.batch_execute(CREATE_VERSION_TABLE).await?;
    let done = tx
        .query_opt(
            "SELECT 1 FROM schema_migrations WHERE version = $1",
            &[&migration.version],
        )
        .await?
        .is_some();
    if done {
        tx.commit().await?;
        return Ok(false);
    }
    tx.batch_execute(migration.sql).await?;
    tx.execute(
        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
        &[&migration.version, &migration.name],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_match_the_schema_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schema");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("schema dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let names: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{}.sql", m.name))
            .collect();
        assert_eq!(
            files, names,
            "every schema/*.sql file is listed in MIGRATIONS, in order"
        );
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "versions are 1, 2, 3...");
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
            let on_disk = std::fs::read_to_string(format!("{dir}/{}.sql", m.name)).unwrap();
            assert_eq!(on_disk, m.sql);
        }
    }
}
