//! The fleet: one PLC directory and one [`SimPds`] per line of a [`HostTable`], all on
//! 127.0.0.1, their accounts created up front, and an [`EventDriver`] that makes them
//! publish at an aggregate rate. It is what the `rookery-fleet` binary keeps up (`run`) and
//! what its benchmarks point a relay at.
//!
//! - [`table`]: the host table file (one JSON object per host: class, accounts, share of
//!   the event rate, faults), its generator shaped like today's network, and its loader.
//! - [`driver`]: the event driver; [`corpus`]: commits built before a run, for rates
//!   above what signing at run time allows.
//! - [`bench`]: the benchmarks (`ramp`, `memory`): the real `rookery serve` started on a
//!   throwaway database with the fleet's hosts, a `/_health` probe, and a result table.
//!
//! **TLS** ([`FleetOptions::tls`]): the fleet makes one [`SimTls`] (a CA and a `localhost`
//! certificate), every host serves `https`/`wss` with it, and the CA is written to a PEM file
//! ([`Fleet::ca_file`], removed with the fleet) that a relay is given as
//! `--upstream-ca-file`.
//!
//! **Faults** (from the table): a `dead` host is started, given its accounts (so the PLC
//! names it) and stopped, so its port refuses connections for the whole run; a `flapping`
//! host drops its connections every period (the [`EventDriver`] does that on its clock);
//! `accept_then_drop`, `slow` and `claims_relay` hosts are set so when the fleet starts.
//! Faults of events (bad signatures, wrong authority, future revs, oversized and garbage
//! frames, out-of-order seqs) and of hosts over time (a reset that makes a relay's cursor
//! `FutureCursor`, a restart that loses the outbox) are the driver's ([`driver`]).
//!
//! **Cost.** Each host is a `SimPds`: two threads (actix-server's acceptor and one worker)
//! and a handful of file descriptors; see the `pds` module doc and BENCHMARKS.md
//! ("rookery-fleet") for what 3,000 hosts take on this machine.

pub mod bench;
pub mod corpus;
pub mod driver;
pub mod table;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use corpus::{Corpus, CorpusHost};
pub use driver::{DriverStats, EventDriver, EventFaults};
pub use table::{Fault, HostClass, HostFaults, HostSpec, HostTable, TableError};

use super::tls::SimTlsError;
use super::{SimError, SimPds, SimPdsConfig, SimPlc, SimTls};

/// How a fleet is started.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Limits of every host.
    pub pds: SimPdsConfig,
    /// Hosts serve `https`/`wss` with a certificate of the fleet's own CA.
    pub tls: bool,
    /// The PLC directory's port on 127.0.0.1 (`0`: any free port). A relay already running
    /// was started with the directory's URL, so it must be known before the fleet.
    pub plc_port: u16,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            pds: SimPdsConfig {
                // Thousands of hosts: keep each one's replay outbox small (2,000 events are
                // ~6 MB). The byte cap leaves room for a few oversized-fault frames (2.1 MB
                // each): with 4 MB one of them evicted most of a host's outbox, and a relay
                // reconnecting with its cursor then got OutdatedCursor, a loss that is the
                // host's, not the relay's.
                outbox_max_events: 2_000,
                outbox_max_bytes: 16 * 1024 * 1024,
                ..SimPdsConfig::default()
            },
            tls: false,
            plc_port: 0,
        }
    }
}

/// Why a fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("starting host {index}: {source}")]
    Listen {
        index: usize,
        source: std::io::Error,
    },
    #[error("starting the PLC directory: {0}")]
    Plc(std::io::Error),
    #[error("creating an account on host {index}: {source}")]
    Account { index: usize, source: SimError },
    #[error("making the fleet's certificates: {0}")]
    Tls(#[from] SimTlsError),
    #[error("writing the fleet's CA file: {0}")]
    CaFile(std::io::Error),
}

/// The CA's PEM file; removed when dropped.
struct CaFile(PathBuf);

impl CaFile {
    fn write(tls: &SimTls) -> Result<CaFile, FleetError> {
        let path = std::env::temp_dir().join(format!(
            "rookery-fleet-ca-{}-{:08x}.pem",
            std::process::id(),
            rand::random::<u32>()
        ));
        tls.write_ca_pem(&path).map_err(FleetError::CaFile)?;
        Ok(CaFile(path))
    }
}

impl Drop for CaFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One host of the fleet.
pub struct FleetHost {
    pub spec: HostSpec,
    pub pds: SimPds,
    /// Its accounts' DIDs, in creation order.
    pub accounts: Vec<String>,
}

/// A running fleet.
pub struct Fleet {
    pub plc: SimPlc,
    pub hosts: Vec<FleetHost>,
    /// How long [`Fleet::start`] took (listeners, accounts, faults).
    pub started_in: Duration,
    /// The hosts' certificates, with [`FleetOptions::tls`].
    pub tls: Option<SimTls>,
    ca_file: Option<CaFile>,
}

impl Fleet {
    /// Starts the PLC and one host per line of `table`, creates every host's accounts
    /// (each emits `#identity`, `#account`, `#sync`, kept in the host's outbox) and stops
    /// the dead hosts. Must be called inside an actix System.
    pub async fn start(table: &HostTable, mut options: FleetOptions) -> Result<Fleet, FleetError> {
        let begun = Instant::now();
        let tls = if options.tls {
            Some(SimTls::generate()?)
        } else {
            None
        };
        let ca_file = tls.as_ref().map(CaFile::write).transpose()?;
        options.pds.tls = tls.clone();
        let plc = SimPlc::start_on(options.plc_port).map_err(FleetError::Plc)?;
        let mut hosts = Vec::with_capacity(table.hosts.len());
        for (index, spec) in table.hosts.iter().enumerate() {
            let pds = SimPds::start(&plc, options.pds.clone())
                .map_err(|source| FleetError::Listen { index, source })?;
            let accounts = (0..spec.accounts)
                .map(|_| pds.create_account())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| FleetError::Account { index, source })?;
            hosts.push(FleetHost {
                spec: spec.clone(),
                pds,
                accounts,
            });
        }
        for host in &hosts {
            if host.spec.is_dead() {
                host.pds.stop().await;
            }
            host.pds
                .set_accept_then_drop(host.spec.accepts_then_drops());
            host.pds.set_relay_header(host.spec.claims_relay());
            if let Some(ms) = host.spec.frame_delay_ms() {
                host.pds.set_frame_delay(Duration::from_millis(ms));
            }
        }
        Ok(Fleet {
            plc,
            hosts,
            started_in: begun.elapsed(),
            tls,
            ca_file,
        })
    }

    /// The CA's PEM file (with [`FleetOptions::tls`]), for a relay's `--upstream-ca-file`.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_ref().map(|f| f.0.as_path())
    }

    /// Every host's `localhost:<port>` (dead ones included), in table order: the list a
    /// relay is given.
    pub fn hostnames(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.pds.hostname()).collect()
    }

    /// Hosts a relay can subscribe to and stay connected with (not dead, not dropping every
    /// connection, not claiming to be a relay).
    pub fn reachable(&self) -> usize {
        self.hosts.iter().filter(|h| h.spec.delivers()).count()
    }

    /// Hosts with at least one subscriber past its replay: the fleet's own view of how many
    /// hosts a relay is connected to.
    pub fn connected(&self) -> usize {
        self.hosts
            .iter()
            .filter(|h| h.pds.live_connections() > 0)
            .count()
    }

    /// Starts the event driver at `rate` events/s over the table's shares.
    pub fn drive(&self, rate: f64, seed: u64) -> EventDriver {
        EventDriver::start(self, rate, seed)
    }

    /// Stops every host and the PLC.
    pub async fn stop(&self) {
        for host in &self.hosts {
            host.pds.stop().await;
        }
        self.plc.stop().await;
    }
}
