//! Configuration of the event log: where it lives, how it syncs, how big segments get,
//! and the retention policy it hands to the admin handle. Plain data; parsed from the
//! command line in `crate::config`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::retention::RetentionPolicy;

/// Name of the directory under the data dir that holds the segments.
pub const EVENTS_DIR: &str = "events";

/// When the writer syncs appended data to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` after every appended batch before reporting it durable (default).
    #[default]
    EveryBatch,
    /// Sync when at least this long passed since the last sync; in between, appends
    /// return the previous durable head. Call [`super::EventLog::flush`] on a timer.
    Interval(Duration),
    /// Never sync; appended data is published at once. For benchmarks only: a crash
    /// can lose records that readers already saw.
    None,
}

/// Error parsing a [`SyncPolicy`] string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid sync policy {0:?}: expected every-batch, interval:<ms> or none")]
pub struct ParseSyncPolicyError(pub String);

impl FromStr for SyncPolicy {
    type Err = ParseSyncPolicyError;

    /// Accepts `every-batch`, `none` and `interval:<ms>` (e.g. `interval:5`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseSyncPolicyError(s.to_string());
        match s {
            "every-batch" => Ok(SyncPolicy::EveryBatch),
            "none" => Ok(SyncPolicy::None),
            _ => {
                let ms = s.strip_prefix("interval:").ok_or_else(bad)?;
                let ms = ms.strip_suffix("ms").unwrap_or(ms);
                let ms: u64 = ms.parse().map_err(|_| bad())?;
                Ok(SyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncPolicy::EveryBatch => f.write_str("every-batch"),
            SyncPolicy::None => f.write_str("none"),
            SyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// Configuration of the event log.
#[derive(Clone, Debug)]
pub struct EventLogConfig {
    /// The relay's data dir; segments live in `<data_dir>/events/`.
    pub data_dir: PathBuf,
    /// Roll to a new segment before a record would make the current one larger.
    pub segment_max_bytes: u64,
    /// Roll to a new segment after this many records.
    pub segment_max_records: u64,
    pub sync: SyncPolicy,
    /// Floor for the next seq after recovery (never lower than 1).
    pub initial_seq: u64,
    pub retention: RetentionPolicy,
    /// Distance in bytes between sparse index entries.
    pub index_interval_bytes: u64,
}

impl EventLogConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> EventLogConfig {
        EventLogConfig {
            data_dir: data_dir.into(),
            segment_max_bytes: 256 * 1024 * 1024,
            segment_max_records: 1_000_000,
            sync: SyncPolicy::EveryBatch,
            initial_seq: 1,
            retention: RetentionPolicy::default(),
            index_interval_bytes: 64 * 1024,
        }
    }

    pub fn events_dir(&self) -> PathBuf {
        self.data_dir.join(EVENTS_DIR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_policy_parses_and_displays() {
        assert_eq!("every-batch".parse(), Ok(SyncPolicy::EveryBatch));
        assert_eq!("none".parse(), Ok(SyncPolicy::None));
        assert_eq!(
            "interval:250".parse(),
            Ok(SyncPolicy::Interval(Duration::from_millis(250)))
        );
        assert_eq!(
            "interval:5ms".parse(),
            Ok(SyncPolicy::Interval(Duration::from_millis(5)))
        );
        for bad in [
            "",
            "every",
            "interval:",
            "interval:x",
            "interval:-1",
            "NONE",
        ] {
            assert!(bad.parse::<SyncPolicy>().is_err(), "{bad}");
        }
        for p in [
            SyncPolicy::EveryBatch,
            SyncPolicy::None,
            SyncPolicy::Interval(Duration::from_millis(7)),
        ] {
            assert_eq!(p.to_string().parse(), Ok(p));
        }
    }
}
