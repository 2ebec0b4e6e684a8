//! The benchmarks `ramp` and `memory`: the real `rookery serve` (the binary next to the
//! running one) on a throwaway data dir and database whose host table already names every
//! host of the fleet, so the relay's start is the cold start of a relay that knows ~3,000
//! hosts. While it ramps, a probe hits `/_health` every 250 ms (timeout 1 s) and `/_readyz`
//! every second for `hosts.connected`; progress goes to stderr every few seconds.
//!
//! - `ramp` → seconds from the relay's spawn until 99% of the reachable hosts are
//!   connected, `/_health` p50/p99/max and failures from its first answer to the end of the
//!   ramp (refusals before it listens are its start, not failures), hosts connected at the
//!   end.
//! - `memory` → the relay's RSS (`VmRSS` of `/proc/<pid>/status`) once every reachable host
//!   is connected and the fleet has been idle for [`IDLE_BEFORE_RSS`].
//!
//! The database is the `DATABASE_URL` of the environment if set (it is migrated and its
//! `hosts` table filled; give an empty database), else a fresh database in the testkit's
//! throwaway cluster. Other `ROOKERY_*` variables reach the relay unchanged (e.g.
//! `ROOKERY_STARTUP_SPREAD`, whose production default of 30 s is what `ramp` measures
//! unless set). Every loop is bounded by the run's deadline.
//!
//! **Transport** ([`Transport`]): over `wss` (the default of the binary, as on the network)
//! the fleet serves TLS with its own CA, the hosts are stored with `no_ssl = false`, and the
//! relay is started with `ROOKERY_UPSTREAM_CA_FILE` naming the fleet's CA file; over `ws`
//! everything is plain.
//!
//! The probe here is the benchmarks' own small loop; the shared probe of `sim::probe` will
//! replace it when it lands.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Fleet, FleetOptions, HostTable};
use crate::store::migrations;
use crate::store::postgres::{Db, DbSettings};

/// How often `/_health` is probed.
pub const HEALTH_PERIOD: Duration = Duration::from_millis(250);
/// A probe slower than this is a failure.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the fleet idles, all hosts connected, before `memory` reads the RSS.
pub const IDLE_BEFORE_RSS: Duration = Duration::from_secs(5);
/// How often progress is printed.
const PROGRESS_PERIOD: Duration = Duration::from_secs(3);

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
    /// How the relay reaches the hosts.
    pub transport: Transport,
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

/// `/_health` latencies and failures of one run.
#[derive(Debug, Clone, Default)]
pub struct HealthStats {
    latencies_ms: Vec<f64>,
    pub failures: u64,
}

impl HealthStats {
    fn record(&mut self, result: Result<Duration, ()>) {
        match result {
            Ok(latency) => self.latencies_ms.push(latency.as_secs_f64() * 1000.0),
            Err(()) => self.failures += 1,
        }
    }

    /// The `q` quantile (0–1) of successful probes' latencies in ms (0 with none).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    pub fn max_ms(&self) -> f64 {
        self.latencies_ms.iter().copied().fold(0.0, f64::max)
    }

    pub fn probes(&self) -> usize {
        self.latencies_ms.len() + self.failures as usize
    }
}

/// What `ramp` measured.
#[derive(Debug, Clone)]
pub struct RampResult {
    pub transport: Transport,
    pub hosts: usize,
    pub reachable: usize,
    pub fleet_start_s: f64,
    /// From the spawn to the first `/_health` answer (`None`: never answered).
    pub seconds_to_listen: Option<f64>,
    /// From the spawn; `None`: 99% was never reached before the deadline.
    pub seconds_to_99pct: Option<f64>,
    pub seconds_to_all: Option<f64>,
    pub hosts_connected: u64,
    pub fleet_connected: usize,
    pub health: HealthStats,
    /// The relay's RSS when the ramp ended, in MB.
    pub rss_mb: f64,
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
            "health_p50_ms": round2(self.health.quantile_ms(0.5)),
            "health_p99_ms": round2(self.health.quantile_ms(0.99)),
            "health_max_ms": round2(self.health.max_ms()),
            "health_failures": self.health.failures,
            "health_probes": self.health.probes(),
            "hosts_connected": self.hosts_connected,
            "fleet_connected": self.fleet_connected,
            "rss_mb": round2(self.rss_mb),
        })
    }

    pub fn table(&self) -> String {
        let secs = |s: Option<f64>| s.map_or("never".to_string(), |s| format!("{s:.1} s"));
        format!(
            "ramp: {} hosts ({} reachable) over {}, fleet started in {:.1} s\n\
             seconds to first /_health  {}\n\
             seconds to 99% connected   {}\n\
             seconds to all connected   {}\n\
             hosts connected (relay)    {}\n\
             hosts connected (fleet)    {}\n\
             /_health p50 / p99 / max   {:.1} / {:.1} / {:.1} ms\n\
             /_health failures          {} of {}\n\
             relay RSS at the end       {:.1} MB",
            self.hosts,
            self.reachable,
            self.transport.as_str(),
            self.fleet_start_s,
            secs(self.seconds_to_listen),
            secs(self.seconds_to_99pct),
            secs(self.seconds_to_all),
            self.hosts_connected,
            self.fleet_connected,
            self.health.quantile_ms(0.5),
            self.health.quantile_ms(0.99),
            self.health.max_ms(),
            self.health.failures,
            self.health.probes(),
            self.rss_mb,
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

fn round2(x: f64) -> f64 {
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
    let (ramp, relay, fleet) = ramp_and_keep(options).await?;
    eprintln!(
        "all reachable hosts connected; idling {} s before reading RSS",
        IDLE_BEFORE_RSS.as_secs()
    );
    actix_rt::time::sleep(IDLE_BEFORE_RSS).await;
    let hosts = relay.connected().await.unwrap_or(ramp.hosts_connected);
    let rss_mb = relay.rss_mb()?;
    drop(relay);
    fleet.stop().await;
    Ok(MemoryResult {
        hosts,
        rss_mb,
        ramp,
    })
}

/// A relay child process and its throwaway data dir; killed and removed when dropped.
pub struct RelayProcess {
    child: Child,
    port: u16,
    dir: PathBuf,
    client: awc::Client,
}

impl RelayProcess {
    /// Starts `rookery serve` on `database_url` with the PLC at `plc_url`, trusting the CA in
    /// `upstream_ca` (a fleet's, [`Fleet::ca_file`]) when given.
    pub fn spawn(
        bin: &Path,
        database_url: &str,
        plc_url: &str,
        upstream_ca: Option<&Path>,
    ) -> Result<Self, BenchError> {
        let dir = std::env::temp_dir().join(format!(
            "rookery-fleet-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let metrics_port = free_port()?;
        let log = std::fs::File::create(dir.join("relay.log"))?;
        let child = Command::new(bin)
            .args(["serve", "--data-dir"])
            .arg(dir.join("data"))
            .env("DATABASE_URL", database_url)
            .env("ROOKERY_BIND", format!("127.0.0.1:{port}"))
            .env("ROOKERY_METRICS_BIND", format!("127.0.0.1:{metrics_port}"))
            .env("ROOKERY_PLC_URL", plc_url)
            .envs(upstream_ca.map(|ca| ("ROOKERY_UPSTREAM_CA_FILE", ca)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| BenchError::Relay(format!("starting {}: {e}", bin.display())))?;
        Ok(RelayProcess {
            child,
            port,
            dir,
            client: awc::Client::builder().timeout(HEALTH_TIMEOUT).finish(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("relay.log")
    }

    /// Fails if the relay has exited.
    fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(BenchError::Relay(format!(
                "exited with {status}; its log: {}",
                self.log_path().display()
            ))),
        }
    }

    /// One `/_health` probe: its latency, or `Err` on a timeout, a refused connection or a
    /// status other than 200.
    async fn health(&self) -> Result<Duration, ()> {
        let begun = Instant::now();
        let url = format!("http://127.0.0.1:{}/_health", self.port);
        match self.client.get(url).send().await {
            Ok(mut response) if response.status().is_success() => {
                // The body is tiny; reading it is part of the answer.
                response.body().limit(4096).await.map_err(|_| ())?;
                Ok(begun.elapsed())
            }
            _ => Err(()),
        }
    }

    /// `hosts.connected` of `/_readyz` (`None` while it does not answer with it).
    pub async fn connected(&self) -> Option<u64> {
        let url = format!("http://127.0.0.1:{}/_readyz", self.port);
        let mut response = self.client.get(url).send().await.ok()?;
        let body = response.body().limit(64 * 1024).await.ok()?;
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        value["hosts"]["connected"].as_u64()
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

/// A migrated database whose `hosts` table names `hostnames` (admin-added, plain `ws://`
/// when `no_ssl`, else `wss://`); returns the URL the relay connects with.
async fn prepare_database(hostnames: &[String], no_ssl: bool) -> Result<String, BenchError> {
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
            "INSERT INTO hosts (hostname, no_ssl, admin_added) \
             SELECT h, $2, true FROM unnest($1::text[]) AS h",
            &[&hostnames, &no_ssl],
        )
        .await
        .map_err(|e| db_err(&e))?;
    Ok(url)
}

/// The ramp, returning the relay and the fleet still running (for `memory`).
async fn ramp_and_keep(
    options: &BenchOptions,
) -> Result<(RampResult, RelayProcess, Fleet), BenchError> {
    super::super::install_crypto_provider();
    let table = match &options.table {
        Some(path) => HostTable::load(path)?,
        None => HostTable::generate(options.hosts, options.seed),
    };
    eprintln!(
        "starting a fleet of {} hosts ({} accounts)",
        table.hosts.len(),
        table.total_accounts()
    );
    let fleet = Fleet::start(&table, options.transport.fleet_options()).await?;
    let reachable = fleet.reachable();
    eprintln!(
        "fleet up in {:.1} s; preparing the relay's database",
        fleet.started_in.as_secs_f64()
    );
    let database_url = prepare_database(&fleet.hostnames(), fleet.ca_file().is_none()).await?;
    let bin = match &options.relay_bin {
        Some(bin) => bin.clone(),
        None => default_relay_bin()?,
    };
    let mut relay = RelayProcess::spawn(&bin, &database_url, &fleet.plc.url(), fleet.ca_file())?;
    let begun = Instant::now();
    let deadline = begun + options.timeout;
    let target_99 = (reachable as f64 * 0.99).ceil() as u64;
    let mut health = HealthStats::default();
    let mut connected = 0u64;
    let mut seconds_to_99pct = None;
    let mut seconds_to_all = None;
    let mut ticks = tokio::time::interval(HEALTH_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_readyz = begun;
    let mut next_progress = begun + PROGRESS_PERIOD;
    // Probes after everything connected: the ramp's tail is part of what is measured.
    let mut settle_until = None;
    let mut listening_after = None;
    while Instant::now() < deadline {
        ticks.tick().await;
        relay.check_alive()?;
        let probe = relay.health().await;
        // Until its first answer the relay is starting, not failing: the ramp's clock runs
        // from the spawn, the health figures from the moment it listens.
        if listening_after.is_none() && probe.is_ok() {
            listening_after = Some(begun.elapsed().as_secs_f64());
        }
        if listening_after.is_some() {
            health.record(probe);
        }
        let now = Instant::now();
        if now >= next_readyz {
            next_readyz = now + Duration::from_secs(1);
            if let Some(c) = relay.connected().await {
                connected = c;
            }
            let elapsed = begun.elapsed().as_secs_f64();
            if seconds_to_99pct.is_none() && connected >= target_99 {
                seconds_to_99pct = Some(elapsed);
            }
            if seconds_to_all.is_none() && connected >= reachable as u64 {
                seconds_to_all = Some(elapsed);
                settle_until = Some(now + Duration::from_secs(2));
            }
        }
        if now >= next_progress {
            next_progress = now + PROGRESS_PERIOD;
            eprintln!(
                "{:>6.1} s  hosts connected {connected}/{reachable} (fleet view {})  \
                 /_health p99 {:.1} ms, {} failures",
                begun.elapsed().as_secs_f64(),
                fleet.connected(),
                health.quantile_ms(0.99),
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
        seconds_to_listen: listening_after,
        seconds_to_99pct,
        seconds_to_all,
        hosts_connected: connected,
        fleet_connected: fleet.connected(),
        health,
        rss_mb: relay.rss_mb()?,
    };
    Ok((result, relay, fleet))
}
