//! `/_health` while ingest is saturated: the relay replays a host's backlog as fast as it can
//! (thousands of signed commits from a stored cursor) and a probe asks `/_health` every 20 ms
//! the whole time. Liveness is answered on the public listener's own workers without touching
//! Postgres or any mailbox, so every probe must succeed, each well within the fleet probe's
//! 1 s timeout. (Latency figures go to the test output; benchmarks measure them properly.)

use std::time::{Duration, Instant};

use rookery::sim::{SimPds, SimPdsConfig, SimPlc, install_crypto_provider};
use rookery::testkit::repo::Change;

use crate::common::process::{free_port, http_get, read, send_signal, wait_exit};
use crate::relay_fixture::RelayFixture;

const ACCOUNTS: usize = 20;
const COMMITS_PER_ACCOUNT: usize = 150;
/// How long the whole ingest may take (bounded loop).
const LIMIT: Duration = Duration::from_secs(120);
/// The probe's timeout, as the fleet's.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[actix_rt::test]
async fn health_answers_fast_while_ingest_is_saturated() {
    install_crypto_provider();
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let accounts: Vec<String> = (0..ACCOUNTS)
        .map(|_| pds.create_account().expect("account"))
        .collect();
    for round in 0..COMMITS_PER_ACCOUNT {
        for did in &accounts {
            pds.commit(
                did,
                &[Change::Create(format!("app.bsky.feed.post/r{round}"))],
            )
            .expect("commit");
        }
    }
    let backlog = pds.head_seq();
    let fixture = RelayFixture::new(&[&pds]).await;
    // A stored cursor: the relay replays everything after seq 1; a large account limit lifts
    // the per-host rate limit (50/s + limit/1000), so nothing but the relay itself slows it.
    fixture
        .db
        .client()
        .await
        .expect("client")
        .execute(
            "UPDATE hosts SET last_seq = 1, account_limit = 100000000",
            &[],
        )
        .await
        .expect("cursor");
    let (port, metrics_port) = (free_port(), free_port());
    let mut child = fixture.spawn(&plc.url(), port, metrics_port);

    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut during_ingest = 0usize;
    let mut head = 0u64;
    let mut ready = false;
    while head + 1 < backlog {
        assert!(
            started.elapsed() < LIMIT,
            "ingest did not finish: head {head} of {backlog}: {}",
            read(&fixture.log)
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "{}",
            read(&fixture.log)
        );
        let t = Instant::now();
        match http_get(port, "/_health") {
            Ok(r) => {
                let took = t.elapsed();
                assert_eq!(r.status, 200, "{}", r.body);
                assert!(took < PROBE_TIMEOUT, "/_health took {took:?} during ingest");
                latencies.push(took);
                if ready {
                    during_ingest += 1;
                }
            }
            // Only before the listener is bound.
            Err(e) => assert!(!ready, "/_health failed during ingest: {e}"),
        }
        if let Ok(r) = http_get(port, "/_readyz")
            && r.status == 200
            && let Ok(body) = serde_json::from_str::<serde_json::Value>(&r.body)
        {
            ready = true;
            head = body["seq"].as_u64().unwrap_or(0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{backlog} events ingested in {:?}; /_health probes during ingest: {during_ingest}, p50 {:?}, p99 {:?}, max {:?}",
        started.elapsed(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
    assert!(
        during_ingest >= 5,
        "the probe ran while ingest was busy ({during_ingest} probes)"
    );
    send_signal(child.id(), "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).is_some_and(|s| s.success()));
}
