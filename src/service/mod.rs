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
