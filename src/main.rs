//! The `rookery` binary: `serve` runs the relay, `migrate` applies the schema and exits,
//! `pull-hosts` copies another relay's host list into a running relay.
//!
//! Exit codes: 0 after a clean run or a SIGTERM/SIGINT shutdown (for `pull-hosts`: the walk
//! ran to its end, refused hosts included); 2 for invalid configuration (one sentence on
//! stderr naming the option, a data dir that cannot be created or written included); 1 when
//! something fails at run time (database unreachable, port taken, the source relay or the
//! target relay unreachable...). Nothing here panics on operator input.
//!
//! Shutdown order matters: HTTP servers stop first (no new work), then the connection pool
//! closes, then the embedded Postgres stops, so no part outlives what it depends on.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

use rookery::actors::obs::ActorMetrics;
use rookery::actors::validator_shard::system_clock;
use rookery::actors::{PipelineError, start_pipeline};
use rookery::config::{
    Cli, Command, Config, ConfigError, DatabaseTarget, LogFormat, PullHostsArgs, StorageConfig,
    pull_hosts_settings,
};
use rookery::http::health::{Readiness, configure_readiness};
use rookery::http::request_crawl::ssrf::SystemDns;
use rookery::http::request_crawl::{AdmissionState, CrawlMetrics};
use rookery::http::{self, metrics::Metrics};
use rookery::startup;
use rookery::store::event_log::{EventLog, EventLogCollector, EventLogError, spawn_retention};
use rookery::store::managed_postgres::{ManagedPostgres, ManagedPostgresError, StartOptions};
use rookery::store::migrations;
use rookery::store::postgres::{Db, DbError, DbSettings};

/// How often retention looks for segments past the replay window or the size cap.
const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Failures after configuration was accepted.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    ManagedPostgres(#[from] ManagedPostgresError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("event log: {0}")]
    EventLog(#[from] EventLogError),
    #[error("could not listen on --{option} {addr}: {source}")]
    Listen {
        option: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("could not set up the metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("could not start the event log retention thread: {0}")]
    Retention(std::io::Error),
    #[error("could not install the {0} signal handler: {1}")]
    Signal(&'static str, std::io::Error),
    #[error("could not start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("could not start the firehose: {0}")]
    Firehose(#[from] rookery::actors::firehose::FirehoseError),
    #[error("could not start ingest: {0}")]
    Pipeline(#[from] PipelineError),
    #[error("the {0} HTTP server stopped unexpectedly: {1}")]
    ServerExited(&'static str, String),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    // Parse (no side effects), then prepare the data dir: an unusable one is a bad
    // `--data-dir`, so it exits 2 like any other bad option.
    let (storage, serve_config) = match &cli.command {
        Command::Serve(args) => {
            match Config::from_serve_args(args).and_then(startup::prepare_serve) {
                Ok(config) => (config.storage.clone(), Some(config)),
                Err(e) => return config_error(&e),
            }
        }
        Command::Migrate(args) => {
            match StorageConfig::from_args(&args.storage).and_then(startup::prepare_migrate) {
                Ok(storage) => (storage, None),
                Err(e) => return config_error(&e),
            }
        }
        Command::PullHosts(args) => return pull_hosts(args),
    };
    if let Err(sentence) = init_logging(storage.log_format) {
        eprintln!("rookery: {sentence}");
        return ExitCode::from(2);
    }
    let result = match serve_config {
        Some(config) => serve(config),
        None => migrate(storage),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "rookery stopped with an error");
            eprintln!("rookery: {e}");
            ExitCode::from(1)
        }
    }
}

/// `rookery pull-hosts`: progress lines on stderr every few seconds, the summary on stdout.
fn pull_hosts(args: &PullHostsArgs) -> ExitCode {
    let settings = match pull_hosts_settings(args, std::env::var("ROOKERY_ADMIN_PASSWORD").ok()) {
        Ok(settings) => settings,
        Err(e) => return config_error(&e),
    };
    if let Err(sentence) = init_logging(LogFormat::Text) {
        eprintln!("rookery: {sentence}");
        return ExitCode::from(2);
    }
    let system = actix_rt::System::new();
    let result = system.block_on(async {
        rookery::http::pull_hosts::pull_hosts(&settings, &mut |progress| {
            eprintln!("{}", progress.progress_line());
        })
        .await
    });
    match result {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("rookery: {failure}");
            print!("{}", failure.summary);
            ExitCode::from(1)
        }
    }
}

/// `--help`/`--version` print as usual; usage errors become one line, exit status 2.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = e.to_string();
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("rookery: {first} (see rookery --help)");
    ExitCode::from(2)
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("rookery: {e}");
    ExitCode::from(2)
}

/// Level from ROOKERY_LOG, else RUST_LOG, else `info`; text or JSON lines on stderr.
/// An unreadable filter is a configuration error (the one-sentence message is returned).
fn init_logging(format: LogFormat) -> Result<(), String> {
    let (source, directives) = match (std::env::var("ROOKERY_LOG"), std::env::var("RUST_LOG")) {
        (Ok(v), _) if !v.trim().is_empty() => ("ROOKERY_LOG", v),
        (_, Ok(v)) if !v.trim().is_empty() => ("RUST_LOG", v),
        _ => ("ROOKERY_LOG", "info".to_string()),
    };
    let filter = EnvFilter::try_new(&directives).map_err(|e| {
        format!("invalid {source} \"{directives}\": expected a filter such as info or rookery=debug ({e})")
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn log_effective_config(summary: &[(&'static str, String)]) {
    for (option, value) in summary {
        tracing::info!(option = *option, value = %value, "configuration");
    }
}

/// Starts the embedded cluster when no URL is configured; returns it (if any) and the
/// connection settings.
fn open_database(
    storage: &StorageConfig,
) -> Result<(Option<ManagedPostgres>, tokio_postgres::Config), RunError> {
    match &storage.database {
        DatabaseTarget::External(url) => Ok((None, url.pg_config().clone())),
        DatabaseTarget::Managed { bin_dir } => {
            let postgres = ManagedPostgres::start(
                &storage.data_dir.join("postgres"),
                &StartOptions {
                    bin_dir: bin_dir.clone(),
                    ephemeral: false,
                },
            )?;
            let pg_config = postgres.pg_config("postgres");
            Ok((Some(postgres), pg_config))
        }
    }
}

fn migrate(storage: StorageConfig) -> Result<(), RunError> {
    log_effective_config(&storage.summary());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let (managed, pg_config) = open_database(&storage)?;
    let result = runtime.block_on(async {
        let db = Db::new(pg_config, storage.db)?;
        let report = migrations::migrate(&db).await?;
        db.close();
        Ok::<_, RunError>(report)
    });
    if let Some(postgres) = managed {
        postgres.stop()?;
    }
    let report = result?;
    tracing::info!(
        applied = ?report.applied,
        already_applied = report.already_applied,
        "migrations done"
    );
    Ok(())
}

fn serve(config: Config) -> Result<(), RunError> {
    let system = actix_rt::System::new();
    let result = system.block_on(run_relay(config));
    actix_rt::System::current().stop();
    result
}

async fn run_relay(config: Config) -> Result<(), RunError> {
    // Install the handlers first, so a signal during startup is not fatal by default and is
    // handled once startup completes.
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| RunError::Signal("SIGTERM", e))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| RunError::Signal("SIGINT", e))?;

    tracing::info!(version = env!("CARGO_PKG_VERSION"), "rookery starting");
    log_effective_config(&config.summary());
    let metrics = Metrics::new()?;

    // The event log first: it is the relay's memory, it takes a lock that keeps a second
    // relay off this data dir, and recovery must finish before anything is sequenced.
    let (event_log, recovery) = EventLog::open(config.event_log.clone())?;
    tracing::info!(
        segments = recovery.segments,
        last_intact_seq = ?recovery.last_intact_seq,
        next_seq = recovery.next_seq,
        bytes_truncated = recovery.bytes_truncated,
        records_dropped = recovery.records_dropped,
        rebuilt_indexes = recovery.rebuilt_indexes,
        "event log recovered"
    );
    if recovery.bytes_truncated > 0 {
        tracing::warn!(
            bytes = recovery.bytes_truncated,
            records = recovery.records_dropped,
            "event log tail was torn or corrupt and was truncated"
        );
    }
    let log_admin = event_log.admin();
    metrics
        .registry()
        .register(Box::new(EventLogCollector::new(log_admin.clone())?))?;
    let retention = spawn_retention(log_admin, RETENTION_INTERVAL).map_err(RunError::Retention)?;

    let (managed, pg_config) = open_database(&config.storage)?;
    let db = Db::new(pg_config.clone(), config.storage.db)?;
    // The public API's own small pool: API load never takes the write-behind's connections,
    // and a slow API query is cut short.
    let api_db = Db::new(
        pg_config,
        DbSettings {
            pool_size: 4,
            statement_timeout: std::time::Duration::from_secs(5),
            ..config.storage.db
        },
    )?;
    let report = migrations::migrate(&db).await?;
    tracing::info!(
        applied = ?report.applied,
        already_applied = report.already_applied,
        "database schema is current"
    );

    // Ingest: the host table is loaded and every host that is not banned or idle is dialled
    // over the startup ramp; the event log now belongs to the Persister.
    let actor_metrics = ActorMetrics::register(metrics.registry())?;
    let pipeline = start_pipeline(
        event_log,
        db.clone(),
        config.pipeline.clone(),
        system_clock(),
        &actor_metrics,
        metrics.registry(),
    )
    .await?;
    let readiness = Readiness::new(pipeline.ingest.degraded.clone()).with_ingest(
        pipeline.ingest.durable_head.clone(),
        pipeline.host_counts.clone(),
    );
    // The firehose out follows the Persister's durable head; sessions read the log.
    let firehose = std::sync::Arc::new(rookery::actors::firehose::start_firehose(
        pipeline.ingest.reader.clone(),
        pipeline.ingest.durable_head.clone(),
        config.firehose,
        &actor_metrics,
        metrics.registry(),
    )?);
    // Takedowns mask the ring the firehose serves live sessions from.
    pipeline.accounts.attach_firehose(firehose.ring_masks());
    let firehose_routes = http::subscribe_repos::routes(&firehose);
    let sync_api = http::sync::SyncApi::new(api_db.clone());
    // requestCrawl admission: the public route and the crawl admin routes share one state.
    // Its reads are short API reads, so it shares the API's pool.
    let admission = AdmissionState::load(
        api_db.clone(),
        pipeline.supervisor.clone(),
        std::sync::Arc::new(SystemDns),
        config.crawl,
        CrawlMetrics::register(metrics.registry())?,
    )
    .await?;
    let admin_auth = http::admin::AdminAuth::new(config.admin_passwords.iter().map(|p| p.expose()));
    if !admin_auth.enabled() {
        tracing::warn!("no --admin-password configured: the admin API is disabled (answers 503)");
    }
    let admin_api = http::admin::AdminApi {
        auth: admin_auth,
        supervisor: pipeline.supervisor.clone(),
        accounts: pipeline.accounts.clone(),
        firehose: firehose.clone(),
        db: api_db.clone(),
    };

    let settings = config.http;
    let request_metrics = http::RequestMetrics::register(metrics.registry())?;
    let routes_readiness = readiness.clone();
    let (public, public_addrs) = http::start_public(
        settings.bind,
        settings
            .public_listener()
            .with_metrics(&request_metrics, "public"),
        move |cfg| {
            configure_readiness(cfg, routes_readiness.clone());
            firehose_routes(cfg);
            http::sync::configure(cfg, sync_api.clone());
            http::request_crawl::configure(cfg, admission.clone());
            let admin_crawl = admission.clone();
            http::admin::configure(cfg, admin_api.clone(), move |admin| {
                http::admin::crawl::configure(admin, admin_crawl)
            });
        },
    )
    .map_err(|source| RunError::Listen {
        option: "bind",
        addr: settings.bind,
        source,
    })?;
    let (metrics_server, metrics_addrs) = http::metrics::start_metrics(
        settings.metrics_bind,
        metrics.registry().clone(),
        settings
            .metrics_listener()
            .with_metrics(&request_metrics, "metrics"),
    )
    .map_err(|source| RunError::Listen {
        option: "metrics-bind",
        addr: settings.metrics_bind,
        source,
    })?;
    let public_handle = public.handle();
    let metrics_handle = metrics_server.handle();
    let mut public_task = actix_rt::spawn(public);
    let mut metrics_task = actix_rt::spawn(metrics_server);
    readiness.set_ready();
    tracing::info!(public = ?public_addrs, metrics = ?metrics_addrs, "rookery is serving");

    let outcome = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM received, shutting down"); Ok(()) }
        _ = sigint.recv() => { tracing::info!("SIGINT received, shutting down"); Ok(()) }
        r = &mut public_task => Err(RunError::ServerExited("public", describe_exit(r))),
        r = &mut metrics_task => Err(RunError::ServerExited("metrics", describe_exit(r))),
    };

    // Consumers first: each session closes its own socket with 1001, then the servers stop.
    let still_open = firehose.shutdown(settings.shutdown_timeout).await;
    if still_open > 0 {
        tracing::warn!(
            still_open,
            "firehose consumers still open after the shutdown timeout"
        );
    }
    public_handle.stop(true).await;
    metrics_handle.stop(true).await;
    // Subscribers stop, shards finish what is queued, everything sequenced is made durable,
    // cursors and account state are written; then the log is closed.
    pipeline.shutdown().await;
    retention.stop();
    api_db.close();
    db.close();
    drop(db);
    if let Some(postgres) = managed {
        postgres.stop()?;
    }
    tracing::info!("rookery stopped");
    outcome
}

fn describe_exit(result: Result<std::io::Result<()>, actix_rt::task::JoinError>) -> String {
    match result {
        Ok(Ok(())) => "it exited".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}
