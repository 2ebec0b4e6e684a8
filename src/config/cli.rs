//! The clap surface: subcommands and their options, each with its `ROOKERY_*` variable.
//!
//! Why every value is a `String` here: clap only collects (flag, variable or default), and
//! the assembly in `config` parses each one, so a bad value is one sentence naming its option
//! rather than clap's multi-line report. Nothing in this file validates.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default public API address.
pub const DEFAULT_BIND: &str = "127.0.0.1:2470";
/// Default metrics address.
pub const DEFAULT_METRICS_BIND: &str = "127.0.0.1:2471";
/// Default PLC directory.
pub const DEFAULT_PLC_URL: &str = "https://plc.directory";

/// `rookery`: an AT Protocol relay.
#[derive(Debug, Parser)]
#[command(
    name = "rookery",
    version,
    about = "An AT Protocol relay built on supervised actors"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (public API, metrics; embedded Postgres unless a database URL is given).
    Serve(Box<ServeArgs>),
    /// Apply the database migrations and exit.
    Migrate(MigrateArgs),
    /// Copy another relay's host list into a running relay: every host the other relay's
    /// listHosts names (except those it reports banned) goes through this relay's admin
    /// requestCrawl, with its usual checks.
    PullHosts(PullHostsArgs),
}

/// Options shared by every subcommand that touches storage.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Directory for the event log and the embedded Postgres cluster.
    #[arg(long, env = "ROOKERY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// External Postgres (URL or key=value form). Without it, rookery runs its own cluster
    /// under <data-dir>/postgres.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory holding initdb/pg_ctl for the embedded cluster (default: PATH, then the
    /// highest /usr/lib/postgresql/*/bin).
    #[arg(long, env = "ROOKERY_POSTGRES_BIN_DIR")]
    pub postgres_bin_dir: Option<PathBuf>,
    /// Maximum number of pooled Postgres connections.
    #[arg(
        long,
        env = "ROOKERY_DB_POOL_SIZE",
        allow_hyphen_values = true,
        default_value = "16"
    )]
    pub db_pool_size: String,
    /// Timeout for opening one Postgres connection (humantime, e.g. 5s).
    #[arg(
        long,
        env = "ROOKERY_DB_CONNECT_TIMEOUT",
        allow_hyphen_values = true,
        default_value = "5s"
    )]
    pub db_connect_timeout: String,
    /// Server-side statement timeout for every query (humantime, e.g. 30s).
    #[arg(
        long,
        env = "ROOKERY_DB_STATEMENT_TIMEOUT",
        allow_hyphen_values = true,
        default_value = "30s"
    )]
    pub db_statement_timeout: String,
    /// Log format on stderr: text (colour only on a terminal, no timestamps when stderr is
    /// the journal), json, or journald (syslog priority prefixes, no timestamps). The level
    /// comes from ROOKERY_LOG or RUST_LOG (default info).
    #[arg(long, env = "ROOKERY_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// Options of `rookery serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Public API listen address (host:port).
    #[arg(long, env = "ROOKERY_BIND", default_value = DEFAULT_BIND)]
    pub bind: String,
    /// Prometheus metrics listen address (host:port).
    #[arg(long, env = "ROOKERY_METRICS_BIND", default_value = DEFAULT_METRICS_BIND)]
    pub metrics_bind: String,
    /// Admin password (repeatable). The environment variable takes a comma-separated list.
    #[arg(
        long = "admin-password",
        env = "ROOKERY_ADMIN_PASSWORDS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_passwords: Vec<String>,
    /// PLC directory used to resolve did:plc identities.
    #[arg(long, env = "ROOKERY_PLC_URL", default_value = DEFAULT_PLC_URL)]
    pub plc_url: String,
    /// How long events stay replayable from the event log (humantime, e.g. 72h).
    #[arg(
        long,
        env = "ROOKERY_REPLAY_WINDOW",
        allow_hyphen_values = true,
        default_value = "72h"
    )]
    pub replay_window: String,
    /// Number of HTTP worker threads for the public API.
    #[arg(
        long,
        env = "ROOKERY_HTTP_WORKERS",
        allow_hyphen_values = true,
        default_value = "2"
    )]
    pub http_workers: String,
    /// Upstream dials (DNS, TCP, TLS, upgrade) in flight at once; a cold start with thousands
    /// of hosts never opens more (LESSONS.md 1).
    #[arg(
        long,
        env = "ROOKERY_MAX_CONCURRENT_HANDSHAKES",
        allow_hyphen_values = true,
        default_value = "64"
    )]
    pub max_concurrent_handshakes: String,
    /// Window over which the first dials of known hosts are spread at start (humantime).
    #[arg(
        long,
        env = "ROOKERY_STARTUP_SPREAD",
        allow_hyphen_values = true,
        default_value = "20s"
    )]
    pub startup_spread: String,
    /// ValidatorShards, one thread each (`0`: one per core).
    #[arg(
        long,
        env = "ROOKERY_VALIDATOR_SHARDS",
        allow_hyphen_values = true,
        default_value = "0"
    )]
    pub validator_shards: String,
    /// Accept commits without `prevData` or op `prev` from hosts that do not send them yet
    /// (counted); strict sync 1.1 validation otherwise.
    #[arg(long, env = "ROOKERY_LENIENT_LEGACY")]
    pub lenient_legacy: bool,
    /// A live firehose consumer whose socket drains nothing for this long gets
    /// ConsumerTooSlow and is closed (humantime). Catching-up consumers are never closed for
    /// being behind.
    #[arg(
        long,
        env = "ROOKERY_CONSUMER_STALL_TIMEOUT",
        allow_hyphen_values = true,
        default_value = "30s"
    )]
    pub consumer_stall_timeout: String,
    /// A live firehose consumer further behind the head than this many events gets
    /// ConsumerTooSlow and is closed (it can reconnect with its cursor and catch up).
    #[arg(
        long,
        env = "ROOKERY_MAX_CONSUMER_LAG",
        allow_hyphen_values = true,
        default_value = "100000"
    )]
    pub max_consumer_lag: String,
    /// Open subscribeRepos consumers at most; more are answered 503.
    #[arg(
        long,
        env = "ROOKERY_MAX_CONSUMERS",
        allow_hyphen_values = true,
        default_value = "5000"
    )]
    pub max_consumers: String,
    /// Open subscribeRepos consumers per remote IP address at most; more are answered 429.
    #[arg(
        long,
        env = "ROOKERY_MAX_CONSUMERS_PER_IP",
        allow_hyphen_values = true,
        default_value = "50"
    )]
    pub max_consumers_per_ip: String,
    /// Bound on the whole graceful shutdown after SIGTERM/SIGINT (humantime): stop accepting,
    /// stop ingest and make it durable, flush Postgres, close consumers, stop the servers.
    /// On expiry rookery exits 1 naming what was unfinished; keep systemd's TimeoutStopSec
    /// above it.
    #[arg(
        long,
        env = "ROOKERY_SHUTDOWN_TIMEOUT",
        allow_hyphen_values = true,
        default_value = "20s"
    )]
    pub shutdown_timeout: String,
    /// Lowest relay seq ever used: after recovery the event log resumes after its highest
    /// stored seq, and never below this (set it above every seq an earlier log handed out
    /// when starting from an empty data dir).
    #[arg(long, env = "ROOKERY_INITIAL_SEQ", default_value = "1")]
    pub initial_seq: String,
    /// When appended events are synced to disk: every-batch, interval:<ms>, or none
    /// (benchmarks only: a crash can then lose events consumers already saw).
    #[arg(long, env = "ROOKERY_EVENT_LOG_SYNC", default_value = "every-batch")]
    pub event_log_sync: String,
    /// Size at which the event log starts a new segment file (bytes, or with a K, M or G
    /// suffix, powers of 1024).
    #[arg(long, env = "ROOKERY_EVENT_LOG_SEGMENT_SIZE", default_value = "256M")]
    pub event_log_segment_size: String,
    /// Cap on the event log's total size; the oldest segments are deleted above it
    /// (`none` for no cap: only --replay-window applies).
    #[arg(long, env = "ROOKERY_EVENT_LOG_MAX_SIZE", default_value = "none")]
    pub event_log_max_size: String,
    /// Whether public requestCrawl is accepted (true or false). A value an operator stored
    /// with /admin/subs/setEnabled wins over this default.
    #[arg(long, env = "ROOKERY_PUBLIC_CRAWL", default_value = "true")]
    pub public_crawl: String,
    /// New hosts public requestCrawl may add per 24 hours. A value an operator stored with
    /// /admin/subs/setPerDayLimit wins over this default.
    #[arg(
        long,
        env = "ROOKERY_NEW_HOSTS_PER_DAY",
        allow_hyphen_values = true,
        default_value = "50"
    )]
    pub new_hosts_per_day: String,
    /// PEM file of extra root certificates trusted, besides the webpki roots, on TLS
    /// connections to hosts (wss:// subscriptions, getRepoStatus, requestCrawl's
    /// describeServer), e.g. a private CA or rookery-fleet's.
    #[arg(long, env = "ROOKERY_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,
}

/// Options of `rookery pull-hosts`. The admin password comes from `--admin-password-file`
/// or, without it, from the `ROOKERY_ADMIN_PASSWORD` variable (never from the command line,
/// where other users could read it).
#[derive(Debug, Clone, Args)]
pub struct PullHostsArgs {
    /// Base URL of the relay whose com.atproto.sync.listHosts is read
    /// (e.g. https://relay1.us-east.bsky.network).
    #[arg(long, env = "ROOKERY_PULL_FROM")]
    pub from: String,
    /// Base URL of the relay that gets the hosts (its public listener, where /admin is).
    #[arg(long, env = "ROOKERY_PULL_RELAY")]
    pub relay: String,
    /// File whose first line is the relay's admin password.
    #[arg(long, env = "ROOKERY_ADMIN_PASSWORD_FILE")]
    pub admin_password_file: Option<PathBuf>,
    /// Hosts submitted at once.
    #[arg(
        long,
        env = "ROOKERY_PULL_CONCURRENCY",
        allow_hyphen_values = true,
        default_value = "4"
    )]
    pub concurrency: String,
    /// Most listHosts pages read (of 1000 hosts each).
    #[arg(
        long,
        env = "ROOKERY_PULL_MAX_PAGES",
        allow_hyphen_values = true,
        default_value = "1000"
    )]
    pub max_pages: String,
}

/// Options of `rookery migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names_are_declared() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let serve = cmd.find_subcommand("serve").unwrap();
        let envs: Vec<String> = serve
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        for expected in [
            "ROOKERY_DATA_DIR",
            "DATABASE_URL",
            "ROOKERY_BIND",
            "ROOKERY_METRICS_BIND",
            "ROOKERY_ADMIN_PASSWORDS",
            "ROOKERY_PLC_URL",
            "ROOKERY_REPLAY_WINDOW",
            "ROOKERY_LOG_FORMAT",
        ] {
            assert!(envs.iter().any(|e| e == expected), "{expected} missing");
        }
        // Every serve option can be set from the environment.
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                arg.get_env().is_some(),
                "--{id} has no environment variable"
            );
        }
    }
}
