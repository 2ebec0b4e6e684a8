//! The durable event log: append-only segment files under `<data-dir>/events/`.
//!
//! Why this shape (see README "## Event log" for the on-disk format):
//! - **One writer, many readers, no shared lock on the hot path.** The writer
//!   ([`EventLog`]) owns the write descriptor. Readers ([`EventLogReader`], `Clone +
//!   Send + Sync`) use positional reads (`pread`) on their own descriptors and only see
//!   bytes the writer has *published* after syncing them: a per-segment committed length
//!   and one global durable head, both atomics. Locks are held only to look up or push a
//!   segment in the list, never across I/O.
//! - **Two handles, by what they may do.** Every ConsumerSession holds an
//!   [`EventLogReader`], which can only replay and read the durable head and oldest seq.
//!   Retention, takedown masking and statistics are on [`EventLogAdmin`], created only from
//!   the writer ([`EventLog::admin`]) and given to the retention thread, the metrics
//!   collector and the takedown path. Neither handle can be turned into the other.
//! - **Seqs come from the caller.** Record bodies are complete firehose frames that
//!   already contain their seq, so the Sequencer assigns seqs before the Persister
//!   appends; the log only checks that they strictly increase past everything stored and
//!   never accepts a seq twice, even across crashes ([`EventLog::next_seq`]).
//! - **Whole-segment retention** (lesson 7): deleting old data is unlinking files from a
//!   background task; the writer is never stopped and a reader already inside a deleted
//!   segment gets a typed [`EventLogError::Outdated`] on its next batch.
//! - **Masking in place**: a takedown flips one flags byte per record, a byte the checksum
//!   deliberately does not cover, so a flag write can never look like a torn record.
//! - **Failure stance**: after any I/O error the writer truncates its current segment back
//!   to the last committed length (best effort) and refuses further appends
//!   ([`EventLogError::WriterPoisoned`]) until the log is reopened; recovery on open
//!   detects and truncates any torn tail by checksum, so nothing half-written survives.
//!
//! ## Module graph
//! Acyclic; each module imports (`use super::…`) only modules listed before it, which a
//! unit test below checks. This file is the facade: it declares the modules, re-exports
//! the public API and defines [`EventLog::open`] (the one place that calls recovery); no
//! module imports it (doc links may name public items through it).
//! ```text
//! record   error   clock                        leaves: record format, error enum, unix ms
//! segment        <- record                      segment files, sparse index, sidecar, sync_dir
//! markers        <- segment                     DELETED_THROUGH / SEQ_FLOOR marker files
//! state          <- segment                     Shared (segment list, durable head), LogStats
//! reader         <- record segment state error              read-only handle, Replay
//! masking        <- record segment state error              takedown flag rewrite
//! retention      <- clock markers segment state error       policy, plan, one pass
//! admin          <- masking retention state error           EventLogAdmin, retention thread
//! config         <- retention                               EventLogConfig, SyncPolicy
//! metrics        <- admin state                             Prometheus collector
//! writer         <- clock record segment state config error reader admin    EventLog
//! recovery       <- markers segment state config error writer   open: scan, cut, build
//! ```

mod admin;
mod clock;
mod config;
mod error;
mod markers;
mod masking;
mod metrics;
mod reader;
mod record;
mod recovery;
mod retention;
mod segment;
mod state;
mod writer;

pub use admin::{EventLogAdmin, RetentionTask, spawn_retention};
pub use config::{EVENTS_DIR, EventLogConfig, ParseSyncPolicyError, SyncPolicy};
pub use error::EventLogError;
pub use masking::MaskReport;
pub use metrics::EventLogCollector;
pub use reader::{DamageSkip, EventLogReader, Replay};
pub use record::{AppendRecord, FLAG_MASKED, LogRecord, MAX_BODY_LEN, RECORD_HEADER_LEN, did_hash};
pub use recovery::RecoveryReport;
pub use retention::{RetentionPolicy, RetentionReport, SegmentAge, plan_retention};
pub use segment::{SEGMENT_HEADER_LEN, parse_segment_name, segment_file_name};
pub use state::LogStats;
pub use writer::EventLog;

impl EventLog {
    /// Open (creating if needed) the log under `<data_dir>/events/`, recovering the tail.
    /// Defined here rather than in `writer` so that recovery, which builds the writer,
    /// sits above it in the module graph.
    pub fn open(config: EventLogConfig) -> Result<(EventLog, RecoveryReport), EventLogError> {
        recovery::open(config)
    }
}

#[cfg(test)]
mod tests {
    /// The modules in the order of the graph in the module doc, with their sources.
    const ORDER: [(&str, &str); 14] = [
        ("record", include_str!("event_log/record.rs")),
        ("error", include_str!("event_log/error.rs")),
        ("clock", include_str!("event_log/clock.rs")),
        ("segment", include_str!("event_log/segment.rs")),
        ("markers", include_str!("event_log/markers.rs")),
        ("state", include_str!("event_log/state.rs")),
        ("reader", include_str!("event_log/reader.rs")),
        ("masking", include_str!("event_log/masking.rs")),
        ("retention", include_str!("event_log/retention.rs")),
        ("admin", include_str!("event_log/admin.rs")),
        ("config", include_str!("event_log/config.rs")),
        ("metrics", include_str!("event_log/metrics.rs")),
        ("writer", include_str!("event_log/writer.rs")),
        ("recovery", include_str!("event_log/recovery.rs")),
    ];

    /// The graph stays acyclic: every `use super::<module>` names a module listed before
    /// the importing one, and nothing imports from the facade (`use super::{…}`). Test
    /// modules (`use super::*`, `use super::super::…`) are exempt.
    #[test]
    fn each_module_imports_only_modules_listed_before_it() {
        for (i, (name, src)) in ORDER.iter().enumerate() {
            let earlier: Vec<&str> = ORDER[..i].iter().map(|(n, _)| *n).collect();
            for line in src.lines().map(str::trim_start) {
                let Some(rest) = line.strip_prefix("use super::") else {
                    continue;
                };
                if rest.starts_with('*') || rest.starts_with("super::") {
                    continue;
                }
                let module = rest
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default();
                assert!(
                    earlier.contains(&module),
                    "{name} imports `{line}`: only modules listed before it may be imported"
                );
            }
        }
    }
}
