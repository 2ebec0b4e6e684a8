//! `rookery serve --upstream-ca-file` against a simulated host serving `wss://` with a
//! certificate of the simulator's CA: trusting the CA, the relay ingests the host's events
//! and a firehose consumer receives them, and an admin requestCrawl of another such host
//! passes the describeServer probe over https; without it, the relay never connects, counts
//! the failed dials and refuses the requestCrawl.

use std::process::Child;
use std::time::{Duration, Instant};

use awc::ws;
use futures_util::StreamExt;
use rookery::atproto::frame::{self, Frame};
use rookery::sim::{SimPds, SimPdsConfig, SimPlc, SimTls, install_crypto_provider};
use rookery::testkit::repo::Change;

use crate::common::process::{
    HttpResponse, free_port, http_get, http_request, read, send_signal, wait_exit,
};
use crate::relay_fixture::RelayFixture;

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "tls-admin";

fn tls_host(plc: &SimPlc, tls: &SimTls) -> SimPds {
    let config = SimPdsConfig {
        tls: Some(tls.clone()),
        ..SimPdsConfig::default()
    };
    SimPds::start(plc, config).expect("pds")
}

/// `POST /admin/pds/requestCrawl` for `https://<host>`.
fn admin_request_crawl(port: u16, host: &SimPds) -> HttpResponse {
    let body = format!(r#"{{"hostname":"https://{}"}}"#, host.hostname());
    http_request(
        port,
        "POST",
        "/admin/pds/requestCrawl",
        &[
            ("Authorization", &format!("Bearer {PASSWORD}")),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .expect("requestCrawl")
}

fn stop(mut child: Child, log: &std::path::Path) {
    send_signal(child.id(), "TERM");
    let status = wait_exit(&mut child, WAIT).expect("exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", read(log));
}

#[actix_rt::test]
async fn a_relay_trusting_the_ca_ingests_a_wss_host_and_its_consumer_gets_the_events() {
    install_crypto_provider();
    let plc = SimPlc::start().expect("plc");
    let tls = SimTls::generate().expect("certificates");
    let pds = tls_host(&plc, &tls);
    let fixture = RelayFixture::new(&[&pds]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("fleet-ca.pem");
    tls.write_ca_pem(&ca_file).unwrap();
    let port = free_port();
    let mut child = fixture.spawn_with(
        &plc.url(),
        port,
        free_port(),
        &[
            ("ROOKERY_UPSTREAM_CA_FILE", ca_file.to_str().unwrap()),
            ("ROOKERY_ADMIN_PASSWORDS", PASSWORD),
        ],
    );
    let deadline = Instant::now() + WAIT;
    while pds.live_connections() == 0
        || http_get(port, "/_readyz").map(|r| r.status).ok() != Some(200)
    {
        assert!(
            Instant::now() < deadline,
            "not ready: {}",
            read(&fixture.log)
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "{}",
            read(&fixture.log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (_, mut firehose) = awc::Client::new()
        .ws(format!(
            "ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos"
        ))
        .max_frame_size(frame::MAX_FRAME_BYTES)
        .connect()
        .await
        .expect("upgrade");
    let did = pds.create_account().expect("account");
    pds.commit(
        &did,
        &[Change::Create("app.bsky.feed.post/over-tls".into())],
    )
    .expect("commit");
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut kinds = Vec::new();
    while !kinds.contains(&"commit") {
        match tokio::time::timeout_at(deadline, firehose.next()).await {
            Ok(Some(Ok(ws::Frame::Binary(bytes)))) => {
                let decoded = frame::decode_frame(&bytes).expect("decodes");
                if let Frame::Commit(commit) = &decoded {
                    assert_eq!(commit.repo, did);
                }
                kinds.push(decoded.kind());
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no commit through the relay ({kinds:?}): {other:?}"),
        }
    }
    assert_eq!(kinds, ["identity", "account", "sync", "commit"]);

    // An operator adds another TLS host: describeServer over https passes, and it is dialled.
    let added = tls_host(&plc, &tls);
    let response = admin_request_crawl(port, &added);
    assert_eq!(response.status, 200, "{}", response.body);
    let deadline = Instant::now() + WAIT;
    while added.live_connections() == 0 {
        assert!(
            Instant::now() < deadline,
            "not dialled: {}",
            read(&fixture.log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(child, &fixture.log);
    added.stop().await;
    pds.stop().await;
    plc.stop().await;
}

#[actix_rt::test]
async fn a_relay_without_the_ca_does_not_connect_to_a_wss_host_and_counts_the_failures() {
    install_crypto_provider();
    let plc = SimPlc::start().expect("plc");
    let tls = SimTls::generate().expect("certificates");
    let pds = tls_host(&plc, &tls);
    let fixture = RelayFixture::new(&[&pds]).await;
    let port = free_port();
    let child = fixture.spawn_with(
        &plc.url(),
        port,
        free_port(),
        &[("ROOKERY_ADMIN_PASSWORDS", PASSWORD)],
    );
    // The first dial fails on the certificate; the supervisor records the failure (and
    // backs off), which the write-behind stores.
    let deadline = Instant::now() + WAIT;
    let failures = loop {
        let row = fixture
            .db
            .client()
            .await
            .expect("client")
            .query_one(
                "SELECT consecutive_failures FROM hosts WHERE hostname = $1",
                &[&pds.hostname()],
            )
            .await
            .expect("host row");
        let failures: i32 = row.get(0);
        if failures > 0 {
            break failures;
        }
        assert!(
            Instant::now() < deadline,
            "no failure recorded: {}",
            read(&fixture.log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(failures >= 1);
    assert_eq!(pds.live_connections(), 0);
    let ready = http_get(port, "/_readyz").expect("readyz");
    let body: serde_json::Value = serde_json::from_str(&ready.body).expect("json");
    assert_eq!(body["hosts"]["connected"], 0, "{}", ready.body);
    // An admin requestCrawl of another such host fails its describeServer probe.
    let other = tls_host(&plc, &tls);
    let response = admin_request_crawl(port, &other);
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(
        response.body.contains("HostNotFound") && response.body.contains("UnknownIssuer"),
        "{}",
        response.body
    );
    assert_eq!(other.live_connections(), 0);
    other.stop().await;
    stop(child, &fixture.log);
    pds.stop().await;
    plc.stop().await;
}
