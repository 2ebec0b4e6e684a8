//! Admission through the routes: each refusal with its own error and counter and no row
//! stored; the operator's `localhost:PORT` host added and read; known hosts dialled again
//! at once; bodies bounded.

use std::io::{Read, Write};

use rookery::actors::host_supervisor::Phase;
use rookery::actors::supervision::HostStatus;
use rookery::http::request_crawl::hostname::CrawlPath;
use rookery::http::request_crawl::{MAX_BODY_BYTES, Outcome};
use rookery::sim::{SimPds, SimPdsConfig};

use crate::support::{CrawlRelay, WAIT, eventually};

fn start_pds(relay: &CrawlRelay) -> SimPds {
    SimPds::start(&relay.plc, SimPdsConfig::default()).expect("sim pds")
}

#[actix_rt::test]
async fn the_admin_path_adds_a_localhost_pds_and_the_relay_reads_it() {
    let relay = CrawlRelay::start("").await;
    let pds = start_pds(&relay);
    let body = relay.admin_crawl(&pds.hostname()).await.assert_success();
    assert_eq!(body["result"], "added", "{body}");
    assert_eq!(body["hostname"], pds.hostname().as_str());
    let row = relay.host_row(&pds.hostname()).await.expect("stored");
    assert!(row.no_ssl && row.admin_added && row.ssrf_exempt, "{row:?}");
    assert!(
        eventually(WAIT, || async { pds.live_connections() > 0 }).await,
        "the relay never connected to the added host"
    );
    // Events flow: an account's creation reaches the shards.
    pds.create_account().expect("account");
    let flowed = eventually(WAIT, || async {
        relay
            .pipeline()
            .shards
            .states()
            .iter()
            .map(|s| s.forwarded)
            .sum::<u64>()
            >= 1
    })
    .await;
    assert!(flowed, "{:?}", relay.pipeline().shards.states());
    // Again: known, not added twice.
    let body = relay.admin_crawl(&pds.hostname()).await.assert_success();
    assert_eq!(body["result"], "already_known");
    assert_eq!(relay.host_count().await, 1);
    // The public path never takes a port.
    relay
        .public_crawl(&pds.hostname())
        .await
        .assert_xrpc(400, "InvalidHostname");
    assert_eq!(relay.counted(CrawlPath::Admin, Outcome::Added), 1);
    assert_eq!(relay.counted(CrawlPath::Admin, Outcome::Known), 1);
    assert_eq!(
        relay.counted(CrawlPath::Public, Outcome::InvalidHostname),
        1
    );
    pds.stop().await;
    relay.stop().await;
}

#[actix_rt::test]
async fn hosts_failing_describe_server_or_looking_like_relays_are_refused_and_not_stored() {
    let relay = CrawlRelay::start("").await;
    // Stopped: nothing answers describeServer.
    let dead = start_pds(&relay);
    dead.stop().await;
    relay
        .admin_crawl(&dead.hostname())
        .await
        .assert_xrpc(400, "HostNotFound");
    // A relay-looking host: its describeServer carries Server: ...atproto-relay.
    let relay_like = start_pds(&relay);
    relay_like.set_relay_header(true);
    let reply = relay.admin_crawl(&relay_like.hostname()).await;
    reply.assert_xrpc(400, "HostIsRelay");
    // The relay under test itself: its describeServer is a 404 with the relay header.
    relay
        .admin_crawl(&format!("localhost:{}", relay.addr.port()))
        .await
        .assert_xrpc(400, "HostIsRelay");
    assert_eq!(
        relay.host_count().await,
        0,
        "refused hosts are never stored"
    );
    assert_eq!(relay_like.live_connections(), 0);
    assert_eq!(relay.counted(CrawlPath::Admin, Outcome::DescribeFailed), 1);
    assert_eq!(relay.counted(CrawlPath::Admin, Outcome::Relay), 2);
    // The same host without the header is a PDS.
    relay_like.set_relay_header(false);
    relay
        .admin_crawl(&relay_like.hostname())
        .await
        .assert_success();
    relay_like.stop().await;
    relay.stop().await;
}

#[actix_rt::test]
async fn banned_domains_cover_their_subdomains_and_ban_known_hosts_under_them() {
    // A known host under the domain to be banned (idle: the supervisor does not dial it).
    let relay = CrawlRelay::start(
        "INSERT INTO hosts (hostname, status) VALUES ('pds.banned.example', 'idle'), \
         ('pds.other.example', 'idle');",
    )
    .await;
    let body = relay
        .post("/admin/subs/banDomain", r#"{"domain":"Banned.Example."}"#)
        .await
        .assert_success();
    assert_eq!(body["domain"], "banned.example");
    assert_eq!(body["already_banned"], false);
    assert_eq!(body["hosts_banned"], 1);
    let listed = relay.get("/admin/subs/listDomainBans").await.json();
    assert_eq!(
        listed,
        serde_json::json!({ "banned_domains": ["banned.example"] })
    );
    // The known host under it is banned, in the table and in the supervisor.
    assert_eq!(
        relay
            .host_row("pds.banned.example")
            .await
            .map(|r| r.status)
            .as_deref(),
        Some("banned")
    );
    let view = relay.connection("pds.banned.example").await.expect("known");
    assert_eq!(view.status, HostStatus::Banned);
    assert_eq!(
        relay
            .host_row("pds.other.example")
            .await
            .map(|r| r.status)
            .as_deref(),
        Some("idle")
    );
    // The domain and every name under it, on both paths; the lexicon-free name DomainBan.
    for name in ["banned.example", "a.banned.example", "x.y.BANNED.example."] {
        relay.public_crawl(name).await.assert_xrpc(400, "DomainBan");
        relay.admin_crawl(name).await.assert_xrpc(400, "DomainBan");
    }
    relay
        .public_crawl("pds.banned.example")
        .await
        .assert_xrpc(400, "DomainBan");
    // A look-alike outside the domain passes the ban (and stops at DNS here).
    relay
        .public_crawl("notbanned.example")
        .await
        .assert_xrpc(400, "HostUnresolvable");
    relay
        .public_crawl("banned.example.com")
        .await
        .assert_xrpc(400, "HostUnresolvable");
    assert!(
        !relay
            .dns
            .lookups()
            .iter()
            .any(|n| n == "banned.example" || n.ends_with(".banned.example")),
        "banned names are refused before any lookup: {:?}",
        relay.dns.lookups()
    );
    assert_eq!(relay.host_count().await, 2, "nothing new stored");
    // A duplicate ban is a success.
    let body = relay
        .post("/admin/subs/banDomain", r#"{"domain":"banned.example"}"#)
        .await
        .assert_success();
    assert_eq!(body["already_banned"], true);
    assert_eq!(body["hosts_banned"], 0);
    // Lifting the ban lets new names through; the host it banned stays banned.
    let body = relay
        .post("/admin/subs/unbanDomain", r#"{"domain":"banned.example"}"#)
        .await
        .assert_success();
    assert_eq!(body["removed"], true);
    relay
        .public_crawl("a.banned.example")
        .await
        .assert_xrpc(400, "HostUnresolvable");
    relay
        .public_crawl("pds.banned.example")
        .await
        .assert_xrpc(400, "HostBanned");
    let body = relay
        .post("/admin/subs/unbanDomain", r#"{"domain":"banned.example"}"#)
        .await
        .assert_success();
    assert_eq!(body["removed"], false);
    assert_eq!(
        relay.get("/admin/subs/listDomainBans").await.json(),
        serde_json::json!({ "banned_domains": [] })
    );
    // Bad domains are admin errors.
    for bad in [
        r#"{"domain":"https://x.example"}"#,
        r#"{"domain":""}"#,
        r#"{"domain":5}"#,
        "{",
    ] {
        relay
            .post("/admin/subs/banDomain", bad)
            .await
            .assert_admin_error(400);
    }
    assert_eq!(relay.counted(CrawlPath::Public, Outcome::DomainBanned), 4);
    assert_eq!(relay.counted(CrawlPath::Admin, Outcome::DomainBanned), 3);
    assert_eq!(relay.counted(CrawlPath::Public, Outcome::HostBanned), 1);
    relay.stop().await;
}

#[actix_rt::test]
async fn the_public_switch_and_the_daily_limit_refuse_new_hosts() {
    let relay = CrawlRelay::start(
        // One host public requestCrawl added an hour ago, one an operator added.
        "INSERT INTO hosts (hostname, status, admin_added, created_at) VALUES \
         ('recent.crawl.example', 'idle', false, now() - interval '1 hour'), \
         ('operator.crawl.example', 'idle', true, now());",
    )
    .await;
    // Switched off: 403, stored nowhere, not even looked up.
    relay
        .post("/admin/subs/setEnabled?enabled=false", "")
        .await
        .assert_success();
    relay
        .public_crawl("new.crawl.example")
        .await
        .assert_xrpc(403, "Forbidden");
    relay
        .post("/admin/subs/setEnabled?enabled=true", "")
        .await
        .assert_success();
    // A limit of 1 is spent by the recent public host (the operator's does not count).
    relay
        .post("/admin/subs/setPerDayLimit?limit=1", "")
        .await
        .assert_success();
    let reply = relay.public_crawl("new.crawl.example").await;
    reply.assert_xrpc(429, "RateLimitExceeded");
    let retry: u64 = reply
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    // The recent host leaves the 24-hour window in about 23 hours.
    assert!((22 * 3600..=23 * 3600 + 60).contains(&retry), "{retry}");
    // 0: no new host at all.
    relay
        .post("/admin/subs/setPerDayLimit?limit=0", "")
        .await
        .assert_success();
    let reply = relay.public_crawl("new.crawl.example").await;
    reply.assert_xrpc(429, "RateLimitExceeded");
    // Room for one more: the limit check passes and DNS decides.
    relay
        .post("/admin/subs/setPerDayLimit?limit=2", "")
        .await
        .assert_success();
    relay
        .public_crawl("new.crawl.example")
        .await
        .assert_xrpc(400, "HostUnresolvable");
    assert_eq!(relay.dns.lookups(), ["new.crawl.example"]);
    assert_eq!(relay.host_count().await, 2);
    assert_eq!(relay.counted(CrawlPath::Public, Outcome::Disabled), 1);
    assert_eq!(relay.counted(CrawlPath::Public, Outcome::DailyLimit), 2);
    relay.stop().await;
}

#[actix_rt::test]
async fn known_idle_and_offline_hosts_are_dialled_again_at_once() {
    // The hosts first: the seed names them before the relay loads its host table.
    let plc = rookery::sim::SimPlc::start().expect("plc");
    let idle = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let offline = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    offline.stop().await;
    let seed = format!(
        "INSERT INTO hosts (hostname, status, no_ssl, admin_added) VALUES ('{}', 'idle', true, true); \
         INSERT INTO hosts (hostname, status, no_ssl, admin_added, consecutive_failures) \
             VALUES ('{}', 'offline', true, true, 20); \
         INSERT INTO hosts (hostname, status) VALUES ('idle.crawl.example', 'idle');",
        idle.hostname(),
        offline.hostname()
    );
    let relay = CrawlRelay::start(&seed).await;
    // The offline host's load-time dial fails (nothing listens) and it backs off for the
    // 30-minute cap; the idle one is dialled at start too (a `FutureCursor` host whose
    // redial a restart cut short: in-process it would have been redialled).
    let backed_off = eventually(WAIT, || async {
        relay
            .connection(&offline.hostname())
            .await
            .is_some_and(|v| v.dials == 1 && v.failures == 21 && v.phase == Phase::Scheduled)
    })
    .await;
    assert!(
        backed_off,
        "{:?}",
        relay.connection(&offline.hostname()).await
    );
    assert!(
        eventually(WAIT, || async { idle.live_connections() > 0 }).await,
        "an idle host is dialled at start"
    );

    // requestCrawl brings the offline one back now (the idle one is connected already).
    offline.restart().expect("restart");
    for host in [&idle, &offline] {
        let body = relay.admin_crawl(&host.hostname()).await.assert_success();
        assert_eq!(body["result"], "already_known");
    }
    for host in [&idle, &offline] {
        assert!(
            eventually(WAIT, || async { host.live_connections() > 0 }).await,
            "{} not dialled again",
            host.hostname()
        );
    }
    // A known host on the public path: no daily limit, no lookup, dialled again (it was
    // dialled at start and failed: the name does not resolve).
    relay
        .post("/admin/subs/setPerDayLimit?limit=0", "")
        .await
        .assert_success();
    let dials_before = relay
        .connection("idle.crawl.example")
        .await
        .map_or(0, |v| v.dials);
    for name in ["idle.crawl.example", "IDLE.crawl.example."] {
        let reply = relay.public_crawl(name).await;
        assert_eq!(reply.status, 200, "{name}: {:?}", reply.body);
        assert!(reply.body.is_empty(), "the lexicon's output is empty");
    }
    let dialled = eventually(WAIT, || async {
        relay
            .connection("idle.crawl.example")
            .await
            .is_some_and(|v| v.dials > dials_before)
    })
    .await;
    assert!(dialled);
    assert!(
        relay.dns.lookups().is_empty(),
        "known hosts are not checked again"
    );
    assert_eq!(relay.counted(CrawlPath::Public, Outcome::Known), 2);
    assert_eq!(relay.counted(CrawlPath::Admin, Outcome::Known), 2);
    assert_eq!(relay.host_count().await, 3);
    relay.stop().await;
    idle.stop().await;
    offline.stop().await;
    plc.stop().await;
}

#[actix_rt::test]
async fn bodies_are_bounded_and_must_be_json_objects_with_a_hostname() {
    let relay = CrawlRelay::start("").await;
    let path = "/xrpc/com.atproto.sync.requestCrawl";
    let big = format!(
        r#"{{"hostname":"pds.example.com","pad":"{}"}}"#,
        "x".repeat(MAX_BODY_BYTES)
    );
    relay
        .post(path, big.clone())
        .await
        .assert_xrpc(413, "PayloadTooLarge");
    relay
        .post("/admin/pds/requestCrawl", big)
        .await
        .assert_xrpc(413, "PayloadTooLarge");
    // Without Content-Length (chunked), the limit holds as the body arrives.
    let reply = raw_chunked_post(relay.addr, path, &"y".repeat(MAX_BODY_BYTES + 10));
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    for bad in [
        "",
        "{",
        "not json",
        "[]",
        "{}",
        r#"{"hostname":5}"#,
        r#"{"host":"a.example"}"#,
    ] {
        relay
            .post(path, bad)
            .await
            .assert_xrpc(400, "InvalidRequest");
    }
    relay
        .post(path, r#"{"hostname":"http://pds.example.com"}"#)
        .await
        .assert_xrpc(400, "InvalidHostname");
    let reply = relay.get(path).await;
    reply.assert_xrpc(405, "InvalidRequest");
    assert_eq!(reply.header("allow"), Some("POST"));
    assert_eq!(relay.counted(CrawlPath::Public, Outcome::TooLarge), 2);
    assert_eq!(relay.counted(CrawlPath::Admin, Outcome::TooLarge), 1);
    assert_eq!(relay.counted(CrawlPath::Public, Outcome::InvalidRequest), 7);
    assert_eq!(relay.host_count().await, 0);
    relay.stop().await;
}

/// A chunked POST over a plain socket (awc always sends a length for a known body); returns
/// the response head.
fn raw_chunked_post(addr: std::net::SocketAddr, path: &str, body: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: relay.test\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for chunk in body.as_bytes().chunks(1000) {
        request.push_str(&format!("{:x}\r\n", chunk.len()));
        request.push_str(std::str::from_utf8(chunk).expect("ascii"));
        request.push_str("\r\n");
    }
    request.push_str("0\r\n\r\n");
    // The server may answer and close before reading everything; that is the point.
    let _ = stream.write_all(request.as_bytes());
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            break;
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}
