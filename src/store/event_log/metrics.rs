//! Prometheus view of the event log: gauges read from [`LogStats`] at scrape time.
//!
//! Why a collector rather than gauges updated by the writer: the numbers are already kept
//! by the log (atomics and the segment list), so reading them when Prometheus asks costs
//! nothing on the append path and can never go stale.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, Opts};

use super::admin::EventLogAdmin;
use super::state::LogStats;

/// Registers as one collector; every scrape reads the log's current stats.
pub struct EventLogCollector {
    admin: EventLogAdmin,
    oldest_seq: IntGauge,
    newest_seq: IntGauge,
    bytes: IntGauge,
    segments: IntGauge,
    records: IntGauge,
}

impl EventLogCollector {
    pub fn new(admin: EventLogAdmin) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| IntGauge::with_opts(Opts::new(name, help));
        Ok(EventLogCollector {
            admin,
            oldest_seq: gauge(
                "rookery_event_log_oldest_seq",
                "Oldest seq still stored in the event log (0 when empty).",
            )?,
            newest_seq: gauge(
                "rookery_event_log_newest_seq",
                "Newest durable seq in the event log (0 when empty).",
            )?,
            bytes: gauge("rookery_event_log_bytes", "Bytes in event log segments.")?,
            segments: gauge("rookery_event_log_segments", "Event log segment files.")?,
            records: gauge("rookery_event_log_records", "Records in the event log.")?,
        })
    }

    fn gauges(&self) -> [&IntGauge; 5] {
        [
            &self.oldest_seq,
            &self.newest_seq,
            &self.bytes,
            &self.segments,
            &self.records,
        ]
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for EventLogCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges().into_iter().flat_map(|g| g.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let LogStats {
            oldest_seq,
            newest_seq,
            total_bytes,
            segment_count,
            record_count,
        } = self.admin.stats();
        self.oldest_seq.set(clamp(oldest_seq.unwrap_or(0)));
        self.newest_seq.set(clamp(newest_seq.unwrap_or(0)));
        self.bytes.set(clamp(total_bytes));
        self.segments.set(clamp(segment_count as u64));
        self.records.set(clamp(record_count));
        self.gauges()
            .into_iter()
            .flat_map(|g| g.collect())
            .collect()
    }
}
