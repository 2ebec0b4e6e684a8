//! The one configuration struct, built from the command line once and validated once.
//!
//! Why options arrive as plain strings: clap only collects them (flag or `ROOKERY_*`
//! environment variable), and [`Config::from_serve_args`] / [`StorageConfig::from_args`]
//! parse every value themselves. That way each bad value yields exactly one sentence naming
//! the option (`invalid --bind "abc": expected host:port ...`) instead of a parser's
//! multi-line report, and every later part of the relay reads typed, already-checked values.
//! Secrets (admin passwords, the password in the database URL) are wrapped in [`Secret`],
//! whose `Debug`/`Display` never print the value, so they cannot leak into logs by accident.

pub mod cli;
pub mod parse;
pub mod secret;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::http::HttpSettings;
use crate::store::event_log::{EventLogConfig, RetentionPolicy};
use crate::store::postgres::DbSettings;

pub use cli::{Cli, Command, MigrateArgs, ServeArgs, StorageArgs};
pub use parse::ConfigError;
pub use secret::{DatabaseUrl, REDACTED, Secret, redact_database_url};

use parse::{
    parse_byte_size, parse_count, parse_duration, parse_http_url, parse_seq, parse_socket_addr,
};

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

const MIN_SEGMENT_BYTES: u64 = 1 << 20;
const MAX_SEGMENT_BYTES: u64 = 4 << 30;

fn parse_log_format(raw: &str) -> Result<LogFormat, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(ConfigError::new("log-format", raw, "expected text or json")),
    }
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
        }
    }
}
