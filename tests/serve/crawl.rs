//! `rookery serve` mounts the public requestCrawl and honours `--public-crawl` (here through
//! its environment variable), and counts outcomes on `/metrics`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::process::{free_port, http_get, read, send_signal, wait_exit, wait_for_health};
use crate::relay_fixture::RelayFixture;

/// One HTTP/1.1 POST of a JSON body; returns the status and the body.
fn post_json(port: u16, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
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

#[actix_rt::test]
async fn serve_answers_request_crawl_with_the_switch_from_its_flag() {
    let fixture = RelayFixture::new(&[]).await;
    let (port, metrics_port) = (free_port(), free_port());
    let mut command = fixture.command("http://127.0.0.1:1", port, metrics_port);
    command.env("ROOKERY_PUBLIC_CRAWL", "false");
    let mut child = command.spawn().expect("spawn rookery");
    wait_for_health(&mut child, port, &fixture.log);
    let path = "/xrpc/com.atproto.sync.requestCrawl";
    let (status, body) = post_json(port, path, r#"{"hostname":"pds.example.com"}"#);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(r#""error":"Forbidden""#), "{body}");
    let (status, body) = post_json(port, path, r#"{"hostname":"10.0.0.1"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("InvalidHostname"), "{body}");
    let metrics = http_get(metrics_port, "/metrics").expect("metrics").body;
    assert!(
        metrics.contains(r#"rookery_crawl_requests_total{outcome="disabled",path="public"} 1"#),
        "{metrics}"
    );
    send_signal(child.id(), "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(30)).expect("exited");
    assert!(status.success(), "{}", read(&fixture.log));
}
