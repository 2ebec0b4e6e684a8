//! Postgres access: one deadpool connection pool and one typed error.
//!
//! Why a pool with explicit timeouts: the relay must keep ingesting while Postgres is slow or
//! down (its writes are write-behind), so no caller may wait forever. Every connection gets a
//! connect timeout and a server-side `statement_timeout` (set through the startup `options`,
//! so it holds from the first statement without an extra round trip), and waiting for a pool
//! slot is bounded by the same connect timeout. Every failure becomes a [`DbError`] whose
//! [`DbError::reason`] is a short, fixed label that callers can put on a metric.

use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

/// Postgres pool settings. They live beside the pool that reads them; `config` fills them
/// from the `--db-*` options (this module never reads options itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbSettings {
    /// Maximum pooled connections.
    pub pool_size: usize,
    /// Timeout for establishing one connection (also the pool's wait timeout).
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` set on every connection.
    pub statement_timeout: Duration,
}

impl Default for DbSettings {
    fn default() -> Self {
        DbSettings {
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// Every database failure, classified so callers can decide (retry, degrade, report).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The pool could not be built or is closed.
    #[error("postgres pool unavailable: {0}")]
    Pool(String),
    /// No pooled connection became free in time.
    #[error("timed out waiting for a postgres connection from the pool")]
    PoolTimeout,
    /// A new connection could not be opened (refused, auth, DNS, connect timeout...).
    #[error("cannot connect to postgres: {0}")]
    Connect(#[source] tokio_postgres::Error),
    /// The server cancelled a statement (statement_timeout) or connecting timed out.
    #[error("postgres statement timed out")]
    Timeout,
    /// The server rejected a statement (syntax, constraint, type conversion...).
    #[error("postgres query failed: {0}")]
    Query(#[source] tokio_postgres::Error),
    /// The connection broke while in use.
    #[error("postgres connection closed: {0}")]
    Closed(#[source] tokio_postgres::Error),
    /// A schema migration failed; nothing of it was kept (it runs in one transaction).
    #[error("schema migration {version} ({name}) failed: {source}")]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: Box<DbError>,
    },
}

impl DbError {
    /// A short fixed label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            DbError::Pool(_) => "pool",
            DbError::PoolTimeout => "pool_timeout",
            DbError::Connect(_) => "connect",
            DbError::Timeout => "timeout",
            DbError::Query(_) => "query",
            DbError::Closed(_) => "closed",
            DbError::Migration { .. } => "migration",
        }
    }

    /// The SQLSTATE of a server-reported error, if any.
    pub fn sql_state(&self) -> Option<&SqlState> {
        match self {
            DbError::Query(e) | DbError::Closed(e) | DbError::Connect(e) => e.code(),
            DbError::Migration { source, .. } => source.sql_state(),
            _ => None,
        }
    }

    /// True for a unique-constraint violation (e.g. inserting a host twice).
    pub fn is_unique_violation(&self) -> bool {
        self.sql_state() == Some(&SqlState::UNIQUE_VIOLATION)
    }

    /// True when retrying later may succeed (the database, not the statement, was the problem).
    pub fn is_transient(&self) -> bool {
        !matches!(self, DbError::Query(_) | DbError::Migration { .. })
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.code() == Some(&SqlState::QUERY_CANCELED) {
            DbError::Timeout
        } else if e.as_db_error().is_some() {
            DbError::Query(e)
        } else if e.is_closed() {
            DbError::Closed(e)
        } else {
            DbError::Query(e)
        }
    }
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => DbError::PoolTimeout,
            PoolError::Timeout(_) => DbError::Timeout,
            PoolError::Backend(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => {
                DbError::Timeout
            }
            PoolError::Backend(e) => DbError::Connect(e),
            PoolError::Closed => DbError::Pool("the pool is closed".to_string()),
            PoolError::NoRuntimeSpecified => DbError::Pool("no async runtime".to_string()),
            PoolError::PostCreateHook(e) => DbError::Pool(e.to_string()),
        }
    }
}

/// The connection pool. Cheap to clone (the pool is reference-counted).
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    settings: DbSettings,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("settings", &self.settings)
            .field("status", &self.pool.status())
            .finish()
    }
}

impl Db {
    /// Builds the pool. No connection is opened until the first [`Db::client`].
    pub fn new(mut pg: tokio_postgres::Config, settings: DbSettings) -> Result<Db, DbError> {
        pg.connect_timeout(settings.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("rookery");
        }
        let timeout_option = format!(
            "-c statement_timeout={}",
            settings.statement_timeout.as_millis().max(1)
        );
        let options = match pg.get_options() {
            Some(existing) if !existing.trim().is_empty() => format!("{existing} {timeout_option}"),
            _ => timeout_option,
        };
        pg.options(&options);
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.connect_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.connect_timeout))
            .build()
            .map_err(|e| DbError::Pool(e.to_string()))?;
        Ok(Db { pool, settings })
    }

    /// One pooled connection (returned to the pool when dropped).
    pub async fn client(&self) -> Result<Object, DbError> {
        Ok(self.pool.get().await?)
    }

    /// `SELECT 1`: proves the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// The underlying pool (for status metrics).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The settings this pool was built with.
    pub fn settings(&self) -> DbSettings {
        self.settings
    }

    /// Closes the pool: idle connections are dropped, waiting callers get [`DbError::Pool`].
    pub fn close(&self) {
        self.pool.close();
    }
}

/// Opens one connection outside any pool (used by migrations tooling and tests), with the
/// connection task spawned on the current tokio runtime.
pub async fn connect_once(
    pg: &tokio_postgres::Config,
    connect_timeout: Duration,
) -> Result<tokio_postgres::Client, DbError> {
    let mut pg = pg.clone();
    pg.connect_timeout(connect_timeout);
    let (client, connection) = pg.connect(NoTls).await.map_err(DbError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}
