//! Wall-clock time as the log stores it: unix milliseconds.
//!
//! The one place that converts a [`SystemTime`] into the `u64` kept in record headers and
//! compared by retention. Nothing here reads the clock: callers pass the time in
//! (`append_at`, `retain_once(now)`), so tests control it; only the convenience
//! [`super::EventLog::append`] reads `SystemTime::now()` before calling in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch; 0 before the epoch, `u64::MAX` past its range.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn converts_and_saturates() {
        assert_eq!(unix_ms(UNIX_EPOCH), 0);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1234)), 1234);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
