//! The record header: a fixed 36-byte little-endian header followed by the body.
//!
//! The checksum covers every header byte except `flags` and then the body. Takedown
//! masking rewrites `flags` in place with a one-byte `pwrite`; because the checksum never
//! sees that byte, a flag write (even one interrupted by a crash) can never make recovery
//! or a reader think the record is torn.

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Size of the fixed record header in bytes.
pub const RECORD_HEADER_LEN: usize = 36;
/// Largest body the log accepts. A firehose message is at most 5,000,000 bytes
/// (PROTOCOL.md §1); the margin leaves room for re-encoding. Any length above this
/// in a stored header is treated as corruption, so garbage never causes a huge read.
pub const MAX_BODY_LEN: usize = 16 * 1024 * 1024;

/// Flag bit: the record belongs to a taken-down account; replay skips it.
pub const FLAG_MASKED: u8 = 0x01;

/// Offset of the flags byte inside the header (the only byte not covered by the checksum).
pub const FLAGS_OFFSET: usize = 29;

const LEN_RANGE: std::ops::Range<usize> = 0..4;
const SEQ_RANGE: std::ops::Range<usize> = 4..12;
const TS_RANGE: std::ops::Range<usize> = 12..20;
const DID_RANGE: std::ops::Range<usize> = 20..28;
const KIND_OFFSET: usize = 28;
const RESERVED_RANGE: std::ops::Range<usize> = 30..32;
const CRC_RANGE: std::ops::Range<usize> = 32..36;

/// One record handed to [`super::EventLog::append`]. The seq was assigned by the
/// Sequencer and is already inside `body` (the complete encoded firehose frame).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRecord {
    /// Relay sequence number; strictly increasing across appends.
    pub seq: u64,
    /// Event kind (caller-defined small integer, e.g. commit/identity/account/sync).
    pub kind: u8,
    /// [`did_hash`] of the account the event belongs to (0 if none).
    pub did_hash: u64,
    /// The frame bytes exactly as they will be sent to consumers.
    pub body: Bytes,
}

/// One record as read back from the log (masked records are never returned by replay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub seq: u64,
    pub kind: u8,
    pub flags: u8,
    pub did_hash: u64,
    /// Unix milliseconds at which the writer stored the record (used by retention).
    pub timestamp_ms: u64,
    pub body: Bytes,
}

/// The 64-bit DID hash stored in each record: the first 8 bytes (big-endian) of
/// SHA-256 of the DID string exactly as given. A collision (probability about
/// n²/2⁶⁵ for n accounts) can only make a takedown mask another account's events
/// too (over-masking); it can never leave a taken-down account's event unmasked.
pub fn did_hash(did: &str) -> u64 {
    let digest = Sha256::digest(did.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Decoded fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub body_len: u32,
    pub seq: u64,
    pub timestamp_ms: u64,
    pub did_hash: u64,
    pub kind: u8,
    pub flags: u8,
    pub crc: u32,
}

impl RecordHeader {
    /// Total on-disk size of the record (header plus body).
    pub fn total_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.body_len)
    }
}

/// Why bytes at a position are not an intact record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordDefect {
    /// Fewer bytes than a header, or than header plus the declared body.
    Truncated,
    /// Declared body length above [`MAX_BODY_LEN`].
    BadLength,
    /// Checksum mismatch.
    BadChecksum,
}

fn u32_at(buf: &[u8], range: std::ops::Range<usize>) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&buf[range]);
    u32::from_le_bytes(a)
}

fn u64_at(buf: &[u8], range: std::ops::Range<usize>) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&buf[range]);
    u64::from_le_bytes(a)
}

fn checksum(header: &[u8], body: &[u8]) -> u32 {
    let c = crc32c::crc32c(&header[..FLAGS_OFFSET]);
    let c = crc32c::crc32c_append(c, &header[RESERVED_RANGE]);
    crc32c::crc32c_append(c, body)
}

/// Append the encoding of one record to `out`.
pub fn encode_record(out: &mut Vec<u8>, rec: &AppendRecord, timestamp_ms: u64, flags: u8) {
    let mut h = [0u8; RECORD_HEADER_LEN];
    // Callers check the body length against MAX_BODY_LEN before encoding.
    let len = u32::try_from(rec.body.len()).unwrap_or(u32::MAX);
    h[LEN_RANGE].copy_from_slice(&len.to_le_bytes());
    h[SEQ_RANGE].copy_from_slice(&rec.seq.to_le_bytes());
    h[TS_RANGE].copy_from_slice(&timestamp_ms.to_le_bytes());
    h[DID_RANGE].copy_from_slice(&rec.did_hash.to_le_bytes());
    h[KIND_OFFSET] = rec.kind;
    h[FLAGS_OFFSET] = flags;
    let crc = checksum(&h, &rec.body);
    h[CRC_RANGE].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&rec.body);
}

/// Decode a header without checking the body. `buf` must hold at least the header.
pub fn decode_header(buf: &[u8]) -> Result<RecordHeader, RecordDefect> {
    if buf.len() < RECORD_HEADER_LEN {
        return Err(RecordDefect::Truncated);
    }
    let header = RecordHeader {
        body_len: u32_at(buf, LEN_RANGE),
        seq: u64_at(buf, SEQ_RANGE),
        timestamp_ms: u64_at(buf, TS_RANGE),
        did_hash: u64_at(buf, DID_RANGE),
        kind: buf[KIND_OFFSET],
        flags: buf[FLAGS_OFFSET],
        crc: u32_at(buf, CRC_RANGE),
    };
    if header.body_len as usize > MAX_BODY_LEN {
        return Err(RecordDefect::BadLength);
    }
    Ok(header)
}

/// Decode and verify one record at the start of `buf`.
/// Returns the header; the body is `buf[RECORD_HEADER_LEN..total_len]`.
pub fn decode_record(buf: &[u8]) -> Result<RecordHeader, RecordDefect> {
    let header = decode_header(buf)?;
    let total = RECORD_HEADER_LEN + header.body_len as usize;
    if buf.len() < total {
        return Err(RecordDefect::Truncated);
    }
    if checksum(&buf[..RECORD_HEADER_LEN], &buf[RECORD_HEADER_LEN..total]) != header.crc {
        return Err(RecordDefect::BadChecksum);
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> AppendRecord {
        AppendRecord {
            seq: 42,
            kind: 3,
            did_hash: did_hash("did:plc:abc"),
            body: Bytes::from_static(b"hello frame"),
        }
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode_record(&mut buf, &sample(), 1234, 0);
        let h = decode_record(&buf).expect("intact");
        assert_eq!(h.seq, 42);
        assert_eq!(h.kind, 3);
        assert_eq!(h.timestamp_ms, 1234);
        assert_eq!(h.did_hash, did_hash("did:plc:abc"));
        assert_eq!(&buf[RECORD_HEADER_LEN..], b"hello frame");
    }

    #[test]
    fn flags_byte_is_not_covered_but_every_other_byte_is() {
        let mut buf = Vec::new();
        encode_record(&mut buf, &sample(), 1234, 0);
        for i in 0..buf.len() {
            let mut copy = buf.clone();
            copy[i] ^= 0xff;
            let result = decode_record(&copy);
            if i == FLAGS_OFFSET {
                assert_eq!(result.map(|h| h.flags), Ok(0xff));
            } else {
                assert!(result.is_err(), "flip at {i} not detected");
            }
        }
    }

    #[test]
    fn did_hash_is_stable() {
        // First 8 bytes of sha256("did:plc:abc"), computed independently.
        let digest = Sha256::digest(b"did:plc:abc");
        assert_eq!(did_hash("did:plc:abc").to_be_bytes(), digest[..8]);
        assert_ne!(did_hash("did:plc:abc"), did_hash("did:plc:abd"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&bytes);
        }
    }
}
