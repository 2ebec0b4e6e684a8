//! The service manager's notification protocol (sd_notify(3)), in a few lines over a unix
//! datagram socket.
//!
//! systemd passes the address of its notification socket in `NOTIFY_SOCKET`: a path, or an
//! abstract name written with a leading `@`. Each message is one datagram of
//! newline-separated `KEY=value` assignments: `READY=1` (start-up finished: `Type=notify`
//! units become active only then), `STATUS=...` (one line shown by `systemctl status`),
//! `WATCHDOG=1` (the keep-alive `WatchdogSec=` expects) and `STOPPING=1`. The watchdog
//! interval arrives in `WATCHDOG_USEC`, and `WATCHDOG_PID`, when set, names the process it
//! is meant for.
//!
//! Why no crate: the protocol is one `sendto(2)`; the standard library has the datagram
//! socket and abstract addresses, so this needs neither `unsafe` nor libc. Without
//! `NOTIFY_SOCKET` (a terminal, a test, another supervisor) every call is a no-op.
//!
//! Sends never block: the socket is non-blocking, and a notification that cannot be sent
//! (the manager's queue is full, it went away) is dropped and logged, sampled. Losing one
//! `STATUS=` costs nothing; losing pings for a whole `WatchdogSec` restarts the relay,
//! which is what a relay that cannot reach its manager should expect anyway.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use crate::actors::obs::LogSample;

/// The environment variable holding the notification socket's address.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog timeout in microseconds (set by systemd when `WatchdogSec=` is).
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The pid the watchdog settings are meant for, when systemd sets it.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Why `NOTIFY_SOCKET` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an abstract @name")]
    UnsupportedAddress(String),
    #[error("NOTIFY_SOCKET {addr:?}: {source}")]
    Socket { addr: String, source: io::Error },
}

/// Why the watchdog settings in the environment were ignored.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchdogEnvError {
    #[error("WATCHDOG_USEC {0:?} is not a positive number of microseconds")]
    BadUsec(String),
    #[error("WATCHDOG_PID {0:?} is not a pid")]
    BadPid(String),
}

/// Sends notifications to the service manager, or nothing when there is none. Cheap to
/// clone; every clone sends through the same socket.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// The address as configured, for log lines.
    shown: String,
    failures: LogSample,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// From `NOTIFY_SOCKET`; disabled when it is unset or empty.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        match std::env::var_os(NOTIFY_SOCKET) {
            Some(value) if !value.is_empty() => Notifier::connect(&value),
            _ => Ok(Notifier::disabled()),
        }
    }

    /// Notifies the socket at `address` (`/path` or `@abstract-name`).
    pub fn connect(address: &OsStr) -> Result<Notifier, NotifyError> {
        let shown = address.to_string_lossy().into_owned();
        let bytes = address.as_bytes();
        let socket_error = |source| NotifyError::Socket {
            addr: shown.clone(),
            source,
        };
        let addr = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(address).map_err(socket_error)?,
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).map_err(socket_error)?,
            _ => return Err(NotifyError::UnsupportedAddress(shown)),
        };
        let socket = UnixDatagram::unbound().map_err(socket_error)?;
        socket.set_nonblocking(true).map_err(socket_error)?;
        Ok(Notifier {
            target: Some(Arc::new(Target {
                socket,
                addr,
                shown,
                failures: LogSample::new(),
            })),
        })
    }

    /// True when notifications go somewhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1` with a status line: start-up is finished.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STATUS=`: what `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    /// `WATCHDOG=1`: the keep-alive.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// `STOPPING=1` with a status line: shutdown began.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// Sends `message` (newline-separated assignments); failures are logged, sampled.
    pub fn notify(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(error) = target.socket.send_to_addr(message.as_bytes(), &target.addr)
            && let Some(seen) = target.failures.hit()
        {
            tracing::warn!(socket = %target.shown, %error, seen, "service manager notification not sent");
        }
    }
}

/// A `STATUS=` value is one line: the protocol separates assignments with newlines.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// The watchdog timeout systemd expects pings within, from `WATCHDOG_USEC` and
/// `WATCHDOG_PID` of this process's environment. See [`watchdog_timeout`].
pub fn watchdog_timeout_from_env() -> Result<Option<Duration>, WatchdogEnvError> {
    let usec = std::env::var(WATCHDOG_USEC).ok();
    let pid = std::env::var(WATCHDOG_PID).ok();
    watchdog_timeout(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// The watchdog timeout from the two variables' values: `None` when `usec` is unset, or
/// when `pid` names another process (the settings were inherited from a parent that is
/// itself supervised). Pings are due at half of it (sd_watchdog_enabled(3)).
pub fn watchdog_timeout(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Result<Option<Duration>, WatchdogEnvError> {
    let Some(usec) = usec.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let micros: u64 = usec
        .trim()
        .parse()
        .ok()
        .filter(|&m| m > 0)
        .ok_or_else(|| WatchdogEnvError::BadUsec(usec.to_string()))?;
    if let Some(pid) = pid.filter(|p| !p.is_empty()) {
        let pid: u32 = pid
            .trim()
            .parse()
            .map_err(|_| WatchdogEnvError::BadPid(pid.to_string()))?;
        if pid != own_pid {
            return Ok(None);
        }
    }
    Ok(Some(Duration::from_micros(micros)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notifications_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::connect(path.as_os_str()).unwrap();
        assert!(notifier.is_enabled());
        notifier.ready("ready: 1 host\nconnected");
        assert_eq!(
            receive(&listener),
            "READY=1\nSTATUS=ready: 1 host connected"
        );
        notifier.watchdog();
        assert_eq!(receive(&listener), "WATCHDOG=1");
        notifier.stopping("stopping");
        assert_eq!(receive(&listener), "STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        let name = format!("rookery-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier::connect(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.status("hello");
        assert_eq!(receive(&listener), "STATUS=hello");
    }

    #[test]
    fn no_socket_means_no_op_and_odd_addresses_are_refused() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.ready("nothing happens");
        assert!(matches!(
            Notifier::connect(OsStr::new("vsock:2:1234")),
            Err(NotifyError::UnsupportedAddress(_))
        ));
        assert!(matches!(
            Notifier::connect(OsStr::new("")),
            Err(NotifyError::UnsupportedAddress(_))
        ));
        // A socket nobody listens on: the send fails, and is only logged.
        let dir = tempfile::tempdir().unwrap();
        let gone = Notifier::connect(dir.path().join("nobody").as_os_str()).unwrap();
        gone.watchdog();
    }

    #[test]
    fn watchdog_settings_follow_sd_watchdog_enabled() {
        let me = 4242;
        assert_eq!(watchdog_timeout(None, None, me), Ok(None));
        assert_eq!(watchdog_timeout(Some(""), None, me), Ok(None));
        assert_eq!(
            watchdog_timeout(Some("30000000"), None, me),
            Ok(Some(Duration::from_secs(30)))
        );
        assert_eq!(
            watchdog_timeout(Some("1000000"), Some("4242"), me),
            Ok(Some(Duration::from_secs(1)))
        );
        // Meant for another process (inherited from a supervised parent).
        assert_eq!(watchdog_timeout(Some("1000000"), Some("17"), me), Ok(None));
        assert_eq!(
            watchdog_timeout(Some("0"), None, me),
            Err(WatchdogEnvError::BadUsec("0".into()))
        );
        assert_eq!(
            watchdog_timeout(Some("soon"), None, me),
            Err(WatchdogEnvError::BadUsec("soon".into()))
        );
        assert_eq!(
            watchdog_timeout(Some("1000000"), Some("me"), me),
            Err(WatchdogEnvError::BadPid("me".into()))
        );
    }
}
