//! Synthetic event-log bodies: a writer in one process (`rookery-logtool append-loop`) and a
//! checker in another (the SIGKILL test) must agree on them byte for byte, so there is one
//! definition.

use bytes::Bytes;

/// The body written for `seq`: the seq (8 bytes LE) then a pattern derived from it, `len`
/// bytes in all (at least 8). A reader can tell from the body alone which seq it belongs to
/// and whether any byte changed.
pub fn synthetic_body(seq: u64, len: usize) -> Bytes {
    let mut body = Vec::with_capacity(len.max(8));
    body.extend_from_slice(&seq.to_le_bytes());
    for i in 8..len.max(8) {
        body.push((seq.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8);
    }
    Bytes::from(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_start_with_their_seq_and_differ_by_seq() {
        let a = synthetic_body(7, 300);
        assert_eq!(a.len(), 300);
        assert_eq!(&a[..8], &7u64.to_le_bytes());
        assert_ne!(a[8..], synthetic_body(8, 300)[8..]);
        assert_eq!(synthetic_body(9, 0).len(), 8);
    }
}
