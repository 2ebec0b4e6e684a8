//! The benchmarks of `rookery-fleet bench`: the real `rookery serve` (the binary next to the
//! running one) on a throwaway data dir and database whose host table already names every
//! host of the fleet, so the relay's start is the cold start of a relay that knows ~3,000
//! hosts. From its first answer a probe ([`Probe`]) hits `/_health` every 250 ms (timeout
//! 1 s) for the whole run, and `/_readyz` is read every second for `hosts.connected`;
//! progress goes to stderr every few seconds.
//!
//! - `ramp` → seconds from the relay's spawn until 99% of the reachable hosts are
//!   connected, `/_health` p50/p99/max and failures from its first answer to the end of the
//!   ramp (refusals before it listens are its start, not failures), hosts connected at the
//!   end.
//! - `memory` → the relay's RSS (`VmRSS` of `/proc/<pid>/status`) once every reachable host
//!   is connected and the fleet has been idle for [`IDLE_BEFORE_RSS`].
//! - `ingest` ([`ingest`]), `fanout` ([`fanout`]) and `replay` ([`replay`]): see their
//!   modules.
//!
//! The database is the `DATABASE_URL` of the environment if set (it is migrated and its
//! `hosts` table filled; give an empty database), else a fresh database in the testkit's
//! throwaway cluster. Other `ROOKERY_*` variables reach the relay unchanged (e.g.
//! `ROOKERY_STARTUP_SPREAD`, whose production default of 20 s is what `ramp` measures
//! unless set). Every loop is bounded by the run's deadline.
//!
//! **A relay already running** ([`external`]): with [`BenchOptions::external`] the benches
//! measure that relay instead (no database, no spawn): the fleet's hosts are added through
//! its requestCrawl, and what needs the relay's process is `None` (RSS, CPU) or skipped
//! (`chaos`'s restart); `memory` and `replay` refuse.
//!
//! **Transport** ([`Transport`]): over `wss` (the default of the binary, as on the network)
//! the fleet serves TLS with its own CA, the hosts are stored with `no_ssl = false`, and the
//! relay is started with `ROOKERY_UPSTREAM_CA_FILE` naming the fleet's CA file; over `ws`
//! everything is plain.

mod chaos;
pub mod external;
mod fanout;
mod ingest;
mod replay;

pub use chaos::{CHECKER_RECONNECTS, ChaosOptions, ChaosResult, chaos};
pub use external::{ExternalRelay, ExternalRelaySettings, HostsAdded};
pub use fanout::{
    CHILD_COMMAND, ConsumersReport, FanoutOptions, FanoutResult, fanout, run_consumers,
};
pub use ingest::{IngestOptions, IngestResult, IngestStep, ingest, validate_full_micros};
pub use replay::{ReplayOptions, ReplayResult, replay};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Fleet, FleetOptions, HostFaults, HostTable};
use crate::sim::checker::{Checker, ExpectationFeed, Stop};
use crate::sim::fleet::driver::publish_once_per_account;
use crate::sim::probe::{DEFAULT_HEALTH_PATH, Probe, ProbeReport, ProbeSettings};
use crate::store::migrations;
use crate::store::postgres::{Db, DbSettings};

/// The account limit of the fleet's hosts in the relay's table (above
/// [`super::table::MAX_ACCOUNTS_PER_HOST`]).
const HOST_ACCOUNT_LIMIT: i64 = 1_000_000;
/// Lines of the relay's log quoted when it exits early.
const LOG_TAIL_LINES: usize = 15;
/// How often a starting relay is asked whether it listens yet.
const LISTEN_POLL: Duration = Duration::from_millis(250);
/// Timeout of the benches' own requests (`/_readyz`, the first `/_health`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the fleet idles, all hosts connected, before `memory` reads the RSS.
pub const IDLE_BEFORE_RSS: Duration = Duration::from_secs(5);
/// How often progress is printed.
pub(crate) const PROGRESS_PERIOD: Duration = Duration::from_secs(3);

/// What a benchmark run is given.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Hosts of a generated table (ignored with `table`).
    pub hosts: usize,
    /// A table file instead of a generated one.
    pub table: Option<PathBuf>,
    /// Seed of the generated table.
    pub seed: u64,
    /// The run gives up after this long.
    pub timeout: Duration,
    /// The relay binary (default: `rookery` next to the running executable).
    pub relay_bin: Option<PathBuf>,
    /// Extra environment of the relay (e.g. `ROOKERY_STARTUP_SPREAD`), after the bench's own.
    pub relay_env: Vec<(String, String)>,
    /// Host faults added to the table (generated or loaded).
    pub host_faults: HostFaults,
    /// How the relay reaches the hosts.
    pub transport: Transport,
    /// A relay already running, measured instead of a spawned `rookery serve`.
    pub external: Option<ExternalRelaySettings>,
    /// The fleet's PLC directory's port (`0`: any); a relay already running resolves the
    /// fleet's DIDs there.
    pub plc_port: u16,
}

impl BenchOptions {
    /// A generated table of `hosts` hosts, seed 1, a 5 minute timeout, the default relay.
    pub fn new(hosts: usize) -> BenchOptions {
        BenchOptions {
            hosts,
            table: None,
            seed: 1,
            timeout: Duration::from_secs(300),
            relay_bin: None,
            relay_env: Vec::new(),
            host_faults: HostFaults::default(),
            transport: Transport::Wss,
            external: None,
            plc_port: 0,
        }
    }

    /// Fails for a bench that needs the relay's process when the relay is not spawned.
    pub fn require_spawned(&self, bench: &str, why: &str) -> Result<(), BenchError> {
        match &self.external {
            None => Ok(()),
            Some(external) => Err(BenchError::Relay(format!(
                "{bench} cannot measure the relay at {}: {why}",
                external.url
            ))),
        }
    }

    /// Sets `key` in the relay's environment unless this process's environment has it.
    pub fn default_relay_env(&mut self, key: &str, value: &str) {
        if std::env::var_os(key).is_none() {
            self.relay_env.push((key.to_string(), value.to_string()));
        }
    }
}

/// How the relay reaches the fleet's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Plain `ws://` (and `http://`).
    Ws,
    /// `wss://` (and `https://`) with the fleet's CA.
    Wss,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// The fleet's options for this transport.
    pub fn fleet_options(self) -> FleetOptions {
        FleetOptions {
            tls: self == Transport::Wss,
            ..FleetOptions::default()
        }
    }
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Table(#[from] super::TableError),
    #[error(transparent)]
    Fleet(#[from] super::FleetError),
    #[error("database: {0}")]
    Db(String),
    #[error("relay: {0}")]
    Relay(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What `ramp` measured.
#[derive(Debug, Clone)]
pub struct RampResult {
    pub transport: Transport,
    pub hosts: usize,
    pub reachable: usize,
    pub fleet_start_s: f64,
    /// From the spawn to the first `/_health` answer (`None`: never answered, or a relay
    /// already running).
    pub seconds_to_listen: Option<f64>,
    /// From the spawn (a relay already running: from the first host submitted); `None`:
    /// 99% was never reached before the deadline.
    pub seconds_to_99pct: Option<f64>,
    pub seconds_to_all: Option<f64>,
    pub hosts_connected: u64,
    pub fleet_connected: usize,
    /// `/_health` from the relay's first answer to the end of the ramp.
    pub health: ProbeReport,
    /// The relay's RSS when the ramp ended, in MB (`None`: not this bench's process).
    pub rss_mb: Option<f64>,
    /// How adding the hosts to a relay already running went (`None`: spawned, the hosts
    /// were in its database).
    pub hosts_added: Option<HostsAdded>,
}

impl RampResult {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": "ramp",
            "transport": self.transport.as_str(),
            "hosts": self.hosts,
            "reachable": self.reachable,
            "seconds_to_listen": self.seconds_to_listen,
            "seconds_to_99pct": self.seconds_to_99pct,
            "seconds_to_all": self.seconds_to_all,
            "health_p50_ms": round2(self.health.p50_ms),
            "health_p99_ms": round2(self.health.p99_ms),
            "health_max_ms": round2(self.health.max_ms),
            "health_failures": self.health.failures,
            "health_probes": self.health.requests,
            "hosts_connected": self.hosts_connected,
            "fleet_connected": self.fleet_connected,
            "rss_mb": self.rss_mb.map(round2),
            "hosts_added": self.hosts_added.as_ref().map(|a| a.added),
            "hosts_add_failed": self.hosts_added.as_ref().map(HostsAdded::failed_total),
            "hosts_add_failures": self.hosts_added.as_ref().map(|a| &a.failed),
            "hosts_limits_failed": self.hosts_added.as_ref().map(|a| a.limits_failed),
        })
    }

    pub fn table(&self) -> String {
        let secs = |s: Option<f64>| s.map_or("never".to_string(), |s| format!("{s:.1} s"));
        let added = match &self.hosts_added {
            None => String::new(),
            Some(a) => format!(
                "hosts added (requestCrawl)  {} ({} failed {:?}, {} limits not raised)\n",
                a.added,
                a.failed_total(),
                a.failed,
                a.limits_failed
            ),
        };
        format!(
            "ramp: {} hosts ({} reachable) over {}, fleet started in {:.1} s\n\
             {added}\
             seconds to first /_health  {}\n\
             seconds to 99% connected   {}\n\
             seconds to all connected   {}\n\
             hosts connected (relay)    {}\n\
             hosts connected (fleet)    {}\n\
             /_health p50 / p99 / max   {:.1} / {:.1} / {:.1} ms\n\
             /_health failures          {} of {}\n\
             relay RSS at the end       {}",
            self.hosts,
            self.reachable,
            self.transport.as_str(),
            self.fleet_start_s,
            match &self.hosts_added {
                Some(_) => "n/a (the relay was already running)".to_string(),
                None => secs(self.seconds_to_listen),
            },
            secs(self.seconds_to_99pct),
            secs(self.seconds_to_all),
            self.hosts_connected,
            self.fleet_connected,
            self.health.p50_ms,
            self.health.p99_ms,
            self.health.max_ms,
            self.health.failures,
            self.health.requests,
            mb(self.rss_mb),
        )
    }
}

/// What `memory` measured.
#[derive(Debug, Clone)]
pub struct MemoryResult {
    pub hosts: u64,
    pub rss_mb: f64,
    pub ramp: RampResult,
}

impl MemoryResult {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": "memory",
            "transport": self.ramp.transport.as_str(),
            "rss_mb": round2(self.rss_mb),
            "hosts": self.hosts,
            "table_hosts": self.ramp.hosts,
            "seconds_to_all": self.ramp.seconds_to_all,
        })
    }

    pub fn table(&self) -> String {
        format!(
            "memory: {} hosts connected and idle ({} in the table)\n\
             relay RSS                  {:.1} MB\n\
             per connected host         {:.1} KB",
            self.hosts,
            self.ramp.hosts,
            self.rss_mb,
            if self.hosts > 0 {
                self.rss_mb * 1024.0 / self.hosts as f64
            } else {
                0.0
            },
        )
    }
}

/// A size in MB for a table, or why there is none.
pub(crate) fn mb(value: Option<f64>) -> String {
    value.map_or_else(|| NOT_OUR_PROCESS.to_string(), |v| format!("{v:.1} MB"))
}

/// What a table says of a figure of a relay already running.
pub(crate) const NOT_OUR_PROCESS: &str = "n/a (the relay is not this bench's process)";

pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Runs `ramp`. Must be called inside an actix System.
pub async fn ramp(options: &BenchOptions) -> Result<RampResult, BenchError> {
    let (result, relay, fleet) = ramp_and_keep(options).await?;
    drop(relay);
    fleet.stop().await;
    Ok(result)
}

/// Runs `memory`: a ramp, then [`IDLE_BEFORE_RSS`] of idle, then the relay's RSS.
pub async fn memory(options: &BenchOptions) -> Result<MemoryResult, BenchError> {
    options.require_spawned(
        "memory",
        "its RSS is read from the process this bench spawns",
    )?;
    let (ramp, relay, fleet) = ramp_and_keep(options).await?;
    eprintln!(
        "all reachable hosts connected; idling {} s before reading RSS",
        IDLE_BEFORE_RSS.as_secs()
    );
    actix_rt::time::sleep(IDLE_BEFORE_RSS).await;
    let hosts = relay
        .connected(&fleet)
        .await
        .unwrap_or(ramp.hosts_connected);
    let rss_mb = relay
        .rss_mb()?
        .ok_or_else(|| BenchError::Relay("no RSS of a relay not spawned".into()))?;
    drop(relay);
    fleet.stop().await;
    Ok(MemoryResult {
        hosts,
        rss_mb,
        ramp,
    })
}

/// The relay a bench measures: `rookery serve` spawned by the bench, or one already running.
pub enum Relay {
    Spawned(RelayProcess),
    External(ExternalRelay),
}

impl Relay {
    /// The public listener's address (the firehose's).
    pub fn addr(&self) -> std::net::SocketAddr {
        match self {
            Relay::Spawned(p) => p.addr(),
            Relay::External(e) => e.addr(),
        }
    }

    /// Whether the health path answers 200.
    pub async fn answers_health(&self) -> bool {
        match self {
            Relay::Spawned(p) => p.answers_health().await,
            Relay::External(e) => e.answers_health().await,
        }
    }

    /// Starts the shared health probe on this relay.
    pub fn probe(&self) -> Probe {
        match self {
            Relay::Spawned(p) => p.probe(),
            Relay::External(e) => e.probe(),
        }
    }

    /// Hosts connected, as the relay says (`/_readyz`, `--connected-path`) or else as the
    /// fleet sees it.
    pub async fn connected(&self, fleet: &Fleet) -> Option<u64> {
        match self {
            Relay::Spawned(p) => p.connected().await,
            Relay::External(e) => e.connected(fleet).await,
        }
    }

    /// Fails if a spawned relay has exited (one already running is not watched).
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self {
            Relay::Spawned(p) => p.check_alive(),
            Relay::External(_) => Ok(()),
        }
    }

    /// The process, when this bench spawned it.
    pub fn process(&mut self) -> Option<&mut RelayProcess> {
        match self {
            Relay::Spawned(p) => Some(p),
            Relay::External(_) => None,
        }
    }

    pub fn rss_mb(&self) -> Result<Option<f64>, BenchError> {
        match self {
            Relay::Spawned(p) => p.rss_mb().map(Some),
            Relay::External(_) => Ok(None),
        }
    }

    pub fn cpu_seconds(&self) -> Result<Option<f64>, BenchError> {
        match self {
            Relay::Spawned(p) => p.cpu_seconds().map(Some),
            Relay::External(_) => Ok(None),
        }
    }
}

/// A relay child process and its throwaway data dir; killed and removed when dropped.
pub struct RelayProcess {
    child: Child,
    launch: Launch,
    dir: PathBuf,
    client: awc::Client,
}

/// How the relay is started (again, after [`RelayProcess::kill_and_restart`]).
struct Launch {
    bin: PathBuf,
    database_url: String,
    plc_url: String,
    env: Vec<(String, String)>,
    port: u16,
    metrics_port: u16,
}

impl RelayProcess {
    /// Starts `rookery serve` on `database_url` with the PLC at `plc_url`.
    pub fn spawn(
        bin: &Path,
        database_url: &str,
        plc_url: &str,
        env: &[(String, String)],
    ) -> Result<Self, BenchError> {
        RelayProcess::spawn_in(RelayProcess::new_dir()?, bin, database_url, plc_url, env)
    }

    /// A fresh throwaway directory for [`RelayProcess::spawn_in`]; the relay's data dir is
    /// its `data` subdirectory.
    pub fn new_dir() -> std::io::Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!(
            "rookery-fleet-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Like [`RelayProcess::spawn`], in `dir` (from [`RelayProcess::new_dir`], maybe with a
    /// prepared data dir); `dir` is removed when the relay is dropped or fails to start.
    pub fn spawn_in(
        dir: PathBuf,
        bin: &Path,
        database_url: &str,
        plc_url: &str,
        env: &[(String, String)],
    ) -> Result<Self, BenchError> {
        let launch = (|| {
            Ok::<_, BenchError>(Launch {
                bin: bin.to_path_buf(),
                database_url: database_url.to_string(),
                plc_url: plc_url.to_string(),
                env: env.to_vec(),
                port: free_port()?,
                metrics_port: free_port()?,
            })
        })();
        match launch.and_then(|launch| Ok((RelayProcess::start_child(&dir, &launch)?, launch))) {
            Ok((child, launch)) => Ok(RelayProcess {
                child,
                launch,
                dir,
                client: awc::Client::builder().timeout(REQUEST_TIMEOUT).finish(),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn start_child(dir: &Path, launch: &Launch) -> Result<Child, BenchError> {
        // Appended: after a restart the log holds both runs.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("relay.log"))?;
        Command::new(&launch.bin)
            .args(["serve", "--data-dir"])
            .arg(dir.join("data"))
            .env("DATABASE_URL", &launch.database_url)
            .env("ROOKERY_BIND", format!("127.0.0.1:{}", launch.port))
            .env(
                "ROOKERY_METRICS_BIND",
                format!("127.0.0.1:{}", launch.metrics_port),
            )
            .env("ROOKERY_PLC_URL", &launch.plc_url)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| BenchError::Relay(format!("starting {}: {e}", launch.bin.display())))
    }

    /// SIGKILLs the relay and starts it again on the same data dir, database and ports.
    pub fn kill_and_restart(&mut self) -> Result<(), BenchError> {
        self.child.kill()?;
        self.child.wait()?;
        self.child = RelayProcess::start_child(&self.dir, &self.launch)?;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("relay.log")
    }

    /// Fails if the relay has exited.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => {
                // The log goes with the data dir: quote its end.
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
                Err(BenchError::Relay(format!(
                    "exited with {status}; the end of its log:\n{tail}"
                )))
            }
        }
    }

    /// The public listener's address (the firehose's).
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.launch.port))
    }

    /// Whether `/_health` answers 200 (the relay listens).
    pub async fn answers_health(&self) -> bool {
        let url = format!("http://127.0.0.1:{}{DEFAULT_HEALTH_PATH}", self.launch.port);
        matches!(self.client.get(url).send().await, Ok(r) if r.status().is_success())
    }

    /// Starts the shared `/_health` probe on this relay.
    pub fn probe(&self) -> Probe {
        Probe::start(ProbeSettings::new(format!(
            "http://127.0.0.1:{}{DEFAULT_HEALTH_PATH}",
            self.launch.port
        )))
    }

    /// `hosts.connected` of `/_readyz` (`None` while it does not answer with it).
    pub async fn connected(&self) -> Option<u64> {
        let url = format!("http://127.0.0.1:{}/_readyz", self.launch.port);
        let mut response = self.client.get(url).send().await.ok()?;
        let body = response.body().limit(64 * 1024).await.ok()?;
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        value["hosts"]["connected"].as_u64()
    }

    /// User + system CPU seconds the relay has used (`/proc/<pid>/stat`).
    pub fn cpu_seconds(&self) -> Result<f64, BenchError> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command's closing parenthesis; utime and stime are the 12th and
        // 13th of them, in clock ticks (100 per second on Linux).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        match (ticks(11), ticks(12)) {
            (Some(user), Some(system)) => Ok((user + system) / 100.0),
            _ => Err(BenchError::Relay("unreadable /proc/<pid>/stat".into())),
        }
    }

    /// The relay's resident set size in MB.
    pub fn rss_mb(&self) -> Result<f64, BenchError> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .ok_or_else(|| BenchError::Relay("no VmRSS in /proc/<pid>/status".into()))?;
        Ok(kb / 1024.0)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// The relay binary: `rookery` next to the running executable.
pub fn default_relay_bin() -> Result<PathBuf, BenchError> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| BenchError::Relay("the executable has no directory".into()))?;
    Ok(dir.join("rookery"))
}

/// The warm-up of `ingest` and `fanout`: one commit from every account, handed to the
/// checker through `feed`, until all are delivered or `deadline`: afterwards every identity
/// is resolved and every account's state stored, as in a relay that has run for a while
/// (cold, the first seconds measure PLC lookups: 2–4 s of delivery latency). Returns its
/// seconds.
pub(crate) async fn warm_up(
    fleet: &Fleet,
    checker: &mut Checker,
    feed: &ExpectationFeed,
    deadline: Instant,
) -> f64 {
    let begun = Instant::now();
    let events = publish_once_per_account(fleet, feed).await;
    checker.run_until(deadline.into(), Stop::WhenAllSeen).await;
    let seconds = begun.elapsed().as_secs_f64();
    eprintln!(
        "warm-up: one commit from each of {events} accounts, delivered in {seconds:.1} s \
         (missing {})",
        checker.report().missing
    );
    seconds
}

/// A migrated database whose `hosts` table names `hostnames` (admin-added, plain `ws://` when `no_ssl`, else
/// `wss://`, with an
/// account limit above any table's, as an operator sets for the large PDSes it knows: the
/// default limit of a new host would throttle the fleet's large hosts); returns the URL the
/// relay connects with.
pub(crate) async fn prepare_database(
    hostnames: &[String],
    no_ssl: bool,
) -> Result<String, BenchError> {
    let db_err = |e: &dyn std::fmt::Display| BenchError::Db(e.to_string());
    let (pg_config, url) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (
            url.parse::<tokio_postgres::Config>()
                .map_err(|e| db_err(&e))?,
            url,
        ),
        _ => {
            let cluster = crate::testkit::postgres::try_test_cluster().map_err(|e| db_err(&e))?;
            let database = cluster.fresh_database().await.map_err(|e| db_err(&e))?;
            (database.pg_config, database.connection_string)
        }
    };
    let db = Db::new(pg_config, DbSettings::default()).map_err(|e| db_err(&e))?;
    migrations::migrate(&db).await.map_err(|e| db_err(&e))?;
    let client = db.client().await.map_err(|e| db_err(&e))?;
    client
        .execute(
            "INSERT INTO hosts (hostname, no_ssl, admin_added, account_limit) \
             SELECT h, $2, true, $3 FROM unnest($1::text[]) AS h",
            &[&hostnames, &no_ssl, &HOST_ACCOUNT_LIMIT],
        )
        .await
        .map_err(|e| db_err(&e))?;
    Ok(url)
}

/// `rookery serve` on a throwaway database naming the fleet's hosts.
async fn spawn_on(fleet: &Fleet, options: &BenchOptions) -> Result<RelayProcess, BenchError> {
    eprintln!("preparing the relay's database");
    let database_url = prepare_database(&fleet.hostnames(), fleet.ca_file().is_none()).await?;
    let bin = match &options.relay_bin {
        Some(bin) => bin.clone(),
        None => default_relay_bin()?,
    };
    let mut env = options.relay_env.clone();
    if let Some(ca) = fleet.ca_file() {
        env.push((
            "ROOKERY_UPSTREAM_CA_FILE".to_string(),
            ca.display().to_string(),
        ));
    }
    RelayProcess::spawn(&bin, &database_url, &fleet.plc.url(), &env)
}

/// The ramp, returning the relay and the fleet still running (for `memory`).
pub(crate) async fn ramp_and_keep(
    options: &BenchOptions,
) -> Result<(RampResult, Relay, Fleet), BenchError> {
    super::super::install_crypto_provider();
    let mut table = match &options.table {
        Some(path) => HostTable::load(path)?,
        None => HostTable::generate(options.hosts, options.seed),
    };
    options
        .host_faults
        .apply(&mut table)
        .map_err(BenchError::Relay)?;
    eprintln!(
        "starting a fleet of {} hosts ({} accounts)",
        table.hosts.len(),
        table.total_accounts()
    );
    // Checked before the fleet starts: a URL it cannot use fails at once.
    let external = options
        .external
        .clone()
        .map(ExternalRelay::new)
        .transpose()?;
    let fleet_options = FleetOptions {
        plc_port: options.plc_port,
        ..options.transport.fleet_options()
    };
    let fleet = Fleet::start(&table, fleet_options).await?;
    let reachable = fleet.reachable();
    eprintln!("fleet up in {:.1} s", fleet.started_in.as_secs_f64());
    let mut relay = match external {
        None => Relay::Spawned(spawn_on(&fleet, options).await?),
        Some(relay) => {
            eprintln!(
                "measuring the relay at {} (already running): it must resolve did:plc at {}{}",
                relay.url(),
                fleet.plc.url(),
                fleet.ca_file().map_or(String::new(), |ca| format!(
                    " and trust the fleet's CA, {} (its hosts serve wss)",
                    ca.display()
                )),
            );
            if !relay.answers_health().await {
                return Err(BenchError::Relay(format!(
                    "the relay at {} does not answer 200 on its health path",
                    relay.url(),
                )));
            }
            Relay::External(relay)
        }
    };
    let begun = Instant::now();
    let deadline = begun + options.timeout;
    let target_99 = (reachable as f64 * 0.99).ceil() as u64;
    let mut connected = 0u64;
    let mut seconds_to_99pct = None;
    let mut seconds_to_all = None;
    let mut ticks = tokio::time::interval(LISTEN_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Until its first answer the relay is starting, not failing: the ramp's clock runs from
    // the spawn, the health figures from the moment it listens.
    let mut listening_after = None;
    while listening_after.is_none() && Instant::now() < deadline {
        ticks.tick().await;
        relay.check_alive()?;
        if relay.answers_health().await {
            listening_after = Some(begun.elapsed().as_secs_f64());
        }
    }
    let probe = relay.probe();
    let hosts_added = match &relay {
        Relay::Spawned(_) => None,
        Relay::External(external) => Some(
            external
                .add_hosts(&fleet.hostnames(), options.transport, deadline)
                .await,
        ),
    };
    let mut next_progress = Instant::now() + PROGRESS_PERIOD;
    // Probes after everything connected: the ramp's tail is part of what is measured.
    let mut settle_until = None;
    let mut readyz = tokio::time::interval(Duration::from_secs(1));
    readyz.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while listening_after.is_some() && Instant::now() < deadline {
        readyz.tick().await;
        relay.check_alive()?;
        if let Some(c) = relay.connected(&fleet).await {
            connected = c;
        }
        let now = Instant::now();
        let elapsed = begun.elapsed().as_secs_f64();
        if seconds_to_99pct.is_none() && connected >= target_99 {
            seconds_to_99pct = Some(elapsed);
        }
        if seconds_to_all.is_none() && connected >= reachable as u64 {
            seconds_to_all = Some(elapsed);
            settle_until = Some(now + Duration::from_secs(2));
        }
        if now >= next_progress {
            next_progress = now + PROGRESS_PERIOD;
            let health = probe.snapshot();
            eprintln!(
                "{:>6.1} s  hosts connected {connected}/{reachable} (fleet view {})  \
                 /_health p99 {:.1} ms, {} failures",
                begun.elapsed().as_secs_f64(),
                fleet.connected(),
                health.p99_ms,
                health.failures,
            );
        }
        if settle_until.is_some_and(|until| now >= until) {
            break;
        }
    }
    let result = RampResult {
        transport: options.transport,
        hosts: table.hosts.len(),
        reachable,
        fleet_start_s: fleet.started_in.as_secs_f64(),
        // A relay already running was listening before the bench.
        seconds_to_listen: listening_after.filter(|_| options.external.is_none()),
        seconds_to_99pct,
        seconds_to_all,
        hosts_connected: connected,
        fleet_connected: fleet.connected(),
        health: probe.stop().await,
        rss_mb: relay.rss_mb()?,
        hosts_added,
    };
    Ok((result, relay, fleet))
}
