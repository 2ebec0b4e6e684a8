//! Query strings from hostile or sloppy clients: repeated parameters, escapes that decode to
//! invalid UTF-8, malformed escapes, huge numbers and oversized strings are 400s naming the
//! parameter; a property test sends random query strings to every method and requires an
//! XRPC answer that is never a 5xx.

use std::net::SocketAddr;

use proptest::prelude::*;
use rookery::http::sync::METHODS;
use rookery::http::xrpc::MAX_QUERY_LEN;

use crate::support::{Relay, SEED, raw_get, raw_get_unchecked};

#[actix_rt::test]
async fn malformed_escapes_and_invalid_utf8_are_400() {
    let relay = Relay::start(SEED).await;
    for (query, mentions) in [
        ("did=did:plc:%FF", "did"),
        ("did=%C3%28", "did"),
        ("did=did:plc:a%", "did"),
        ("did=did:plc:a%4", "did"),
        ("did=did:plc:a%zz", "did"),
        ("%FF=1&did=did:plc:active", "name"),
    ] {
        relay
            .get(&format!("/xrpc/com.atproto.sync.getRepoStatus?{query}"))
            .await
            .assert_error(400, "InvalidRequest", mentions);
    }
    relay.stop().await;
}

/// Raw bytes outside ASCII are not a valid request target: actix's HTTP/1 parser answers 400
/// before routing, so this answer (like one to a malformed request line) is the only one
/// without the relay's `Server` header. The same bytes percent-encoded reach the handlers and
/// get the XRPC error (above).
#[actix_rt::test]
async fn raw_non_ascii_bytes_in_the_query_are_refused_by_the_http_parser() {
    let relay = Relay::start(SEED).await;
    for target in [
        &b"/xrpc/com.atproto.sync.getRepoStatus?did=did:plc:\xff\xfe"[..],
        &b"/xrpc/com.atproto.sync.listHosts?limit=\xc3\x28"[..],
    ] {
        let reply = raw_get_unchecked(relay.addr, target);
        assert_eq!(reply.status, 400, "{:?}", String::from_utf8_lossy(target));
    }
    // The listener is still fine afterwards.
    assert_eq!(
        raw_get(relay.addr, b"/xrpc/com.atproto.sync.listHosts").status,
        200
    );
    relay.stop().await;
}

#[actix_rt::test]
async fn huge_numbers_repeats_and_oversized_query_strings_are_400() {
    let relay = Relay::start(SEED).await;
    let huge = "9".repeat(400);
    for path in [
        format!("/xrpc/com.atproto.sync.listHosts?limit={huge}"),
        format!("/xrpc/com.atproto.sync.listRepos?limit={huge}"),
        "/xrpc/com.atproto.sync.listHosts?limit=18446744073709551617".to_string(),
        "/xrpc/com.atproto.sync.listRepos?limit=-9223372036854775808".to_string(),
    ] {
        relay
            .get(&path)
            .await
            .assert_error(400, "InvalidRequest", "limit");
    }
    for path in [
        format!("/xrpc/com.atproto.sync.listHosts?cursor={huge}"),
        "/xrpc/com.atproto.sync.listRepos?cursor=9223372036854775808".to_string(),
    ] {
        relay
            .get(&path)
            .await
            .assert_error(400, "InvalidRequest", "cursor");
    }
    relay
        .get("/xrpc/com.atproto.sync.listRepos?limit=1&cursor=1&limit=1")
        .await
        .assert_error(400, "InvalidRequest", "limit must not be repeated");
    let oversized = format!(
        "/xrpc/com.atproto.sync.listHosts?pad={}",
        "x".repeat(MAX_QUERY_LEN)
    );
    relay
        .get(&oversized)
        .await
        .assert_error(400, "InvalidRequest", "query string");
    let many = vec!["a=1"; 100].join("&");
    relay
        .get(&format!("/xrpc/com.atproto.sync.listHosts?{many}"))
        .await
        .assert_error(400, "InvalidRequest", "parameters");
    relay.stop().await;
}

/// A relay on its own thread and actix system, for the (synchronous) property test.
struct BackgroundRelay {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundRelay {
    fn start(seed: &'static str) -> BackgroundRelay {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let relay = Relay::start(seed).await;
                addr_tx.send(relay.addr).expect("test thread waits");
                let _ = stop_rx.await;
                relay.stop().await;
            });
        });
        let addr = addr_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("relay started");
        BackgroundRelay {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for BackgroundRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Pieces random query strings are made of: names the endpoints read, values near their
/// bounds, escapes of any byte (so invalid UTF-8 too), malformed escapes and separators.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._~:-]{0,12}",
        "%[0-9A-Fa-f]{2}",
        "%[0-9A-Za-z]{0,2}",
        "[/?@!$'()*,;+]",
        "[0-9]{1,40}",
        prop::sample::select(vec![
            "&",
            "=",
            "&&",
            "limit=",
            "cursor=",
            "did=",
            "hostname=",
            "since=",
            "-1",
            "0",
            "1000",
            "1001",
            "did:plc:active",
            "did%3Aplc%3Aactive",
            "did:plc:takendown",
            "pds.example.com",
            "localhost:2583",
            "3jzfcijpj2z2a",
        ])
        .prop_map(str::to_string),
    ]
}

fn query_string() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..40).prop_map(|pieces| pieces.concat())
}

#[test]
fn random_query_strings_never_5xx() {
    let relay = BackgroundRelay::start(SEED);
    let methods: Vec<&str> = METHODS
        .iter()
        .copied()
        .chain(["com.example.unknown"])
        .collect();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        ..ProptestConfig::default()
    });
    let result = runner.run(
        &(prop::sample::select(methods), query_string()),
        |(method, query)| {
            let target = format!("/xrpc/{method}?{query}");
            // `raw_get` also asserts the Server header.
            let reply = raw_get(relay.addr, target.as_bytes());
            prop_assert!(
                matches!(reply.status, 200 | 302 | 400 | 403 | 404),
                "{}: {} {:?}",
                target,
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
            if reply.status == 302 {
                prop_assert!(reply.header("location").is_some());
            } else {
                let body = reply.json();
                if reply.status == 400 {
                    prop_assert_eq!(&body["error"], "InvalidRequest", "{}", target);
                }
                if reply.status >= 400 {
                    prop_assert!(body["message"].is_string(), "{}", target);
                }
            }
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
