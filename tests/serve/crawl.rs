//! `rookery serve` mounts the public requestCrawl and the crawl admin routes behind the admin
//! auth, honours `--public-crawl` (here through its environment variable) and counts outcomes
//! on `/metrics`; `rookery pull-hosts` fills it from another relay's listHosts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use rookery::http::sync::{self, SyncApi};
use rookery::sim::{SimPds, SimPdsConfig, SimPlc, install_crypto_provider};
use rookery::store::migrations;
use rookery::store::postgres::{Db, DbSettings};
use rookery::testkit::postgres::test_cluster;

use crate::common::process::{
    free_port, http_get, read, rookery, send_signal, wait_exit, wait_for_health,
};
use crate::common::wait::eventually;
use crate::relay_fixture::RelayFixture;

const PASSWORD: &str = "crawl-secret";

/// One HTTP/1.1 POST of a JSON body, optionally with Basic credentials; status and body.
fn post_json(port: u16, path: &str, body: &str, password: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let auth = password
        .map(|p| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("admin:{p}"));
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, body.to_string())
}

/// Runs `rookery pull-hosts` without blocking this thread (servers of the test run on it).
async fn pull_hosts(from: &str, to: &str, password: &str) -> (i32, String, String) {
    let child = rookery()
        .args(["pull-hosts", "--from", from, "--relay", to])
        .env("ROOKERY_ADMIN_PASSWORD", password)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pull-hosts");
    let pid = child.id();
    let output = match tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    {
        Ok(joined) => joined.expect("join").expect("output"),
        Err(_) => {
            send_signal(pid, "KILL");
            panic!("pull-hosts did not exit");
        }
    };
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[actix_rt::test]
async fn serve_answers_request_crawl_with_the_switch_from_its_flag() {
    let fixture = RelayFixture::new(&[]).await;
    let (port, metrics_port) = (free_port(), free_port());
    let mut child = fixture.spawn_with(
        "http://127.0.0.1:1",
        port,
        metrics_port,
        &[
            ("ROOKERY_PUBLIC_CRAWL", "false"),
            ("ROOKERY_ADMIN_PASSWORDS", PASSWORD),
        ],
    );
    wait_for_health(&mut child, port, &fixture.log);
    let path = "/xrpc/com.atproto.sync.requestCrawl";
    let (status, body) = post_json(port, path, r#"{"hostname":"pds.example.com"}"#, None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(r#""error":"Forbidden""#), "{body}");
    let (status, body) = post_json(port, path, r#"{"hostname":"10.0.0.1"}"#, None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("InvalidHostname"), "{body}");
    // The crawl admin routes sit behind the admin auth.
    let (status, _) = post_json(port, "/admin/subs/setEnabled?enabled=true", "", None);
    assert_eq!(status, 401);
    let (status, body) = post_json(
        port,
        "/admin/subs/setEnabled?enabled=true",
        "",
        Some(PASSWORD),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_json(port, path, r#"{"hostname":"localhost"}"#, None);
    assert_eq!(status, 400, "{body}");
    let metrics = http_get(metrics_port, "/metrics").expect("metrics").body;
    for line in [
        r#"rookery_crawl_requests_total{outcome="disabled",path="public"} 1"#,
        r#"rookery_crawl_requests_total{outcome="invalid_hostname",path="public"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    send_signal(child.id(), "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(30)).expect("exited");
    assert!(status.success(), "{}", read(&fixture.log));
}

#[actix_rt::test]
async fn pull_hosts_fills_a_running_relay_from_another_relays_host_list() {
    install_crypto_provider();
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    // The source relay: the sync routes over a database listing the PDS and a banned host.
    let database = test_cluster().fresh_database().await.expect("db");
    let source_db = Db::new(database.pg_config.clone(), DbSettings::default()).expect("pool");
    migrations::migrate(&source_db).await.expect("migrate");
    source_db
        .client()
        .await
        .expect("client")
        .batch_execute(&format!(
            "INSERT INTO hosts (hostname, status) VALUES ('{}', 'active'), \
             ('gone.example', 'banned');",
            pds.hostname()
        ))
        .await
        .expect("seed");
    let api = SyncApi::new(Db::new(database.pg_config, DbSettings::default()).expect("pool"));
    let (server, addrs) = rookery::http::start_public(
        "127.0.0.1:0".parse().expect("address"),
        rookery::http::ListenerSettings::new(1, Duration::from_secs(1)),
        move |cfg| sync::configure(cfg, api.clone()),
    )
    .expect("bind");
    let source_handle = server.handle();
    actix_rt::spawn(server);
    let from = format!("http://{}", addrs[0]);

    let fixture = RelayFixture::new(&[]).await;
    let (port, metrics_port) = (free_port(), free_port());
    let mut child = fixture.spawn_with(
        &plc.url(),
        port,
        metrics_port,
        &[("ROOKERY_ADMIN_PASSWORDS", PASSWORD)],
    );
    wait_for_health(&mut child, port, &fixture.log);
    let to = format!("http://127.0.0.1:{port}");

    let (code, stdout, stderr) = pull_hosts(&from, &to, "wrong").await;
    assert_eq!(
        code, 1,
        "a refused password ends the run: {stdout}\n{stderr}"
    );
    assert!(stderr.contains("admin credentials"), "{stderr}");
    let (code, stdout, stderr) = pull_hosts(&from, &to, PASSWORD).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{}", read(&fixture.log));
    assert!(stdout.contains("added:             1"), "{stdout}");
    assert!(stdout.contains("skipped (banned):  1"), "{stdout}");
    assert!(
        eventually(Duration::from_secs(20), || async {
            pds.live_connections() > 0
        })
        .await,
        "rookery serve never connected to the pulled host: {}",
        read(&fixture.log)
    );
    let hosts = http_get(port, "/xrpc/com.atproto.sync.listHosts").expect("listHosts");
    assert!(hosts.body.contains(&pds.hostname()), "{}", hosts.body);
    assert!(!hosts.body.contains("gone.example"), "{}", hosts.body);

    send_signal(child.id(), "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(30)).expect("exited");
    assert!(status.success(), "{}", read(&fixture.log));
    source_handle.stop(false).await;
    pds.stop().await;
    plc.stop().await;
}
