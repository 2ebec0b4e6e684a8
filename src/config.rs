//! The one configuration struct, built from the command line once and validated once.
//!
//! Why options arrive as plain strings: clap only collects them (flag or `ROOKERY_*`
//! environment variable), and [`Config::from_serve_args`] / [`StorageConfig::from_args`]
//! parse every value themselves. That way each bad value yields exactly one sentence naming
//! the option (`invalid --bind "abc": expected host:port ...`) instead of a parser's
//! multi-line report, and every later part of the relay reads typed, already-checked values.
//! Secrets (admin passwords, the password in the database URL) are wrapped in [`Secret`],
//! whose `Debug`/`Display` never print the value, so they cannot leak into logs by accident.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::http::HttpSettings;
use crate::store::event_log::{EventLogConfig, RetentionPolicy};
use crate::store::postgres::DbSettings;

/// Default public API address.
pub const DEFAULT_BIND: &str = "127.0.0.1:2470";
/// Default metrics address.
pub const DEFAULT_METRICS_BIND: &str = "127.0.0.1:2471";
/// Default PLC directory.
pub const DEFAULT_PLC_URL: &str = "https://plc.directory";
/// What a redacted secret prints as.
pub const REDACTED: &str = "REDACTED";

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
    /// Log format: text or json. The level comes from ROOKERY_LOG or RUST_LOG (default info).
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
    /// How long a graceful shutdown may wait for open HTTP connections (humantime).
    #[arg(
        long,
        env = "ROOKERY_SHUTDOWN_TIMEOUT",
        allow_hyphen_values = true,
        default_value = "5s"
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
}

/// Options of `rookery migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// A configuration value that was rejected: which option, what was given, what was expected.
/// Its `Display` is the one sentence printed before exiting with status 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --{option} \"{value}\": {reason}")]
pub struct ConfigError {
    /// The option's long name without dashes, e.g. `bind`.
    pub option: &'static str,
    /// The value as given (already redacted when it may hold a secret).
    pub value: String,
    /// What was wrong, ending without a period.
    pub reason: String,
}

impl ConfigError {
    fn new(option: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            option,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// A secret string. Printing it (Debug or Display) shows [`REDACTED`]; use
/// [`Secret::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// A validated external Postgres connection string. `Display` redacts the password.
#[derive(Clone)]
pub struct DatabaseUrl {
    raw: Secret,
    parsed: tokio_postgres::Config,
}

impl DatabaseUrl {
    /// Parses a `postgres://`/`postgresql://` URL or a libpq key=value string.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let shown = redact_database_url(raw);
        let parsed = tokio_postgres::Config::from_str(raw).map_err(|e| {
            ConfigError::new(
                "database-url",
                shown.clone(),
                format!("expected a postgres:// URL or key=value connection string ({e})"),
            )
        })?;
        if parsed.get_hosts().is_empty() {
            return Err(ConfigError::new(
                "database-url",
                shown,
                "no host given (use host=/path for a unix socket)",
            ));
        }
        Ok(DatabaseUrl {
            raw: Secret::new(raw),
            parsed,
        })
    }

    /// The parsed connection settings (password included).
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.parsed
    }

    /// The original string, password included.
    pub fn expose(&self) -> &str {
        self.raw.expose()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_database_url(self.raw.expose()))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Replaces the password in a Postgres connection string with [`REDACTED`], in both the URL
/// form (userinfo and `?password=`) and the key=value form. A string that cannot be read at
/// all is replaced entirely, since we cannot tell where its password is.
pub fn redact_database_url(raw: &str) -> String {
    let trimmed = raw.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Ok(mut url) = url::Url::parse(trimmed) else {
            return REDACTED.to_string();
        };
        if url.password().is_some() && url.set_password(Some(REDACTED)).is_err() {
            return REDACTED.to_string();
        }
        if url.query_pairs().any(|(k, _)| k == "password") {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    if k == "password" {
                        (k.into_owned(), REDACTED.to_string())
                    } else {
                        (k.into_owned(), v.into_owned())
                    }
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        return url.to_string();
    }
    redact_key_value(trimmed).unwrap_or_else(|| REDACTED.to_string())
}

/// Redacts `password=...` in a libpq key=value string, following its quoting rules
/// (values may be single-quoted with backslash escapes). `None` when the string is malformed.
fn redact_key_value(raw: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut chars = raw.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.push(chars.next()?),
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return None;
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.push(chars.next()?);
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        if key == "password" {
            out.push(format!("password={REDACTED}"));
        } else if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '\'') {
            out.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        } else {
            out.push(format!("{key}={value}"));
        }
    }
    Some(out.join(" "))
}

/// Where the relational data lives.
#[derive(Debug, Clone)]
pub enum DatabaseTarget {
    /// An operator-provided server.
    External(Box<DatabaseUrl>),
    /// rookery's own cluster under `<data-dir>/postgres`.
    Managed {
        /// Explicit binary directory, if configured.
        bin_dir: Option<PathBuf>,
    },
}

/// Storage configuration shared by `serve` and `migrate`.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Absolute, existing, writable data directory.
    pub data_dir: PathBuf,
    pub database: DatabaseTarget,
    pub db: DbSettings,
    pub log_format: LogFormat,
}

impl StorageConfig {
    /// Validates storage options; creates the data dir if missing and checks it is writable.
    pub fn from_args(args: &StorageArgs) -> Result<Self, ConfigError> {
        let log_format = parse_log_format(&args.log_format)?;
        let database = match args.database_url.as_deref() {
            Some(raw) if !raw.trim().is_empty() => {
                DatabaseTarget::External(Box::new(DatabaseUrl::parse(raw)?))
            }
            _ => {
                if let Some(dir) = &args.postgres_bin_dir
                    && !dir.is_dir()
                {
                    return Err(ConfigError::new(
                        "postgres-bin-dir",
                        dir.display().to_string(),
                        "not a directory",
                    ));
                }
                DatabaseTarget::Managed {
                    bin_dir: args.postgres_bin_dir.clone(),
                }
            }
        };
        let pool_size = parse_count("db-pool-size", &args.db_pool_size, 1, 1024)?;
        let connect_timeout = parse_duration("db-connect-timeout", &args.db_connect_timeout)?;
        let statement_timeout = parse_duration("db-statement-timeout", &args.db_statement_timeout)?;
        let data_dir = prepare_data_dir(&args.data_dir)?;
        Ok(StorageConfig {
            data_dir,
            database,
            db: DbSettings {
                pool_size,
                connect_timeout,
                statement_timeout,
            },
            log_format,
        })
    }

    /// `(option, value)` pairs of the effective configuration, secrets redacted.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        let database = match &self.database {
            DatabaseTarget::External(url) => url.to_string(),
            DatabaseTarget::Managed { bin_dir } => match bin_dir {
                Some(dir) => format!(
                    "(embedded under {}/postgres, binaries from {})",
                    self.data_dir.display(),
                    dir.display()
                ),
                None => format!("(embedded under {}/postgres)", self.data_dir.display()),
            },
        };
        vec![
            ("data-dir", self.data_dir.display().to_string()),
            ("database-url", database),
            ("db-pool-size", self.db.pool_size.to_string()),
            (
                "db-connect-timeout",
                humantime::format_duration(self.db.connect_timeout).to_string(),
            ),
            (
                "db-statement-timeout",
                humantime::format_duration(self.db.statement_timeout).to_string(),
            ),
            ("log-format", self.log_format.to_string()),
        ]
    }
}

/// The whole configuration of `rookery serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub storage: StorageConfig,
    /// Listen addresses, workers and shutdown limit of the HTTP surfaces.
    pub http: HttpSettings,
    /// Accepted admin passwords; empty means the admin API refuses everyone.
    pub admin_passwords: Vec<Secret>,
    /// PLC directory base URL.
    pub plc_url: url::Url,
    /// Event replay window.
    pub replay_window: Duration,
    /// The event log under `<data-dir>/events`, its retention window being `replay_window`.
    pub event_log: EventLogConfig,
}

impl Config {
    /// Validates every `serve` option.
    pub fn from_serve_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let bind = parse_socket_addr("bind", &args.bind)?;
        let metrics_bind = parse_socket_addr("metrics-bind", &args.metrics_bind)?;
        if bind == metrics_bind && bind.port() != 0 {
            return Err(ConfigError::new(
                "metrics-bind",
                args.metrics_bind.clone(),
                "must differ from --bind",
            ));
        }
        let mut admin_passwords = Vec::new();
        for password in &args.admin_passwords {
            if password.is_empty() {
                return Err(ConfigError::new(
                    "admin-password",
                    "",
                    "an admin password must not be empty",
                ));
            }
            admin_passwords.push(Secret::new(password.clone()));
        }
        let plc_url = parse_http_url("plc-url", &args.plc_url)?;
        let replay_window = parse_duration("replay-window", &args.replay_window)?;
        let http_workers = parse_count("http-workers", &args.http_workers, 1, 256)?;
        let shutdown_timeout = parse_duration("shutdown-timeout", &args.shutdown_timeout)?;
        let storage = StorageConfig::from_args(&args.storage)?;
        let mut event_log = EventLogConfig::new(storage.data_dir.clone());
        event_log.initial_seq = parse_seq("initial-seq", &args.initial_seq)?;
        event_log.sync = args.event_log_sync.trim().parse().map_err(|_| {
            ConfigError::new(
                "event-log-sync",
                &args.event_log_sync,
                "expected every-batch, interval:<ms> or none",
            )
        })?;
        event_log.segment_max_bytes =
            parse_byte_size("event-log-segment-size", &args.event_log_segment_size)?.ok_or_else(
                || {
                    ConfigError::new(
                        "event-log-segment-size",
                        &args.event_log_segment_size,
                        "a segment size is required",
                    )
                },
            )?;
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&event_log.segment_max_bytes) {
            return Err(ConfigError::new(
                "event-log-segment-size",
                &args.event_log_segment_size,
                "expected a size from 1M to 4G",
            ));
        }
        event_log.retention = RetentionPolicy {
            max_age: replay_window,
            max_total_bytes: parse_byte_size("event-log-max-size", &args.event_log_max_size)?,
        };
        Ok(Config {
            storage,
            http: HttpSettings {
                bind,
                metrics_bind,
                workers: http_workers,
                shutdown_timeout,
            },
            admin_passwords,
            plc_url,
            replay_window,
            event_log,
        })
    }

    /// `(option, value)` pairs of the effective configuration, secrets redacted.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("bind", self.http.bind.to_string()),
            ("metrics-bind", self.http.metrics_bind.to_string()),
            (
                "admin-password",
                if self.admin_passwords.is_empty() {
                    "(none: admin API disabled)".to_string()
                } else {
                    format!("{} configured, {REDACTED}", self.admin_passwords.len())
                },
            ),
            ("plc-url", self.plc_url.to_string()),
            (
                "replay-window",
                humantime::format_duration(self.replay_window).to_string(),
            ),
            ("http-workers", self.http.workers.to_string()),
            (
                "shutdown-timeout",
                humantime::format_duration(self.http.shutdown_timeout).to_string(),
            ),
        ];
        out.push(("initial-seq", self.event_log.initial_seq.to_string()));
        out.push(("event-log-sync", self.event_log.sync.to_string()));
        out.push((
            "event-log-segment-size",
            self.event_log.segment_max_bytes.to_string(),
        ));
        out.push((
            "event-log-max-size",
            self.event_log
                .retention
                .max_total_bytes
                .map_or_else(|| "none".to_string(), |b| b.to_string()),
        ));
        out.extend(self.storage.summary());
        out
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.summary().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// Parses `IP:port`, `[IPv6]:port` or `localhost:port`.
pub fn parse_socket_addr(option: &'static str, raw: &str) -> Result<SocketAddr, ConfigError> {
    let expected = "expected host:port with an IP address or localhost, e.g. 127.0.0.1:2470";
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = raw.strip_prefix("localhost:") {
        return port
            .parse::<u16>()
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
            .map_err(|_| ConfigError::new(option, raw, expected));
    }
    Err(ConfigError::new(option, raw, expected))
}

/// Parses a humantime duration (`72h`, `30s`, `1h 30m`) that must be positive.
pub fn parse_duration(option: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    match humantime::parse_duration(raw.trim()) {
        Ok(d) if d.is_zero() => Err(ConfigError::new(option, raw, "must be longer than zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(ConfigError::new(
            option,
            raw,
            format!("expected a duration such as 30s, 15m or 72h ({e})"),
        )),
    }
}

fn parse_count(
    option: &'static str,
    raw: &str,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    match raw.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            option,
            raw,
            format!("expected a whole number from {min} to {max}"),
        )),
    }
}

const MIN_SEGMENT_BYTES: u64 = 1 << 20;
const MAX_SEGMENT_BYTES: u64 = 4 << 30;
/// Seqs are JSON integers on the wire: they must stay below 2^53.
const MAX_SEQ: u64 = (1 << 53) - 1;

fn parse_seq(option: &'static str, raw: &str) -> Result<u64, ConfigError> {
    match raw.trim().parse::<u64>() {
        Ok(n) if (1..MAX_SEQ).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            option,
            raw,
            "expected a whole number from 1 to 2^53-2",
        )),
    }
}

/// Parses `none`, a byte count, or a count with a K, M or G suffix (powers of 1024,
/// an optional trailing `B`/`iB` is accepted: `256M`, `256MiB`, `1G`).
pub fn parse_byte_size(option: &'static str, raw: &str) -> Result<Option<u64>, ConfigError> {
    let bad = || {
        ConfigError::new(
            option,
            raw,
            "expected none or a size such as 1048576, 256M or 10G",
        )
    };
    let text = raw.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let upper = text.to_ascii_uppercase();
    let unit_stripped = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match unit_stripped.char_indices().last() {
        Some((i, 'K')) => (&unit_stripped[..i], 10),
        Some((i, 'M')) => (&unit_stripped[..i], 20),
        Some((i, 'G')) => (&unit_stripped[..i], 30),
        Some((i, 'T')) => (&unit_stripped[..i], 40),
        _ => (unit_stripped, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(bad());
    }
    Ok(Some(bytes))
}

fn parse_log_format(raw: &str) -> Result<LogFormat, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(ConfigError::new("log-format", raw, "expected text or json")),
    }
}

/// Parses an absolute http(s) URL with a host.
pub fn parse_http_url(option: &'static str, raw: &str) -> Result<url::Url, ConfigError> {
    let expected = "expected an http:// or https:// URL such as https://plc.directory";
    let url = url::Url::parse(raw.trim())
        .map_err(|e| ConfigError::new(option, raw, format!("{expected} ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(option, raw, expected));
    }
    Ok(url)
}

/// Creates the data dir when missing, checks that it is a writable directory, and returns
/// its absolute path (child processes such as `pg_ctl` run from `/`).
fn prepare_data_dir(dir: &Path) -> Result<PathBuf, ConfigError> {
    let shown = dir.display().to_string();
    if dir.as_os_str().is_empty() {
        return Err(ConfigError::new("data-dir", shown, "must not be empty"));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        ConfigError::new(
            "data-dir",
            shown.clone(),
            format!("cannot create the directory ({e})"),
        )
    })?;
    let absolute = dir.canonicalize().map_err(|e| {
        ConfigError::new(
            "data-dir",
            shown.clone(),
            format!("cannot resolve the path ({e})"),
        )
    })?;
    if !absolute.is_dir() {
        return Err(ConfigError::new("data-dir", shown, "not a directory"));
    }
    static PROBE_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let probe = absolute.join(format!(
        ".rookery-write-probe-{}-{}",
        std::process::id(),
        PROBE_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&probe, b"probe").map_err(|e| {
        ConfigError::new(
            "data-dir",
            shown.clone(),
            format!("the directory is not writable ({e})"),
        )
    })?;
    std::fs::remove_file(&probe).map_err(|e| {
        ConfigError::new(
            "data-dir",
            shown.clone(),
            format!("the directory is not writable ({e})"),
        )
    })?;
    std::fs::read_dir(&absolute).map_err(|e| {
        ConfigError::new(
            "data-dir",
            shown,
            format!("the directory is not readable ({e})"),
        )
    })?;
    Ok(absolute)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::event_log::SyncPolicy;
    use clap::Parser;

    fn serve(args: &[&str]) -> Result<Config, ConfigError> {
        // Removed when this returns; the config was validated against it already.
        let temp = tempfile::tempdir().map_err(|e| ConfigError::new("test", "", e.to_string()))?;
        let dir = temp.path().join("data");
        let mut argv = vec!["rookery", "serve", "--data-dir"];
        let dir_str = dir.to_string_lossy().into_owned();
        argv.push(&dir_str);
        argv.extend_from_slice(args);
        let cli =
            Cli::try_parse_from(argv).map_err(|e| ConfigError::new("clap", "", e.to_string()))?;
        match cli.command {
            Command::Serve(args) => Config::from_serve_args(&args),
            Command::Migrate(_) => unreachable!("parsed serve"),
        }
    }

    #[test]
    fn event_log_options_parse_and_default() {
        let config = serve(&[]).unwrap();
        assert_eq!(config.event_log.initial_seq, 1);
        assert_eq!(config.event_log.sync, SyncPolicy::EveryBatch);
        assert_eq!(config.event_log.segment_max_bytes, 256 << 20);
        assert_eq!(config.event_log.retention.max_total_bytes, None);
        assert_eq!(
            config.event_log.retention.max_age,
            Duration::from_secs(72 * 3600)
        );
        assert_eq!(
            config.event_log.events_dir(),
            config.storage.data_dir.join("events")
        );

        let config = serve(&[
            "--initial-seq",
            "20000000000",
            "--event-log-sync",
            "interval:5",
            "--event-log-segment-size",
            "64MiB",
            "--event-log-max-size",
            "10G",
            "--replay-window",
            "24h",
        ])
        .unwrap();
        assert_eq!(config.event_log.initial_seq, 20_000_000_000);
        assert_eq!(
            config.event_log.sync,
            SyncPolicy::Interval(Duration::from_millis(5))
        );
        assert_eq!(config.event_log.segment_max_bytes, 64 << 20);
        assert_eq!(config.event_log.retention.max_total_bytes, Some(10 << 30));
        assert_eq!(
            config.event_log.retention.max_age,
            Duration::from_secs(24 * 3600)
        );
    }

    #[test]
    fn bad_event_log_options_name_the_option() {
        for (args, option) in [
            (&["--initial-seq", "0"][..], "initial-seq"),
            (&["--initial-seq", "9007199254740993"][..], "initial-seq"),
            (&["--event-log-sync", "sometimes"][..], "event-log-sync"),
            (
                &["--event-log-segment-size", "12"][..],
                "event-log-segment-size",
            ),
            (
                &["--event-log-segment-size", "none"][..],
                "event-log-segment-size",
            ),
            (&["--event-log-max-size", "lots"][..], "event-log-max-size"),
            (&["--event-log-max-size", "0"][..], "event-log-max-size"),
        ] {
            let err = serve(args).unwrap_err();
            assert_eq!(err.option, option, "{args:?}");
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("x", "none").unwrap(), None);
        assert_eq!(parse_byte_size("x", "1048576").unwrap(), Some(1 << 20));
        assert_eq!(parse_byte_size("x", "2k").unwrap(), Some(2048));
        assert_eq!(parse_byte_size("x", "3MB").unwrap(), Some(3 << 20));
        assert_eq!(parse_byte_size("x", "1TiB").unwrap(), Some(1 << 40));
        assert!(parse_byte_size("x", "99999999999999T").is_err());
        assert!(parse_byte_size("x", "M").is_err());
        assert!(parse_byte_size("x", "-1").is_err());
    }

    #[test]
    fn defaults_are_valid() {
        let config = serve(&[]).expect("defaults parse");
        assert_eq!(config.http.bind, "127.0.0.1:2470".parse().unwrap());
        assert_eq!(config.http.metrics_bind, "127.0.0.1:2471".parse().unwrap());
        assert_eq!(config.plc_url.as_str(), "https://plc.directory/");
        assert_eq!(config.replay_window, Duration::from_secs(72 * 3600));
        assert_eq!(config.storage.log_format, LogFormat::Text);
        assert!(config.storage.data_dir.is_absolute());
        assert!(matches!(
            config.storage.database,
            DatabaseTarget::Managed { bin_dir: None }
        ));
    }

    #[test]
    fn options_are_parsed() {
        let config = serve(&[
            "--bind",
            "[::1]:8080",
            "--metrics-bind",
            "localhost:9090",
            "--replay-window",
            "1h 30m",
            "--log-format",
            "json",
            "--admin-password",
            "a",
            "--admin-password",
            "b",
            "--database-url",
            "postgres://u:pw@db.example:5433/rookery",
        ])
        .expect("valid options");
        assert_eq!(config.http.bind, "[::1]:8080".parse().unwrap());
        assert_eq!(config.http.metrics_bind, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(config.replay_window, Duration::from_secs(5400));
        assert_eq!(config.storage.log_format, LogFormat::Json);
        assert_eq!(config.admin_passwords.len(), 2);
        assert_eq!(config.admin_passwords[1].expose(), "b");
        let DatabaseTarget::External(url) = &config.storage.database else {
            panic!("expected an external database");
        };
        assert_eq!(url.pg_config().get_dbname(), Some("rookery"));
        assert_eq!(url.pg_config().get_ports(), &[5433]);
    }

    #[test]
    fn bad_values_name_the_option() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--bind", "abc"],
                "invalid --bind \"abc\": expected host:port",
            ),
            (
                &["--metrics-bind", "1.2.3.4"],
                "invalid --metrics-bind \"1.2.3.4\"",
            ),
            (
                &["--plc-url", "not a url"],
                "invalid --plc-url \"not a url\"",
            ),
            (&["--plc-url", "ftp://plc.example"], "invalid --plc-url"),
            (
                &["--replay-window", "forever"],
                "invalid --replay-window \"forever\"",
            ),
            (&["--replay-window", "0s"], "must be longer than zero"),
            (
                &["--log-format", "xml"],
                "invalid --log-format \"xml\": expected text or json",
            ),
            (&["--http-workers", "0"], "invalid --http-workers"),
            (&["--db-pool-size", "many"], "invalid --db-pool-size"),
            (
                &["--database-url", "postgres://u:pw@host:notaport/db"],
                "invalid --database-url",
            ),
            (&["--admin-password", ""], "invalid --admin-password"),
        ];
        for (args, expected) in cases {
            let err = serve(args).expect_err("must be rejected").to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn data_dir_under_a_file_is_rejected() {
        let file = std::env::temp_dir().join(format!("rookery-config-file-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let args = StorageArgs {
            data_dir: file.join("data"),
            database_url: None,
            postgres_bin_dir: None,
            db_pool_size: "4".into(),
            db_connect_timeout: "1s".into(),
            db_statement_timeout: "1s".into(),
            log_format: "text".into(),
        };
        let err = StorageConfig::from_args(&args)
            .expect_err("not a dir")
            .to_string();
        std::fs::remove_file(&file).unwrap();
        assert!(err.starts_with("invalid --data-dir"), "{err}");
        assert!(err.contains("cannot create"), "{err}");
    }

    #[test]
    fn url_passwords_are_redacted() {
        let shown = redact_database_url("postgres://alice:s3cret@db.example:5432/rookery");
        assert_eq!(
            shown,
            format!("postgres://alice:{REDACTED}@db.example:5432/rookery")
        );
        let shown =
            redact_database_url("postgresql://alice@db/rookery?password=s3cret&sslmode=disable");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("sslmode=disable"), "{shown}");
        let shown = redact_database_url("postgres://alice@db/rookery");
        assert_eq!(shown, "postgres://alice@db/rookery");
    }

    #[test]
    fn key_value_passwords_are_redacted() {
        let shown = redact_database_url("host=/tmp user=postgres password='it''s s3cret' dbname=x");
        // A malformed quoted value is fully redacted rather than half-printed.
        assert!(!shown.contains("s3cret"), "{shown}");
        let shown = redact_database_url("host=/tmp password=s3cret dbname=x");
        assert_eq!(shown, format!("host=/tmp password={REDACTED} dbname=x"));
        let shown = redact_database_url("host=/tmp password='s3 cret' dbname='my db'");
        assert_eq!(
            shown,
            format!("host=/tmp password={REDACTED} dbname='my db'")
        );
        assert_eq!(redact_database_url("password='unterminated"), REDACTED);
    }

    #[test]
    fn summary_and_debug_never_show_secrets() {
        let config = serve(&[
            "--admin-password",
            "hunter2hunter2",
            "--database-url",
            "postgres://u:topsecretpw@db/rookery",
        ])
        .unwrap();
        let shown = config.to_string();
        let debug = format!("{config:?}");
        for text in [&shown, &debug] {
            assert!(!text.contains("hunter2hunter2"), "{text}");
            assert!(!text.contains("topsecretpw"), "{text}");
        }
        assert!(shown.contains("admin-password=1 configured"), "{shown}");
        assert!(
            shown.contains("postgres://u:REDACTED@db/rookery"),
            "{shown}"
        );
    }

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

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parsers_never_panic(input in any::<String>()) {
                let _ = redact_database_url(&input);
                let _ = DatabaseUrl::parse(&input);
                let _ = parse_socket_addr("bind", &input);
                let _ = parse_duration("replay-window", &input);
                let _ = parse_http_url("plc-url", &input);
                let _ = parse_log_format(&input);
            }

            #[test]
            fn passwords_never_survive_redaction(
                password in "[A-Za-z0-9]{12,24}",
                user in "[a-z]{1,8}",
                host in "[a-z]{1,8}",
            ) {
                let url = format!("postgres://{user}:{password}@{host}/db");
                prop_assert!(!redact_database_url(&url).contains(&password));
                let kv = format!("host={host} user={user} password={password} dbname=db");
                prop_assert!(!redact_database_url(&kv).contains(&password));
                let quoted = format!("host={host} password='{password} x' dbname=db");
                prop_assert!(!redact_database_url(&quoted).contains(&password));
            }
        }
    }
}
