//! Running as a service (systemd, ops/): what the relay tells its service manager, and
//! how it stops.
//!
//! - [`notify`]: the sd_notify protocol over the unix datagram socket in `NOTIFY_SOCKET`
//!   (`READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`); a no-op without one.
//! - [`watchdog`]: `WATCHDOG=1` only while the ingest pipeline makes progress (the Sequencer
//!   and Persister answer, neither halted, the durable head moves when events wait), and the
//!   `STATUS=` line (hosts connected, consumers, seq head).
//! - [`shutdown`]: one deadline for the whole graceful shutdown, stage by stage.
//! - [`logging`]: stderr output for a terminal, a file, a log shipper or the journal.
//! - [`open_files_warning`]: the start-up check that the open-files limit fits the
//!   consumers and hosts (a shell's default of 1,024 does not).
//!
//! Why its own layer: it reads the actors' state (the watchdog's probe, the status line) but
//! the actors know nothing of service managers, and `config` fills [`ServiceSettings`] like
//! every other subsystem's settings. `main` wires it: READY once the event log is open, the
//! pipeline runs and the listeners are bound (the moment `/_readyz` turns 200), the loop
//! until a signal, then the bounded shutdown.

pub mod logging;
pub mod notify;
pub mod shutdown;
pub mod watchdog;

use std::time::Duration;

/// Settings of running as a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceSettings {
    /// Bound of the whole graceful shutdown (`--shutdown-timeout`).
    pub shutdown_timeout: Duration,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            shutdown_timeout: shutdown::DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// Descriptors kept for everything but consumers: upstream hosts (thousands), event log
/// segments, the pools, the embedded Postgres.
pub const OPEN_FILES_BESIDES_CONSUMERS: u64 = 4_096;

/// The soft open-files limit of this process (`Max open files` in `/proc/self/limits`);
/// `None` when unknown or unlimited.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&limits)
}

/// The soft limit from the text of `/proc/<pid>/limits`.
pub fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One sentence for the log when `limit` cannot hold `max_consumers` consumers plus
/// [`OPEN_FILES_BESIDES_CONSUMERS`]; connections past the limit would fail to open.
pub fn open_files_warning(limit: Option<u64>, max_consumers: usize) -> Option<String> {
    let limit = limit?;
    let needed = max_consumers as u64 + OPEN_FILES_BESIDES_CONSUMERS;
    (limit < needed).then(|| {
        format!(
            "the open-files limit ({limit}) is below --max-consumers ({max_consumers}) plus \
             {OPEN_FILES_BESIDES_CONSUMERS} for hosts, the event log and Postgres: raise it \
             (LimitNOFILE= in the unit, ulimit -n) to at least {needed}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_read_and_checked() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), None);
        let warning = open_files_warning(Some(1024), 5000).expect("too low");
        assert!(
            warning.contains("(1024)") && warning.contains("9096"),
            "{warning}"
        );
        assert_eq!(open_files_warning(Some(65536), 5000), None);
        assert_eq!(open_files_warning(None, 5000), None);
        assert!(open_files_limit().is_some(), "this process has a limit");
    }
}
