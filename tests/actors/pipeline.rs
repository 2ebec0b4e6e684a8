//! Sequencer + Persister over a real event log, driven by concurrent producers that play the
//! ValidatorShards: every event stored exactly once, in seq order, byte-identical apart from
//! seq; group commit; restart; byte budget; halt on a log failure.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus::Registry;
use rookery::actors::IngestSettings;
use rookery::actors::obs::{ActorMetrics, InstrumentedAddr};
use rookery::actors::persister::{GetPersisterState, Persister, PersisterMetrics};
use rookery::actors::sequencer::{ByteBudget, Drain, GetSequencerState, Sequencer, SequencerError};
use rookery::actors::write_behind::PendingWrites;
use rookery::atproto::frame::{self, Frame};
use rookery::atproto::keys::Curve;
use rookery::testkit::repo::{Change, SigningRepo, record_path};

use crate::common::vectors::{frame_bytes, scenario_frames};
use crate::support::{NullSink, event, open_log, read_all, small_frame, start};

const PRODUCERS: usize = 4;
const PER_PRODUCER: usize = 150;

/// Runs `PRODUCERS` concurrent producers, each sending its own frames in order and awaiting
/// each send (as a shard does). Returns seq → input frame.
async fn produce(
    ingest: &rookery::actors::Ingest,
    tag: &str,
    per_producer: usize,
) -> BTreeMap<u64, Bytes> {
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let sequencer = ingest.sequencer.clone();
        let budget = ingest.budget.clone();
        let pending = ingest.pending.clone();
        let tag = tag.to_string();
        tasks.push(actix_rt::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..per_producer {
                let did = format!("did:plc:{tag}p{p}e{i}");
                let upstream = i as i64 + 1;
                let frame = small_frame(&did, upstream);
                let ev = event(
                    &budget,
                    frame.clone(),
                    &pending,
                    p as i64 + 1,
                    upstream,
                    None,
                )
                .await;
                let seq = sequencer
                    .send(ev)
                    .await
                    .expect("mailbox")
                    .expect("sequenced");
                sent.push((seq, frame));
            }
            sent
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        for (seq, frame) in t.await.expect("producer") {
            assert!(
                all.insert(seq, frame).is_none(),
                "seq {seq} handed out twice"
            );
        }
    }
    all
}

fn assert_stored_exactly(
    records: &[rookery::store::event_log::LogRecord],
    sent: &BTreeMap<u64, Bytes>,
) {
    let stored: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert!(
        stored.windows(2).all(|w| w[0] < w[1]),
        "seqs strictly increase"
    );
    assert_eq!(
        stored,
        sent.keys().copied().collect::<Vec<_>>(),
        "every event exactly once"
    );
    for r in records {
        let input = &sent[&r.seq];
        let expected = frame::resequence(input, r.seq as i64).expect("resequence");
        assert_eq!(
            r.body.as_ref(),
            expected.as_slice(),
            "seq {}: body differs",
            r.seq
        );
        let peek = frame::peek_event(&r.body).expect("stored frame decodes");
        assert_eq!(peek.seq, Some(r.seq));
    }
}

#[actix_rt::test]
async fn concurrent_producers_every_event_once_in_order_byte_identical_and_batched() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ingest, metrics) = start(dir.path(), Arc::new(NullSink), IngestSettings::default());

    // The durable head never runs ahead of what a fresh reader can read.
    let mut head = ingest.durable_head.clone();
    let reader = ingest.reader.clone();
    let watcher = actix_rt::spawn(async move {
        let mut checked = 0u32;
        while head.changed().await.is_ok() {
            let h = *head.borrow_and_update();
            let fresh = reader.clone();
            let mut replay = fresh.read_after(h - 1).expect("replay");
            let first = replay.next_batch(1, 1 << 20).expect("read");
            assert_eq!(
                first.first().map(|r| r.seq),
                Some(h),
                "head {h} not readable"
            );
            assert!(fresh.durable_head() >= h);
            checked += 1;
        }
        checked
    });

    let sent = produce(&ingest, "a", PER_PRODUCER).await;
    ingest.sequencer.send(Drain).await.expect("drain");
    let events = (PRODUCERS * PER_PRODUCER) as u64;

    let records = read_all(&ingest.reader, 0);
    assert_eq!(records.len() as u64, events);
    assert_stored_exactly(&records, &sent);
    assert_eq!(
        *sent.keys().next().expect("some"),
        1,
        "a fresh log starts at seq 1"
    );

    let seq_state = ingest
        .sequencer
        .send(GetSequencerState)
        .await
        .expect("state");
    let persister = ingest
        .persister
        .send(GetPersisterState)
        .await
        .expect("state");
    assert_eq!(seq_state.next_seq, events + 1);
    assert_eq!(seq_state.events_sequenced, events);
    assert_eq!(seq_state.queued_events, 0);
    assert_eq!(seq_state.in_flight_events, 0);
    assert_eq!(seq_state.durable_head, events);
    assert_eq!(seq_state.budget_bytes_in_use, 0, "every permit released");
    assert_eq!(persister.durable_head, events);
    assert_eq!(persister.events, events);
    // Group commit: fsync latency lets events accumulate into fewer batches.
    assert!(
        persister.batches < events,
        "{} batches for {events} events",
        persister.batches
    );
    assert!(seq_state.largest_batch > 1);
    assert_eq!(metrics.handled("sequencer", "ingest_event"), events);
    assert_eq!(metrics.mailbox_depth("sequencer"), 0);
    assert_eq!(metrics.mailbox_depth("persister"), 0);
    eprintln!(
        "{events} events in {} batches (largest {})",
        persister.batches, seq_state.largest_batch
    );

    // Upstream cursors of every producer (host) are pending for the write-behind.
    assert_eq!(ingest.pending.len().0, PRODUCERS);

    let reader = ingest.reader.clone();
    ingest.shutdown().await;
    let checked = watcher.await.expect("watcher");
    assert!(checked >= 1);
    assert_eq!(reader.durable_head(), events);
}

#[actix_rt::test]
async fn signed_commits_and_indigo_scenario_frames_are_stored_byte_identical_apart_from_seq() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ingest, _) = start(dir.path(), Arc::new(NullSink), IngestSettings::default());
    let mut inputs: Vec<Bytes> = Vec::new();
    let mut repo = SigningRepo::new("did:plc:committer", Curve::K256, 20, 1_700_000_000_000_000);
    for i in 0..5 {
        let commit = repo.commit(&[Change::Create(record_path(100 + i))]);
        inputs.push(Bytes::from(
            frame::encode_frame(&Frame::Commit(Box::new(commit))).expect("encode"),
        ));
    }
    // Scenario frames that a shard could forward: op 1, a stored type, a seq and a DID.
    for (_, f) in scenario_frames() {
        let bytes = Bytes::from(frame_bytes(&f));
        let Ok(peek) = frame::peek_event(&bytes) else {
            continue;
        };
        let stored_kind = peek
            .header
            .t
            .and_then(rookery::actors::sequencer::EventKind::from_frame_type);
        if peek.header.op == 1 && stored_kind.is_some() && peek.did.is_some() && peek.seq.is_some()
        {
            inputs.push(bytes);
        }
    }
    assert!(inputs.len() > 10, "{} frames", inputs.len());
    let mut sent = BTreeMap::new();
    for (i, f) in inputs.iter().enumerate() {
        let ev = event(
            &ingest.budget,
            f.clone(),
            &ingest.pending,
            1,
            i as i64 + 1,
            None,
        )
        .await;
        let seq = ingest
            .sequencer
            .send(ev)
            .await
            .expect("mailbox")
            .expect("seq");
        sent.insert(seq, f.clone());
    }
    ingest.sequencer.send(Drain).await.expect("drain");
    let records = read_all(&ingest.reader, 0);
    // A frame the log cannot re-sequence would be a gap; every one here must be stored.
    let persister = ingest
        .persister
        .send(GetPersisterState)
        .await
        .expect("state");
    assert_eq!(persister.resequence_failures, 0);
    assert_stored_exactly(&records, &sent);
    ingest.shutdown().await;
}

#[actix_rt::test]
async fn a_frame_that_cannot_be_resequenced_is_dropped_counted_and_leaves_a_gap() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ingest, _) = start(dir.path(), Arc::new(NullSink), IngestSettings::default());
    // An `#identity` without `seq`: `peek_event` accepts it, `resequence` cannot.
    let no_seq = Bytes::from(frame_bytes(&serde_json::json!({
        "header": {"op": 1, "t": "#identity"},
        "body": {"did": "did:plc:noseq", "time": "2025-12-31T23:00:00.000Z"},
    })));
    let frames = [
        small_frame("did:plc:ok", 2),
        no_seq,
        small_frame("did:plc:ok", 4),
    ];
    let mut seqs = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let upstream = i as i64 + 1;
        let ev = event(
            &ingest.budget,
            f.clone(),
            &ingest.pending,
            3,
            upstream,
            None,
        )
        .await;
        seqs.push(
            ingest
                .sequencer
                .send(ev)
                .await
                .expect("mailbox")
                .expect("seq"),
        );
    }
    ingest.sequencer.send(Drain).await.expect("drain");
    let stored: Vec<u64> = read_all(&ingest.reader, 0).iter().map(|r| r.seq).collect();
    assert_eq!(stored, vec![seqs[0], seqs[2]], "a gap, never a reused seq");
    let persister = ingest
        .persister
        .send(GetPersisterState)
        .await
        .expect("state");
    assert_eq!(persister.resequence_failures, 1);
    assert_eq!(persister.failed, None, "a bad frame does not stop ingest");
    assert_eq!(ingest.budget.in_use(), 0);
    ingest.shutdown().await;
}

#[actix_rt::test]
async fn a_restart_on_the_same_data_dir_continues_above_the_old_head() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ingest, _) = start(dir.path(), Arc::new(NullSink), IngestSettings::default());
    let first = produce(&ingest, "before", 20).await;
    ingest.shutdown().await;
    let old_head = *first.keys().last().expect("some");

    let (ingest, _) = start(dir.path(), Arc::new(NullSink), IngestSettings::default());
    assert_eq!(*ingest.durable_head.borrow(), old_head);
    let second = produce(&ingest, "after", 20).await;
    ingest.sequencer.send(Drain).await.expect("drain");
    assert!(
        *second.keys().next().expect("some") > old_head,
        "no seq reused"
    );
    let mut all = first;
    all.extend(second);
    assert_stored_exactly(&read_all(&ingest.reader, 0), &all);
    ingest.shutdown().await;
}

#[actix_rt::test]
async fn the_byte_budget_stops_producers_and_frees_as_batches_become_durable() {
    let dir = tempfile::tempdir().expect("tmp");
    let frame = small_frame("did:plc:budget", 2);
    let budget_bytes = (frame.len() * 8) as u32;
    let settings = IngestSettings {
        budget_bytes,
        ..IngestSettings::default()
    };
    let (ingest, _) = start(dir.path(), Arc::new(NullSink), settings);

    // Fill the budget with events a shard holds but has not sent yet.
    let mut held = Vec::new();
    for i in 0..8 {
        held.push(
            event(
                &ingest.budget,
                frame.clone(),
                &ingest.pending,
                1,
                i + 1,
                None,
            )
            .await,
        );
    }
    assert_eq!(ingest.budget.in_use(), u64::from(budget_bytes));
    assert!(ingest.budget.try_acquire(frame.len()).is_none(), "full");
    // A producer that wants more bytes now waits.
    let budget = ingest.budget.clone();
    let len = frame.len();
    let mut waiting = Box::pin(async move { budget.acquire(len).await });
    assert!(futures_util::poll!(&mut waiting).is_pending());

    for ev in held {
        ingest
            .sequencer
            .send(ev)
            .await
            .expect("mailbox")
            .expect("seq");
    }
    ingest.sequencer.send(Drain).await.expect("drain");
    let permit = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("bytes were released when the batch became durable")
        .expect("open");
    assert_eq!(ingest.budget.in_use(), frame.len() as u64);
    drop(permit);

    // Under load the bytes in use never exceed the budget.
    let sampler_budget = ingest.budget.clone();
    let sequencer = ingest.sequencer.clone();
    let sampler = actix_rt::spawn(async move {
        let mut max_seen = 0;
        for _ in 0..200 {
            let s = sequencer.send(GetSequencerState).await.expect("state");
            assert!(s.budget_bytes_in_use <= u64::from(sampler_budget.total()));
            max_seen = max_seen.max(s.budget_bytes_in_use);
            actix_rt::task::yield_now().await;
        }
        max_seen
    });
    let sent = produce(&ingest, "load", 40).await;
    ingest.sequencer.send(Drain).await.expect("drain");
    let max_seen = sampler.await.expect("sampler");
    assert!(
        max_seen <= u64::from(budget_bytes),
        "{max_seen} > {budget_bytes}"
    );
    assert_eq!(ingest.budget.in_use(), 0);
    assert_eq!(read_all(&ingest.reader, 8).len(), sent.len());
    ingest.shutdown().await;
}

#[actix_rt::test]
async fn a_log_that_refuses_a_batch_halts_ingest_instead_of_skipping_seqs() {
    let dir = tempfile::tempdir().expect("tmp");
    // Seed the log, then (mis)start a Sequencer below its head: the log refuses the batch.
    let (ingest, _) = start(dir.path(), Arc::new(NullSink), IngestSettings::default());
    produce(&ingest, "seed", 3).await;
    ingest.shutdown().await;

    let log = open_log(dir.path());
    let head = log.durable_head();
    let reader = log.reader();
    let registry = Registry::new();
    let metrics = ActorMetrics::register(&registry).expect("metrics");
    let pobs = metrics.actor(Persister::NAME, Persister::MAILBOX);
    let (persister, _head_rx) = Persister::new(
        pobs.clone(),
        PersisterMetrics::register(&registry).expect("metrics"),
        log,
        PendingWrites::default(),
    );
    let arbiter = actix::Arbiter::new();
    let persister = InstrumentedAddr::new(
        actix::Supervisor::start_in_arbiter(&arbiter.handle(), move |_| persister),
        pobs,
    );
    let budget = ByteBudget::new(1 << 20);
    let sobs = metrics.actor(Sequencer::NAME, Sequencer::MAILBOX);
    let seq = Sequencer::new(sobs.clone(), persister.clone(), budget.clone(), 1);
    let sequencer = InstrumentedAddr::new(actix::Supervisor::start(move |_| seq), sobs);

    let ev = event(
        &budget,
        small_frame("did:plc:x", 1),
        &PendingWrites::default(),
        1,
        1,
        None,
    )
    .await;
    assert_eq!(sequencer.send(ev).await.expect("mailbox"), Ok(1));
    sequencer.send(Drain).await.expect("drain");
    let state = sequencer.send(GetSequencerState).await.expect("state");
    assert_eq!(state.halted, Some("seq_not_after_head"));
    let ev = event(
        &budget,
        small_frame("did:plc:x", 2),
        &PendingWrites::default(),
        1,
        2,
        None,
    )
    .await;
    assert_eq!(
        sequencer.send(ev).await.expect("mailbox"),
        Err(SequencerError::Halted("seq_not_after_head"))
    );
    assert_eq!(budget.in_use(), 0, "refused events give their bytes back");
    let pstate = persister.send(GetPersisterState).await.expect("state");
    assert_eq!(pstate.failed, Some("seq_not_after_head"));
    assert_eq!(reader.durable_head(), head, "nothing written");
    let seqs: HashSet<u64> = read_all(&reader, 0).iter().map(|r| r.seq).collect();
    assert_eq!(seqs.len() as u64, head);
    arbiter.stop();
}
