//! The firehose behind the real ingest path (Sequencer + Persister over a real event log):
//! output frames are valid, `#commit` bodies carry every required field and are the stored
//! bytes (the upstream frame with only `seq` changed); across a relay restart, consumers that
//! reconnect with their last seq see every event exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ipld_core::ipld::Ipld;
use prometheus::Registry;
use rookery::actors::firehose::{Firehose, FirehoseSettings, start_firehose};
use rookery::actors::obs::ActorMetrics;
use rookery::actors::sequencer::Drain;
use rookery::actors::{Ingest, IngestSettings, start_ingest};
use rookery::atproto::frame::{self, Frame};
use rookery::atproto::keys::Curve;
use rookery::testkit::repo::{Change, SigningRepo, record_path};

use crate::ingest_support::{NullSink, event, open_log, small_frame};
use crate::support::{Consumer, Incoming, WAIT, connect, read_all, seq_of, serve};

/// Fields every `#commit` must carry (PROTOCOL.md §2; `since` may be null, not absent).
const COMMIT_REQUIRED: [&str; 11] = [
    "seq", "rebase", "tooBig", "repo", "commit", "rev", "since", "blocks", "ops", "blobs", "time",
];

struct Relay {
    ingest: Ingest,
    firehose: Firehose,
    server: actix_web::dev::ServerHandle,
    addr: std::net::SocketAddr,
}

fn start_relay(dir: &Path) -> Relay {
    let registry = Registry::new();
    let metrics = ActorMetrics::register(&registry).expect("metrics");
    let ingest = start_ingest(
        open_log(dir),
        Arc::new(NullSink),
        IngestSettings::default(),
        &metrics,
        &registry,
    )
    .expect("ingest");
    let settings = FirehoseSettings {
        ring_max_bytes: 32 * 1024,
        ..FirehoseSettings::default()
    };
    let firehose = start_firehose(
        ingest.reader.clone(),
        ingest.durable_head.clone(),
        settings,
        &metrics,
        &registry,
    )
    .expect("firehose");
    let (server, addr) = serve(&firehose);
    Relay {
        ingest,
        firehose,
        server,
        addr,
    }
}

impl Relay {
    fn url(&self, cursor: Option<u64>) -> String {
        let base = format!("ws://{}/xrpc/com.atproto.sync.subscribeRepos", self.addr);
        match cursor {
            Some(c) => format!("{base}?cursor={c}"),
            None => base,
        }
    }

    /// Sends frames through the Sequencer as a shard would; returns seq → input frame.
    async fn ingest(&self, frames: &[Bytes], upstream_from: i64) -> BTreeMap<u64, Bytes> {
        let mut sent = BTreeMap::new();
        for (i, f) in frames.iter().enumerate() {
            let upstream = upstream_from + i as i64;
            let ev = event(
                &self.ingest.budget,
                f.clone(),
                &self.ingest.pending,
                1,
                upstream,
                None,
            )
            .await;
            let seq = self
                .ingest
                .sequencer
                .send(ev)
                .await
                .expect("mailbox")
                .expect("sequenced");
            sent.insert(seq, f.clone());
        }
        sent
    }

    /// Stops in the order `run_relay` does: consumers (1001), HTTP, then ingest (which
    /// closes the log).
    async fn stop(self) {
        assert_eq!(self.firehose.shutdown(Duration::from_secs(5)).await, 0);
        self.server.stop(false).await;
        self.ingest.shutdown().await;
    }
}

/// Signed commits and small `#identity`/`#account` frames, interleaved.
fn inputs(repo: &mut SigningRepo, n: usize, tag: &str, from: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            if i % 3 == 0 {
                let commit = repo.commit(&[Change::Create(record_path(1000 + from + i))]);
                Bytes::from(frame::encode_frame(&Frame::Commit(Box::new(commit))).expect("encode"))
            } else {
                small_frame(&format!("did:plc:{tag}{i}"), (from + i) as i64)
            }
        })
        .collect()
}

/// Reads frames until `last`; returns them with their seqs (strictly increasing).
async fn frames_through(consumer: &mut Consumer, last: u64) -> Vec<(u64, Bytes)> {
    let mut out: Vec<(u64, Bytes)> = Vec::new();
    while out.last().is_none_or(|(s, _)| *s < last) {
        let frame = consumer.next_binary().await;
        let seq = seq_of(&frame).expect("an event");
        if let Some((prev, _)) = out.last() {
            assert!(seq > *prev, "{seq} after {prev}");
        }
        out.push((seq, frame));
    }
    out
}

/// Every frame is a valid firehose frame, identical to the stored record and to the input
/// with only `seq` changed; commits carry every required field.
fn check_frames(
    got: &[(u64, Bytes)],
    stored: &BTreeMap<u64, Bytes>,
    inputs: &BTreeMap<u64, Bytes>,
) {
    let mut commits = 0;
    for (seq, f) in got {
        assert_eq!(Some(f), stored.get(seq), "seq {seq}: the stored bytes");
        let input = &inputs[seq];
        let expected = frame::resequence(input, *seq as i64).expect("resequence");
        assert_eq!(
            f.as_ref(),
            expected.as_slice(),
            "seq {seq}: input with only seq changed"
        );
        let decoded = frame::decode_frame(f).expect("a valid frame");
        if let Frame::Commit(commit) = decoded {
            commits += 1;
            assert_eq!(commit.seq, *seq as i64);
            let header = frame::decode_header(f).expect("header");
            let body: Ipld =
                serde_ipld_dagcbor::from_slice(&f[header.body_offset..]).expect("body decodes");
            let Ipld::Map(map) = body else {
                panic!("body is not a map")
            };
            for field in COMMIT_REQUIRED {
                assert!(
                    map.contains_key(field),
                    "seq {seq}: #commit without {field}"
                );
            }
        }
    }
    assert!(commits > 0, "some commits were checked");
}

#[actix_rt::test]
async fn across_a_restart_consumers_resume_from_their_last_seq_and_see_every_event_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut repo = SigningRepo::new("did:plc:committer", Curve::K256, 10, 1_700_000_000_000_000);
    let mut all_inputs = BTreeMap::new();

    // Before the restart: a live consumer, and replaying ones joining mid-stream.
    let relay = start_relay(dir.path());
    let mut live = connect(&relay.url(None)).await;
    let first = inputs(&mut repo, 150, "a", 0);
    let sent = relay.ingest(&first[..75], 1).await;
    all_inputs.extend(sent);
    // Seqs are handed out before they are durable: wait for durability, or cursor 40
    // could still be in the future.
    relay.ingest.sequencer.send(Drain).await.expect("drain");
    let mut from_zero = connect(&relay.url(Some(0))).await;
    let mut from_mid = connect(&relay.url(Some(40))).await;
    let sent = relay.ingest(&first[75..], 76).await;
    all_inputs.extend(sent);
    let head1 = *all_inputs.keys().last().expect("events");
    let mut got_live = frames_through(&mut live, head1).await;
    let mut got_zero = frames_through(&mut from_zero, head1).await;
    let mut got_mid = frames_through(&mut from_mid, head1).await;
    relay.stop().await;
    for consumer in [&mut live, &mut from_zero, &mut from_mid] {
        let close = consumer.next_within(WAIT).await;
        assert!(
            !matches!(close, Incoming::Binary(_)),
            "no event after the last one"
        );
        assert!(
            matches!(&close, Incoming::Close(Some(r)) if r.code == awc::ws::CloseCode::Away),
            "{close:?}"
        );
    }

    // After: the same log, reopened; each consumer reconnects with its last seq.
    let relay = start_relay(dir.path());
    let mut resumed = Vec::new();
    for got in [&got_live, &got_zero, &got_mid] {
        let last = got.last().expect("some").0;
        resumed.push(connect(&relay.url(Some(last))).await);
    }
    let second = inputs(&mut repo, 90, "b", 150);
    let sent = relay.ingest(&second, 151).await;
    let head2 = *sent.keys().last().expect("events");
    all_inputs.extend(sent);
    for (got, consumer) in [&mut got_live, &mut got_zero, &mut got_mid]
        .into_iter()
        .zip(resumed.iter_mut())
    {
        got.extend(frames_through(consumer, head2).await);
    }
    let stored: BTreeMap<u64, Bytes> = read_all(&relay.ingest.reader, 0)
        .into_iter()
        .map(|r| (r.seq, r.body))
        .collect();
    assert_eq!(stored.len(), 240);
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        all_inputs.keys().collect::<Vec<_>>()
    );
    let seqs = |got: &[(u64, Bytes)]| got.iter().map(|(s, _)| *s).collect::<Vec<_>>();
    // Exactly once each, in order, across the restart.
    assert_eq!(seqs(&got_zero), stored.keys().copied().collect::<Vec<_>>());
    assert_eq!(
        seqs(&got_mid),
        stored
            .keys()
            .copied()
            .filter(|s| *s > 40)
            .collect::<Vec<_>>()
    );
    assert_eq!(seqs(&got_live), stored.keys().copied().collect::<Vec<_>>());
    for got in [&got_live, &got_zero, &got_mid] {
        check_frames(got, &stored, &all_inputs);
    }
    relay.stop().await;
}
