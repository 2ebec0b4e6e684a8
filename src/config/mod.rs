//! Configuration: the command line turned, once, into the typed settings of each subsystem.
//!
//! Files by job:
//! - `cli.rs`: the clap surface (subcommands, options, their `ROOKERY_*` variables). It only
//!   collects strings.
//! - `parse.rs`: [`ConfigError`] and the helpers that turn one option's string into a typed
//!   value or one sentence naming the option (`invalid --bind "abc": expected host:port ...`).
//! - `secret.rs`: [`Secret`] and [`DatabaseUrl`], which never print a password.
//! - this file: assembly. [`Config`] (`serve`) and [`StorageConfig`] (`serve` and `migrate`)
//!   gather the settings types their subsystems own: [`DbSettings`] (`store::postgres`),
//!   [`EventLogConfig`] (`store::event_log`), [`HttpSettings`] (`http`),
//!   [`FirehoseSettings`] (`actors::firehose`), [`ServiceSettings`] and [`LogFormat`]
//!   (`service`). Settings with no
//!   subsystem yet (admin passwords, PLC URL, which database) stay here until one
//!   exists. `summary`/`Display` print the effective configuration with secrets redacted.
//!
//! Why options arrive as plain strings: clap's own parsers would report a bad value in
//! several lines and under its own wording; parsing here gives each bad value exactly one
//! sentence, and every later part of the relay reads typed, already-checked values.
//!
//! Dependencies point one way: `config` imports the subsystems' settings types, and no
//! module under `store` or `http` imports `config` (nor does anything `config` imports), so
//! each subsystem builds and tests without the command line.
//!
//! Parsing has no side effects: the data dir is created and probed at start-up
//! (`crate::startup`), so a rejected option leaves nothing behind.
//!
//! Adding an option: a field in the `*Args` of `cli.rs`, a field in the owning subsystem's
//! settings type, one line in that subsystem's builder below (and one in `summary`).

pub mod cli;
pub mod parse;
pub mod secret;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::actors::PipelineSettings;
use crate::actors::firehose::FirehoseSettings;
use crate::actors::upstream_tls::UpstreamTls;
use crate::atproto::validate::ValidationPolicy;
use crate::http::HttpSettings;
use crate::http::pull_hosts::{AdminPassword, PullHostsSettings};
use crate::http::request_crawl::CrawlSettings;
use crate::service::ServiceSettings;
use crate::store::event_log::{EventLogConfig, RetentionPolicy, SyncPolicy};
use crate::store::postgres::DbSettings;

/// Log output format; owned by `service::logging`, which sets up the output.
pub use crate::service::logging::LogFormat;
pub use cli::{Cli, Command, MigrateArgs, PullHostsArgs, ServeArgs, StorageArgs};
pub use parse::ConfigError;
pub use secret::{DatabaseUrl, REDACTED, Secret, redact_database_url};

use parse::{
    parse_byte_size, parse_count, parse_duration, parse_http_url, parse_seq, parse_socket_addr,
};

/// Where the relational data lives. It stays in `config` because it holds a
/// [`DatabaseUrl`] (a secret); the binary turns it into what `store` takes: a
/// `tokio_postgres::Config`, or a managed cluster's start options.
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
    /// The data directory: as given until start-up creates it and replaces it with its
    /// absolute path (see [`StorageConfig::with_data_dir`]).
    pub data_dir: PathBuf,
    pub database: DatabaseTarget,
    pub db: DbSettings,
    pub log_format: LogFormat,
}

impl StorageConfig {
    /// Validates the storage options. Touches nothing on disk beyond reading whether
    /// `--postgres-bin-dir` is a directory.
    pub fn from_args(args: &StorageArgs) -> Result<Self, ConfigError> {
        Ok(StorageConfig {
            log_format: parse_log_format(&args.log_format)?,
            database: database_target(args)?,
            db: db_settings(args)?,
            data_dir: args.data_dir.clone(),
        })
    }

    /// The same configuration with the data dir that start-up created and resolved.
    pub fn with_data_dir(self, data_dir: PathBuf) -> Self {
        StorageConfig { data_dir, ..self }
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
    /// The ingest path: startup ramp of upstream hosts, shards, resolver.
    pub pipeline: PipelineSettings,
    /// The firehose out: slow-consumer policy and consumer limits.
    pub firehose: FirehoseSettings,
    /// requestCrawl admission: the defaults of the operator's switch and daily limit.
    pub crawl: CrawlSettings,
    /// Running as a service: the bound on the graceful shutdown.
    pub service: ServiceSettings,
}

/// The ingest path's settings from the `serve` options.
fn pipeline_settings(
    args: &ServeArgs,
    plc_url: &url::Url,
) -> Result<PipelineSettings, ConfigError> {
    let mut pipeline = PipelineSettings::default();
    pipeline.supervisor.max_concurrent_handshakes = parse_count(
        "max-concurrent-handshakes",
        &args.max_concurrent_handshakes,
        1,
        4096,
    )?;
    pipeline.supervisor.startup_spread = parse_duration("startup-spread", &args.startup_spread)?;
    match parse_count("validator-shards", &args.validator_shards, 0, 256)? {
        0 => {}
        n => pipeline.shards = n,
    }
    if args.lenient_legacy {
        pipeline.shard.policy = ValidationPolicy::lenient();
    }
    pipeline.resolver.plc_url = plc_url.as_str().trim_end_matches('/').to_string();
    Ok(pipeline)
}

impl Config {
    /// Validates every `serve` option.
    pub fn from_serve_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let http = http_settings(args)?;
        let admin_passwords = admin_passwords(&args.admin_passwords)?;
        let plc_url = parse_http_url("plc-url", &args.plc_url)?;
        let replay_window = parse_duration("replay-window", &args.replay_window)?;
        let storage = StorageConfig::from_args(&args.storage)?;
        let event_log = event_log_config(args, &storage.data_dir, replay_window)?;
        let upstream_tls = upstream_tls(args)?;
        let mut pipeline = pipeline_settings(args, &plc_url)?;
        pipeline.upstream_tls = upstream_tls.clone();
        let mut crawl = crawl_settings(args)?;
        crawl.upstream_tls = upstream_tls;
        Ok(Config {
            storage,
            http,
            admin_passwords,
            plc_url: plc_url.clone(),
            replay_window,
            event_log,
            pipeline,
            firehose: firehose_settings(args)?,
            crawl,
            service: ServiceSettings {
                shutdown_timeout: parse_duration("shutdown-timeout", &args.shutdown_timeout)?,
            },
        })
    }

    /// The same configuration with the data dir that start-up created and resolved, in every
    /// setting that holds a copy of it.
    pub fn with_data_dir(self, data_dir: PathBuf) -> Self {
        let mut event_log = self.event_log;
        event_log.data_dir = data_dir.clone();
        Config {
            storage: self.storage.with_data_dir(data_dir),
            event_log,
            ..self
        }
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
                humantime::format_duration(self.service.shutdown_timeout).to_string(),
            ),
        ];
        out.push((
            "max-concurrent-handshakes",
            self.pipeline
                .supervisor
                .max_concurrent_handshakes
                .to_string(),
        ));
        out.push((
            "startup-spread",
            humantime::format_duration(self.pipeline.supervisor.startup_spread).to_string(),
        ));
        out.push(("validator-shards", self.pipeline.shards.to_string()));
        out.push((
            "lenient-legacy",
            (!self.pipeline.shard.policy.strict).to_string(),
        ));
        out.push((
            "consumer-stall-timeout",
            humantime::format_duration(self.firehose.consumer_stall_timeout).to_string(),
        ));
        out.push((
            "max-consumer-lag",
            self.firehose.max_consumer_lag.to_string(),
        ));
        out.push(("max-consumers", self.firehose.max_consumers.to_string()));
        out.push((
            "max-consumers-per-ip",
            self.firehose.max_consumers_per_ip.to_string(),
        ));
        out.push(("public-crawl", self.crawl.public_crawl.to_string()));
        out.push((
            "new-hosts-per-day",
            self.crawl.new_hosts_per_day.to_string(),
        ));
        let tls = &self.pipeline.upstream_tls;
        out.push((
            "upstream-ca-file",
            match tls.ca_file() {
                Some(path) => format!("{} ({} certificates)", path.display(), tls.extra_roots()),
                None => "(none: webpki roots only)".to_string(),
            },
        ));
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

// Builders: one per subsystem, one line per option.

/// `store::postgres`: `--db-*`.
fn db_settings(args: &StorageArgs) -> Result<DbSettings, ConfigError> {
    Ok(DbSettings {
        pool_size: parse_count("db-pool-size", &args.db_pool_size, 1, 1024)?,
        connect_timeout: parse_duration("db-connect-timeout", &args.db_connect_timeout)?,
        statement_timeout: parse_duration("db-statement-timeout", &args.db_statement_timeout)?,
    })
}

/// `--database-url`, else the managed cluster with `--postgres-bin-dir`.
fn database_target(args: &StorageArgs) -> Result<DatabaseTarget, ConfigError> {
    if let Some(raw) = args.database_url.as_deref()
        && !raw.trim().is_empty()
    {
        return Ok(DatabaseTarget::External(Box::new(DatabaseUrl::parse(raw)?)));
    }
    if let Some(dir) = &args.postgres_bin_dir
        && !dir.is_dir()
    {
        return Err(ConfigError::new(
            "postgres-bin-dir",
            dir.display().to_string(),
            "not a directory",
        ));
    }
    Ok(DatabaseTarget::Managed {
        bin_dir: args.postgres_bin_dir.clone(),
    })
}

/// `http`: `--bind`, `--metrics-bind`, `--http-workers`, and `--shutdown-timeout` as the
/// listeners' own graceful limit (the whole shutdown is bounded by it too, in `service`).
fn http_settings(args: &ServeArgs) -> Result<HttpSettings, ConfigError> {
    let bind = parse_socket_addr("bind", &args.bind)?;
    let metrics_bind = parse_socket_addr("metrics-bind", &args.metrics_bind)?;
    // Port 0 lets the OS pick a free port for each listener, so only a fixed port can clash.
    if bind == metrics_bind && bind.port() != 0 {
        return Err(ConfigError::new(
            "metrics-bind",
            args.metrics_bind.clone(),
            "must differ from --bind",
        ));
    }
    Ok(HttpSettings {
        bind,
        metrics_bind,
        workers: parse_count("http-workers", &args.http_workers, 1, 256)?,
        shutdown_timeout: parse_duration("shutdown-timeout", &args.shutdown_timeout)?,
    })
}

/// `actors::firehose`: `--consumer-stall-timeout`, `--max-consumer-lag`, `--max-consumers`,
/// `--max-consumers-per-ip`. The other fields keep the firehose's defaults.
fn firehose_settings(args: &ServeArgs) -> Result<FirehoseSettings, ConfigError> {
    Ok(FirehoseSettings {
        consumer_stall_timeout: parse_duration(
            "consumer-stall-timeout",
            &args.consumer_stall_timeout,
        )?,
        max_consumer_lag: parse_count("max-consumer-lag", &args.max_consumer_lag, 1, 1_000_000_000)?
            as u64,
        max_consumers: parse_count("max-consumers", &args.max_consumers, 1, 1_000_000)?,
        max_consumers_per_ip: parse_count(
            "max-consumers-per-ip",
            &args.max_consumers_per_ip,
            1,
            1_000_000,
        )?,
        ..FirehoseSettings::default()
    })
}

/// `--upstream-ca-file`: the webpki roots plus the file's certificates, for every TLS
/// connection to a host (the Subscribers, the shards, requestCrawl's probe).
fn upstream_tls(args: &ServeArgs) -> Result<UpstreamTls, ConfigError> {
    match &args.upstream_ca_file {
        None => Ok(UpstreamTls::default()),
        Some(path) => UpstreamTls::load(path).map_err(|e| {
            ConfigError::new(
                "upstream-ca-file",
                path.display().to_string(),
                e.to_string(),
            )
        }),
    }
}

/// `http::request_crawl`: `--public-crawl`, `--new-hosts-per-day` (defaults of the settings an
/// operator can store through the admin API). The other fields keep admission's defaults.
fn crawl_settings(args: &ServeArgs) -> Result<CrawlSettings, ConfigError> {
    let public_crawl = match args.public_crawl.trim().to_ascii_lowercase().as_str() {
        "true" => true,
        "false" => false,
        _ => {
            return Err(ConfigError::new(
                "public-crawl",
                args.public_crawl.clone(),
                "expected true or false",
            ));
        }
    };
    let new_hosts_per_day =
        parse_count("new-hosts-per-day", &args.new_hosts_per_day, 0, 1_000_000)? as u32;
    Ok(CrawlSettings {
        public_crawl,
        new_hosts_per_day,
        ..CrawlSettings::default()
    })
}

/// Longest admin password file read.
const MAX_PASSWORD_FILE_BYTES: u64 = 4096;

/// `rookery pull-hosts`: the two URLs, the password (from `--admin-password-file`, else
/// `env_password`, the `ROOKERY_ADMIN_PASSWORD` variable the binary read) and the limits.
/// Reads the password file; touches nothing else.
pub fn pull_hosts_settings(
    args: &PullHostsArgs,
    env_password: Option<String>,
) -> Result<PullHostsSettings, ConfigError> {
    let from = parse_http_url("from", &args.from)?;
    let relay = parse_http_url("relay", &args.relay)?;
    let password = match (&args.admin_password_file, env_password) {
        (Some(path), _) => read_password_file(path)?,
        (None, Some(p)) if !p.is_empty() => p,
        (None, _) => {
            return Err(ConfigError::new(
                "admin-password-file",
                "",
                "required (or set ROOKERY_ADMIN_PASSWORD)",
            ));
        }
    };
    let mut settings = PullHostsSettings::new(from, relay, AdminPassword::new(password));
    settings.concurrency = parse_count("concurrency", &args.concurrency, 1, 64)?;
    settings.max_pages = parse_count("max-pages", &args.max_pages, 1, 1_000_000)?;
    Ok(settings)
}

fn read_password_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let shown = path.display().to_string();
    let fail = |reason: String| ConfigError::new("admin-password-file", shown.clone(), reason);
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
    let mut text = String::new();
    file.take(MAX_PASSWORD_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(format!("cannot be read as text: {e}")))?;
    if text.len() as u64 > MAX_PASSWORD_FILE_BYTES {
        return Err(fail(format!(
            "is longer than {MAX_PASSWORD_FILE_BYTES} bytes"
        )));
    }
    let password = text.lines().next().unwrap_or_default().to_string();
    if password.is_empty() {
        return Err(fail("its first line is empty".to_string()));
    }
    Ok(password)
}

/// `store::event_log`: `--initial-seq`, `--event-log-*`, and `--replay-window` as the
/// retention age. Starts from the log's own defaults, so fields without an option keep them.
fn event_log_config(
    args: &ServeArgs,
    data_dir: &Path,
    replay_window: Duration,
) -> Result<EventLogConfig, ConfigError> {
    let mut config = EventLogConfig::new(data_dir);
    config.initial_seq = parse_seq("initial-seq", &args.initial_seq)?;
    config.sync = parse_sync_policy(&args.event_log_sync)?;
    config.segment_max_bytes = parse_segment_size(&args.event_log_segment_size)?;
    config.retention = RetentionPolicy {
        max_age: replay_window,
        max_total_bytes: parse_byte_size("event-log-max-size", &args.event_log_max_size)?,
    };
    Ok(config)
}

fn admin_passwords(raw: &[String]) -> Result<Vec<Secret>, ConfigError> {
    raw.iter()
        .map(|password| {
            if password.is_empty() {
                Err(ConfigError::new(
                    "admin-password",
                    "",
                    "an admin password must not be empty",
                ))
            } else {
                Ok(Secret::new(password.clone()))
            }
        })
        .collect()
}

fn parse_log_format(raw: &str) -> Result<LogFormat, ConfigError> {
    raw.parse()
        .map_err(|()| ConfigError::new("log-format", raw, "expected text, json or journald"))
}

fn parse_sync_policy(raw: &str) -> Result<SyncPolicy, ConfigError> {
    raw.trim().parse().map_err(|_| {
        ConfigError::new(
            "event-log-sync",
            raw,
            "expected every-batch, interval:<ms> or none",
        )
    })
}

const MIN_SEGMENT_BYTES: u64 = 1 << 20;
const MAX_SEGMENT_BYTES: u64 = 4 << 30;

fn parse_segment_size(raw: &str) -> Result<u64, ConfigError> {
    let option = "event-log-segment-size";
    let bytes = parse_byte_size(option, raw)?
        .ok_or_else(|| ConfigError::new(option, raw, "a segment size is required"))?;
    if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&bytes) {
        return Err(ConfigError::new(
            option,
            raw,
            "expected a size from 1M to 4G",
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn serve(args: &[&str]) -> Result<Config, ConfigError> {
        // Parsing never touches the data dir, so it need not exist (see
        // `parsing_has_no_side_effects`).
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
            _ => unreachable!("parsed serve"),
        }
    }

    #[test]
    fn parsing_has_no_side_effects() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("data");
        let dir_str = dir.to_string_lossy().into_owned();
        for extra in [&[][..], &["--initial-seq", "0"][..]] {
            let mut argv = vec!["rookery", "serve", "--data-dir", &dir_str];
            argv.extend_from_slice(extra);
            let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
                unreachable!("parsed serve");
            };
            let _ = Config::from_serve_args(&args);
            assert!(!dir.exists(), "parsing created the data dir ({extra:?})");
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
    fn host_ramp_options_parse_and_default() {
        let config = serve(&[]).unwrap();
        assert_eq!(config.pipeline.supervisor.max_concurrent_handshakes, 64);
        assert_eq!(
            config.pipeline.supervisor.startup_spread,
            Duration::from_secs(20)
        );
        let config =
            serve(&["--max-concurrent-handshakes", "8", "--startup-spread", "2m"]).unwrap();
        assert_eq!(config.pipeline.supervisor.max_concurrent_handshakes, 8);
        assert_eq!(
            config.pipeline.supervisor.startup_spread,
            Duration::from_secs(120)
        );
        for (args, option) in [
            (
                &["--max-concurrent-handshakes", "0"][..],
                "max-concurrent-handshakes",
            ),
            (&["--startup-spread", "soon"][..], "startup-spread"),
        ] {
            let err = serve(args).expect_err("rejected");
            assert!(err.to_string().contains(option), "{err}");
        }
    }

    #[test]
    fn firehose_options_parse_and_default() {
        let config = serve(&[]).unwrap();
        assert_eq!(config.firehose, FirehoseSettings::default());
        assert_eq!(
            config.firehose.consumer_stall_timeout,
            Duration::from_secs(30)
        );
        assert_eq!(config.firehose.max_consumer_lag, 100_000);
        assert_eq!(config.firehose.max_consumers, 5_000);
        assert_eq!(config.firehose.max_consumers_per_ip, 50);
        let config = serve(&[
            "--consumer-stall-timeout",
            "5s",
            "--max-consumer-lag",
            "2000",
            "--max-consumers",
            "10",
            "--max-consumers-per-ip",
            "3",
        ])
        .unwrap();
        assert_eq!(
            config.firehose.consumer_stall_timeout,
            Duration::from_secs(5)
        );
        assert_eq!(config.firehose.max_consumer_lag, 2_000);
        assert_eq!(config.firehose.max_consumers, 10);
        assert_eq!(config.firehose.max_consumers_per_ip, 3);
        let shown = config.to_string();
        for expected in [
            "consumer-stall-timeout=5s",
            "max-consumer-lag=2000",
            "max-consumers=10",
            "max-consumers-per-ip=3",
        ] {
            assert!(shown.contains(expected), "{shown}");
        }
        for (args, option) in [
            (
                &["--consumer-stall-timeout", "0s"][..],
                "consumer-stall-timeout",
            ),
            (
                &["--consumer-stall-timeout", "soon"][..],
                "consumer-stall-timeout",
            ),
            (&["--max-consumer-lag", "0"][..], "max-consumer-lag"),
            (&["--max-consumer-lag", "-5"][..], "max-consumer-lag"),
            (&["--max-consumers", "0"][..], "max-consumers"),
            (&["--max-consumers", "many"][..], "max-consumers"),
            (&["--max-consumers-per-ip", "0"][..], "max-consumers-per-ip"),
            (
                &["--max-consumers-per-ip", "99999999"][..],
                "max-consumers-per-ip",
            ),
        ] {
            let err = serve(args).expect_err("rejected");
            assert_eq!(err.option, option, "{args:?}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn crawl_options_parse_and_default() {
        let config = serve(&[]).unwrap();
        assert!(config.crawl.public_crawl);
        assert_eq!(config.crawl.new_hosts_per_day, 50);
        let config = serve(&["--public-crawl", "false", "--new-hosts-per-day", "0"]).unwrap();
        assert!(!config.crawl.public_crawl);
        assert_eq!(config.crawl.new_hosts_per_day, 0);
        let shown = config.to_string();
        assert!(shown.contains("public-crawl=false"), "{shown}");
        assert!(shown.contains("new-hosts-per-day=0"), "{shown}");
        for (args, option) in [
            (&["--public-crawl", "maybe"][..], "public-crawl"),
            (&["--new-hosts-per-day", "-1"][..], "new-hosts-per-day"),
            (&["--new-hosts-per-day", "1000001"][..], "new-hosts-per-day"),
        ] {
            let err = serve(args).expect_err("rejected");
            assert_eq!(err.option, option, "{args:?}");
        }
    }

    fn pull_args(extra: &[&str]) -> PullHostsArgs {
        let mut argv = vec![
            "rookery",
            "pull-hosts",
            "--from",
            "https://relay.example",
            "--relay",
            "http://127.0.0.1:2470",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::PullHosts(args) => args,
            _ => unreachable!("parsed pull-hosts"),
        }
    }

    #[test]
    fn pull_hosts_takes_the_password_from_a_file_or_the_environment() {
        let temp = tempfile::tempdir().unwrap();
        let file = temp.path().join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let file_arg = file.to_string_lossy().into_owned();
        let settings = pull_hosts_settings(
            &pull_args(&["--admin-password-file", &file_arg]),
            Some("from-env".into()),
        )
        .unwrap();
        assert_eq!(settings.password.expose(), "s3cret", "the file wins");
        assert_eq!(settings.concurrency, 4);
        assert_eq!(settings.page_limit, 1000);
        assert!(!format!("{settings:?}").contains("s3cret"));
        let settings = pull_hosts_settings(&pull_args(&[]), Some("from-env".into())).unwrap();
        assert_eq!(settings.password.expose(), "from-env");
        assert_eq!(settings.from.as_str(), "https://relay.example/");

        let missing = temp.path().join("missing");
        let empty = temp.path().join("empty");
        std::fs::write(&empty, "\nx").unwrap();
        for (args, env, option) in [
            (vec![], None, "admin-password-file"),
            (vec![], Some(String::new()), "admin-password-file"),
            (
                vec![
                    "--admin-password-file".to_string(),
                    missing.to_string_lossy().into(),
                ],
                None,
                "admin-password-file",
            ),
            (
                vec![
                    "--admin-password-file".to_string(),
                    empty.to_string_lossy().into(),
                ],
                None,
                "admin-password-file",
            ),
            (
                vec!["--concurrency".to_string(), "0".to_string()],
                Some("p".into()),
                "concurrency",
            ),
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let err = pull_hosts_settings(&pull_args(&args), env).expect_err("rejected");
            assert_eq!(err.option, option, "{args:?}");
        }
        let bad_from = match Cli::try_parse_from([
            "rookery",
            "pull-hosts",
            "--from",
            "ftp://x",
            "--relay",
            "http://r",
        ])
        .unwrap()
        .command
        {
            Command::PullHosts(args) => args,
            _ => unreachable!("parsed pull-hosts"),
        };
        let err = pull_hosts_settings(&bad_from, Some("p".into())).expect_err("rejected");
        assert_eq!(err.option, "from");
    }

    #[test]
    fn defaults_are_valid() {
        let config = serve(&[]).expect("defaults parse");
        assert_eq!(config.http.bind, "127.0.0.1:2470".parse().unwrap());
        assert_eq!(config.http.metrics_bind, "127.0.0.1:2471".parse().unwrap());
        assert_eq!(config.plc_url.as_str(), "https://plc.directory/");
        assert_eq!(config.replay_window, Duration::from_secs(72 * 3600));
        assert_eq!(config.storage.log_format, LogFormat::Text);
        assert_eq!(config.service.shutdown_timeout, Duration::from_secs(20));
        assert_eq!(config.http.shutdown_timeout, Duration::from_secs(20));
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
            "journald",
            "--shutdown-timeout",
            "45s",
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
        assert_eq!(config.storage.log_format, LogFormat::Journald);
        assert_eq!(config.service.shutdown_timeout, Duration::from_secs(45));
        assert!(config.to_string().contains("shutdown-timeout=45s"));
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
                "invalid --log-format \"xml\": expected text, json or journald",
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
