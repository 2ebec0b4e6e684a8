//! The simulator: PDS hosts and a PLC directory that a relay under test connects to over real
//! HTTP and websockets on 127.0.0.1. It is the one test PDS of the project: the integration
//! tests use it, and the `rookery-fleet` binary grows it to thousands of hosts with faults.
//!
//! - [`plc`]: [`SimPlc`], a PLC directory (`GET /<did>` → DID document, 404, 410) that tests
//!   mutate while it serves (register, rotate key, move PDS, change handle, tombstone) and
//!   that counts its requests.
//! - [`pds`]: [`SimPds`], one PDS host per port: `subscribeRepos` with an outbox and cursor
//!   replay, `describeServer`, `getRepoStatus`, and a control API that creates accounts and
//!   emits signed sync-1.1 events built by `testkit::repo::SigningRepo`, changes account
//!   status, rotates keys, migrates accounts between hosts, injects raw frames, resets,
//!   stops and restarts the host.
//! - [`SimNetwork`]: one PLC plus N hosts.
//! - [`checker`]: [`checker::Checker`], a consumer of a relay's firehose that knows what the
//!   hosts published and reports coverage: missing, duplicated, reordered and wrongly
//!   delivered events, and delivery latency.
//! - [`probe`]: [`probe::Probe`], asks a health endpoint every 250 ms during a run and reports
//!   latency and failures.
//! - [`latency`]: the fixed-size histogram both report from.
//! - [`tls`]: [`SimTls`], a throwaway CA and the certificate hosts serve `https`/`wss` with.
//! - [`fleet`]: thousands of hosts from a host table (shaped like today's network), an event
//!   driver, and the `ramp`/`memory` benchmarks of the `rookery-fleet` binary.
//!
//! Why a crate module behind the `sim` feature and not test code: the fleet binary and the
//! benches need the same hosts as the tests, and "one way to do each thing" (STYLE.md) rules
//! out a second test PDS. The feature keeps it (and `testkit`, which it builds on) out of
//! production builds.
//!
//! Everything here must be started inside an actix System (`#[actix_rt::test]`,
//! `#[actix_rt::main]`); see the `pds` module doc for the runtime layout and bounds.

pub mod checker;
pub mod consumer;
pub mod fleet;
pub mod latency;
pub mod pds;
pub mod plc;
pub mod probe;
pub mod tls;

pub use pds::{AccountStatus, Forgery, RELAY_SERVER_HEADER, SimError, SimPds, SimPdsConfig};
pub use plc::{PlcEntry, PlcError, SimPlc};
pub use tls::SimTls;

/// Installs rustls's ring crypto provider for the process. With only the `ring` feature,
/// every awc connection (even to `ws://`) panics until a provider is installed. Idempotent.
/// rustls 0.23.48 deprecates the ring provider for lacking post-quantum key exchange; ring is
/// the crate's chosen provider (no cmake), and loopback test traffic needs no post-quantum
/// security.
#[allow(deprecated)]
pub fn install_crypto_provider() {
    // An error means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One PLC directory and `N` PDS hosts registering their accounts in it.
pub struct SimNetwork {
    pub plc: SimPlc,
    pub hosts: Vec<SimPds>,
}

impl SimNetwork {
    /// Starts the PLC and `hosts` PDS hosts with `config`. Must be called inside an actix
    /// System.
    pub fn start(hosts: usize, config: SimPdsConfig) -> std::io::Result<SimNetwork> {
        let plc = SimPlc::start()?;
        let hosts = (0..hosts)
            .map(|_| SimPds::start(&plc, config.clone()))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(SimNetwork { plc, hosts })
    }

    /// Stops every host and the PLC.
    pub async fn stop(&self) {
        for host in &self.hosts {
            host.stop().await;
        }
        self.plc.stop().await;
    }
}
