//! Firehose frames: every reader agrees, and `resequence` round-trips.
//!
//! - `decode_header`, `peek_event` and `resequence` refuse exactly what the shared body walk
//!   refuses, with the same error; `decode_frame` refuses it the same way and may refuse more
//!   (missing required fields, nested content), never less.
//! - When `decode_frame` accepts, the cheap readers read the same `t`, `op`, `seq` and DID,
//!   re-sequencing to the frame's own seq or another one decodes to the same frame with only
//!   `seq` changed, and a typed frame re-encodes to itself.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rookery::atproto::frame::{self, Frame, FrameError};

fn seq_and_did(f: &Frame) -> Option<(i64, &str)> {
    match f {
        Frame::Commit(c) => Some((c.seq, &c.repo)),
        Frame::Sync(s) => Some((s.seq, &s.did)),
        Frame::Identity(i) => Some((i.seq, &i.did)),
        Frame::Account(a) => Some((a.seq, &a.did)),
        _ => None,
    }
}

fn with_seq(f: &Frame, seq: i64) -> Frame {
    let mut f = f.clone();
    match &mut f {
        Frame::Commit(c) => c.seq = seq,
        Frame::Sync(s) => s.seq = seq,
        Frame::Identity(i) => i.seq = seq,
        Frame::Account(a) => a.seq = seq,
        _ => {}
    }
    f
}

fuzz_target!(|data: &[u8]| {
    let header = frame::decode_header(data);
    let peek = frame::peek_event(data);
    let reseq = frame::resequence(data, 7);
    let msg = Bytes::copy_from_slice(data);
    let decoded = frame::decode_frame(&msg);

    match &header {
        Err(e) => {
            assert_eq!(peek.as_ref().map(|p| p.header), Err(e), "peek vs header");
            assert_eq!(reseq.as_ref().map(|_| ()), Err(e), "resequence vs header");
            assert_eq!(
                decoded.as_ref().map(|_| ()),
                Err(e),
                "decode_frame vs header"
            );
            return;
        }
        Ok(h) => {
            assert_eq!(
                peek.as_ref().map(|p| p.header).ok(),
                Some(*h),
                "peek header"
            );
            // Past the walk, re-sequencing can only lack a seq.
            if let Err(e) = &reseq {
                assert_eq!(e, &FrameError::MissingSeq, "resequence after a good walk");
            }
        }
    }
    let Ok(frame) = decoded else { return };
    let peek = peek.expect("peek accepted above");
    if let Some((seq, did)) = seq_and_did(&frame) {
        assert_eq!(peek.seq, u64::try_from(seq).ok(), "peek seq");
        assert_eq!(peek.did, Some(did), "peek did");
        for new_seq in [seq.max(1), 7, i64::MAX] {
            let out = frame::resequence(data, new_seq).expect("resequence a decoded frame");
            let again = frame::decode_frame(&Bytes::from(out.clone())).expect("re-decode");
            assert_eq!(
                again,
                with_seq(&frame, new_seq),
                "resequence changes only seq"
            );
            // Canonical output: re-sequencing it again to the same seq is the identity.
            assert_eq!(frame::resequence(&out, new_seq).expect("again"), out);
        }
    }
    if let Ok(encoded) = frame::encode_frame(&frame) {
        let back = frame::decode_frame(&Bytes::from(encoded)).expect("typed round trip");
        assert_eq!(back, frame, "typed round trip");
    }
});
