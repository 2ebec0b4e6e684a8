//! The `rookery` binary: `serve` runs the relay, `migrate` applies the schema and exits,
//! `pull-hosts` copies another relay's host list into a running relay.
//!
//! Exit codes: 0 after a clean run or a SIGTERM/SIGINT shutdown (for `pull-hosts`: the walk
//! ran to its end, refused hosts included); 2 for invalid configuration (one sentence on
//! stderr naming the option, a data dir that cannot be created or written included); 1 when
//! something fails at run time (database unreachable, port taken, the source relay or the
//! target relay unreachable...), and when a shutdown was cut short (`--shutdown-timeout`
//! expired, or a second signal). Nothing here panics on operator input.
//!
//! Under systemd (`ops/rookery.service`, `Type=notify`), `READY=1` is sent once the event
//! log is open, the pipeline runs and the listeners are bound (when `/_readyz` turns 200);
//! the `service` loop then pings the watchdog while ingest makes progress and keeps
//! `STATUS=` current.
//!
//! Shutdown order matters, so nothing is lost and no part outlives what it depends on, all
//! within `--shutdown-timeout` (each stage gets what is left):
//! 1. stop accepting: `/_readyz` says `stopping`, the firehose refuses new consumers, the
//!    public listener accepts no new connections (so no new crawls either);
//! 2. stop ingest: Subscribers stop, the validator shards drain, everything sequenced is
//!    persisted and synced, host cursors and account state are flushed to Postgres, the
//!    event log closes;
//! 3. close consumers with 1001 (they have had everything that became durable);
//! 4. stop the HTTP servers, close the pools, stop the embedded Postgres (always, even
//!    when the bound expired).
//!
//! A second SIGTERM/SIGINT during the sequence exits at once (status 1), after logging what
//! was unfinished and stopping the embedded Postgres without a checkpoint.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

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
use rookery::service::notify::{self, Notifier};
use rookery::service::shutdown::{BoundedShutdown, ShutdownExpired};
use rookery::service::watchdog::{PipelineProbe, StatusSources, start_service_loop};
use rookery::service::{self, logging};
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
    #[error(transparent)]
    ShutdownExpired(#[from] ShutdownExpired),
    #[error("{signal} received again during shutdown: exited at once; unfinished: {unfinished}")]
    ShutdownInterrupted {
        signal: &'static str,
        unfinished: String,
    },
}

impl RunError {
    /// The shutdown was cut short: stuck stages may still hold threads (a Persister in
    /// `fdatasync`, a join waiting for it) that dropping the runtime would wait for.
    fn cut_short(&self) -> bool {
        matches!(
            self,
            RunError::ShutdownExpired(_) | RunError::ShutdownInterrupted { .. }
        )
    }
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
    if let Err(sentence) = logging::init(storage.log_format) {
        eprintln!("rookery: {sentence}");
        return ExitCode::from(2);
    }
    let result = match serve_config {
        Some(config) => serve(config),
        None => migrate(storage),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => run_failed(&e),
    }
}

fn run_failed(e: &RunError) -> ExitCode {
    tracing::error!(error = %e, "rookery stopped with an error");
    eprintln!("rookery: {e}");
    ExitCode::from(1)
}

/// `rookery pull-hosts`: progress lines on stderr every few seconds, the summary on stdout.
fn pull_hosts(args: &PullHostsArgs) -> ExitCode {
    let settings = match pull_hosts_settings(args, std::env::var("ROOKERY_ADMIN_PASSWORD").ok()) {
        Ok(settings) => settings,
        Err(e) => return config_error(&e),
    };
    if let Err(sentence) = logging::init(LogFormat::Text) {
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
    if let Err(e) = &result
        && e.cut_short()
    {
        // Exit now: what is stuck stays stuck, and recovery at the next start handles it.
        run_failed(e);
        std::process::exit(1);
    }
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
    let (notifier, watchdog) = service_manager();
    if let Some(warning) =
        service::open_files_warning(service::open_files_limit(), config.firehose.max_consumers)
    {
        tracing::warn!("{warning}");
    }
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
    // One pass before ingest: a relay restarted after its disk filled up (the watchdog
    // restarts it sooner than the thread's first pass) frees space under a lowered
    // --replay-window or --event-log-max-size before it appends again.
    match log_admin.retain_once(std::time::SystemTime::now()) {
        Ok(r) if r.segments_deleted > 0 => tracing::info!(
            segments = r.segments_deleted,
            bytes = r.bytes_freed,
            "event log retention deleted segments"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, reason = e.reason(), "event log retention failed"),
    }
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

    // Ingest: the host table is loaded and every host that is not banned is dialled
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
    let status = StatusSources {
        hosts: pipeline.host_counts.clone(),
        firehose: firehose.clone(),
        postgres_degraded: pipeline.ingest.degraded.clone(),
    };
    notifier.ready(&status.line(
        &service::watchdog::Verdict::Progressing,
        *pipeline.ingest.durable_head.borrow(),
    ));
    let service_loop = start_service_loop(
        notifier.clone(),
        watchdog,
        PipelineProbe::new(&pipeline.ingest),
        status,
    );

    let outcome = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM received, shutting down"); Ok(()) }
        _ = sigint.recv() => { tracing::info!("SIGINT received, shutting down"); Ok(()) }
        r = &mut public_task => Err(RunError::ServerExited("public", describe_exit(r))),
        r = &mut metrics_task => Err(RunError::ServerExited("metrics", describe_exit(r))),
    };
    service_loop.stop();
    notifier.stopping("stopping: shutdown began");

    let shutdown = BoundedShutdown::start(config.service.shutdown_timeout, notifier.clone());
    let progress = shutdown.progress();
    let sequence = async {
        shutdown
            .stage("stop accepting consumers and connections", async {
                readiness.set_stopping();
                firehose.stop_admitting();
                public_handle.pause().await;
            })
            .await;
        retention.stop();
        shutdown
            .stage(
                "stop ingest",
                pipeline.shutdown_observed(&|step| progress.set_step(step.describe())),
            )
            .await;
        let remaining = shutdown.remaining();
        if let Some(still_open) = shutdown
            .stage("close consumers with 1001", firehose.shutdown(remaining))
            .await
            && still_open > 0
        {
            tracing::warn!(
                still_open,
                "firehose consumers still open after the shutdown timeout"
            );
        }
        shutdown
            .stage("stop the HTTP servers", async {
                public_handle.stop(true).await;
                metrics_handle.stop(true).await;
            })
            .await;
    };
    let second_signal = tokio::select! {
        () = sequence => None,
        _ = sigterm.recv() => Some("SIGTERM"),
        _ = sigint.recv() => Some("SIGINT"),
    };
    api_db.close();
    db.close();
    drop(db);
    if let Some(signal) = second_signal {
        let unfinished = progress
            .current()
            .unwrap_or_else(|| "between stages".to_string());
        tracing::error!(signal, unfinished = %unfinished, "second signal: exiting at once");
        if let Some(postgres) = managed
            && let Err(e) = postgres.stop_immediately()
        {
            tracing::error!(error = %e, "stopping the embedded Postgres failed");
        }
        return Err(RunError::ShutdownInterrupted { signal, unfinished });
    }
    let finished = shutdown.finish();
    // Always, even when the bound expired: the cluster must not outlive the relay.
    if let Some(postgres) = managed {
        postgres.stop()?;
    }
    let took = finished?;
    tracing::info!(took = ?took, "rookery stopped");
    outcome
}

/// The service manager's notification socket and watchdog timeout, from the environment.
/// Unusable settings are logged and ignored: the relay runs without them.
fn service_manager() -> (Notifier, Option<std::time::Duration>) {
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "not notifying the service manager");
        Notifier::disabled()
    });
    let watchdog = notify::watchdog_timeout_from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "watchdog settings ignored");
        None
    });
    if notifier.is_enabled() {
        tracing::info!(watchdog = ?watchdog, "notifying the service manager");
    }
    (notifier, watchdog)
}

fn describe_exit(result: Result<std::io::Result<()>, actix_rt::task::JoinError>) -> String {
    match result {
        Ok(Ok(())) => "it exited".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}
