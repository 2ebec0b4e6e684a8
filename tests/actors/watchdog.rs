//! The watchdog's probe against a real Sequencer and Persister: a Persister whose thread is
//! blocked is reported unresponsive tick after tick with a single question outstanding (not
//! one more per tick in its small mailbox), and answers again once the thread is free.

use std::time::Duration;

use prometheus::Registry;
use rookery::actors::obs::{ActorMetrics, InstrumentedAddr};
use rookery::actors::persister::{Persister, PersisterMetrics};
use rookery::actors::sequencer::{ByteBudget, Sequencer};
use rookery::actors::write_behind::PendingWrites;
use rookery::service::watchdog::{PipelineProbe, ProgressCheck, Stall, Verdict};
use tokio::time::Instant;

use crate::support::open_log;

#[actix_rt::test]
async fn a_blocked_persister_is_unresponsive_with_one_question_outstanding_until_it_answers() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open_log(dir.path());
    let next_seq = log.next_seq();
    let registry = Registry::new();
    let metrics = ActorMetrics::register(&registry).expect("metrics");
    let pobs = metrics.actor(Persister::NAME, Persister::MAILBOX);
    let (persister, head) = Persister::new(
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
    let sobs = metrics.actor(Sequencer::NAME, Sequencer::MAILBOX);
    let seq = Sequencer::new(
        sobs.clone(),
        persister.clone(),
        ByteBudget::new(1 << 20),
        next_seq,
    );
    let sequencer = InstrumentedAddr::new(actix::Supervisor::start(move |_| seq), sobs);
    let mut probe = PipelineProbe::from_parts(sequencer, persister.clone(), head);
    let mut check = ProgressCheck::new(Instant::now(), 0, Duration::from_secs(30));

    let sample = probe.sample(Duration::from_secs(5)).await;
    assert_eq!(check.observe(Instant::now(), &sample), Verdict::Progressing);

    // Block the Persister's thread (as a stuck fdatasync would) and wait until it is.
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    assert!(arbiter.spawn_fn(move || {
        let _ = started_tx.send(());
        let _ = release_rx.recv_timeout(Duration::from_secs(60));
    }));
    started_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the persister's thread is blocked");
    for _ in 0..4 {
        let sample = probe.sample(Duration::from_millis(100)).await;
        assert!(sample.sequencer.is_some(), "the sequencer still answers");
        assert!(sample.persister.is_none());
        assert_eq!(
            check.observe(Instant::now(), &sample),
            Verdict::Stalled(Stall::PersisterUnresponsive)
        );
    }
    assert_eq!(
        persister.obs().depth(),
        1,
        "one question outstanding, not one per tick"
    );

    release_tx.send(()).expect("release");
    let sample = probe.sample(Duration::from_secs(5)).await;
    assert!(sample.persister.is_some(), "the kept question is answered");
    assert_eq!(check.observe(Instant::now(), &sample), Verdict::Progressing);
    assert_eq!(persister.obs().depth(), 0);
    let sample = probe.sample(Duration::from_secs(5)).await;
    assert!(sample.persister.is_some(), "and a new one after it");
    arbiter.stop();
}
