//! Marker files: small decimal files in `events/` that record facts the segments alone
//! cannot, so they survive a restart.
//!
//! - `DELETED_THROUGH`: the highest seq retention has deleted. Written by retention before
//!   it unlinks anything; read by recovery to finish an interrupted pass and to keep a
//!   cursor at or below it `Outdated` after a restart.
//! - `SEQ_FLOOR`: the lowest seq the writer may use next. Written by recovery only when it
//!   cuts checksum-verified records behind a bad one, so their seqs are never reused.
//!
//! Writes are atomic and durable (temp file, fsync, rename, directory fsync). A missing
//! or unreadable marker reads as 0.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use super::segment::sync_dir;

/// File holding the highest seq retention has deleted (decimal).
pub(crate) const DELETED_THROUGH_FILE: &str = "DELETED_THROUGH";

/// File holding the lowest seq the writer may use next (decimal), written only when
/// recovery cuts checksum-verified records behind a bad one (see recovery).
pub(crate) const SEQ_FLOOR_FILE: &str = "SEQ_FLOOR";

pub(crate) fn write_deleted_through(dir: &Path, seq: u64) -> std::io::Result<()> {
    write_marker(dir, DELETED_THROUGH_FILE, seq)
}

/// The persisted marker, or 0 if absent or unreadable (a damaged marker only loses the
/// distinction between "deleted" and "never existed" below the oldest record).
pub(crate) fn read_deleted_through(dir: &Path) -> u64 {
    read_marker(dir, DELETED_THROUGH_FILE)
}

/// Atomically replace `dir/name` with `seq` in decimal (temp file, fsync, rename, dir fsync).
pub(crate) fn write_marker(dir: &Path, name: &str, seq: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(seq.to_string().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// A persisted decimal marker, or 0 if absent or unreadable.
pub(crate) fn read_marker(dir: &Path, name: &str) -> u64 {
    let mut text = String::new();
    let read = File::open(dir.join(name)).and_then(|f| f.take(32).read_to_string(&mut text));
    match read {
        Ok(_) => text.trim().parse().unwrap_or_else(|_| {
            tracing::warn!("event log: unreadable {name} marker ignored");
            0
        }),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::super::segment::durability_trace;
    use super::*;

    #[test]
    fn markers_round_trip_and_read_zero_when_missing_or_garbled() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        assert_eq!(read_deleted_through(dir), 0);
        write_deleted_through(dir, 41).expect("write");
        write_deleted_through(dir, 42).expect("overwrite");
        assert_eq!(read_deleted_through(dir), 42);
        write_marker(dir, SEQ_FLOOR_FILE, 7).expect("write");
        assert_eq!(read_marker(dir, SEQ_FLOOR_FILE), 7);
        assert!(!dir.join(format!("{SEQ_FLOOR_FILE}.tmp")).exists());
        // Durable: the rename is synced into the directory.
        durability_trace::take();
        write_deleted_through(dir, 43).expect("write");
        assert_eq!(
            durability_trace::take(),
            vec![format!("sync_dir {}", dir.display())]
        );
        std::fs::write(dir.join(SEQ_FLOOR_FILE), b"not a number").expect("garble");
        assert_eq!(read_marker(dir, SEQ_FLOOR_FILE), 0);
    }
}
