//! The one error type of the event log.

use std::io;
use std::path::PathBuf;

/// Errors of the event log. [`EventLogError::reason`] is a bounded metric label.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("event log I/O error ({op}) on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("seq {seq} is not after the log head (next allowed seq is {next_seq})")]
    SeqNotAfterHead { seq: u64, next_seq: u64 },
    #[error("record body of {len} bytes exceeds the limit of {max}")]
    RecordTooLarge { len: usize, max: usize },
    #[error("the writer failed earlier and refuses appends until the log is reopened")]
    WriterPoisoned,
    #[error("position is before the oldest retained record (oldest seq {oldest_seq})")]
    Outdated { oldest_seq: u64 },
    #[error("corrupt record in segment {segment_first_seq} at offset {offset}")]
    Corrupt { segment_first_seq: u64, offset: u64 },
    #[error("the event log in {0} is already open by another writer")]
    Locked(PathBuf),
}

impl EventLogError {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            EventLogError::Io { source, .. } => match source.kind() {
                io::ErrorKind::StorageFull => "disk_full",
                io::ErrorKind::PermissionDenied => "permission_denied",
                io::ErrorKind::FileTooLarge => "file_too_large",
                _ => "io",
            },
            EventLogError::SeqNotAfterHead { .. } => "seq_not_after_head",
            EventLogError::RecordTooLarge { .. } => "record_too_large",
            EventLogError::WriterPoisoned => "writer_poisoned",
            EventLogError::Outdated { .. } => "outdated",
            EventLogError::Corrupt { .. } => "corrupt",
            EventLogError::Locked(_) => "locked",
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> EventLogError {
        let path = path.into();
        move |source| EventLogError::Io { op, path, source }
    }
}
