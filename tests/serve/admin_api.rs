//! The admin API of `rookery serve` as operator tools call it (INDIGO-ADMIN.md): every route
//! refuses missing and wrong credentials, accepts Basic and Bearer with any configured
//! password, is off (503) when none is configured; a block disconnects the host and an unblock
//! dials it again; responses have the shapes `goat relay admin` parses, field by field.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine;
use rookery::atproto::frame;
use rookery::sim::consumer::{LeanConsumer, Message};
use rookery::sim::{SimPds, SimPdsConfig, SimPlc, install_crypto_provider};
use rookery::testkit::repo::Change;
use serde_json::Value;

use crate::common::process::{HttpResponse, free_port, http_request, read, send_signal, wait_exit};
use crate::relay_fixture::RelayFixture;

const WAIT: Duration = Duration::from_secs(30);

/// Every admin route this relay serves, with a harmless request for each.
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/admin/subs/getUpstreamConns", ""),
    (
        "POST",
        "/admin/subs/killUpstream?host=nosuch.example.com",
        "",
    ),
    ("GET", "/admin/pds/list", ""),
    ("POST", "/admin/pds/block?host=nosuch.example.com", ""),
    ("POST", "/admin/pds/unblock?host=nosuch.example.com", ""),
    (
        "POST",
        "/admin/pds/changeLimits",
        r#"{"host":"nosuch.example.com","repo_limit":5}"#,
    ),
    ("GET", "/admin/consumers/list", ""),
    (
        "POST",
        "/admin/repo/takeDown",
        r#"{"did":"did:plc:nosuchaccount000000000000"}"#,
    ),
    (
        "POST",
        "/admin/repo/reverseTakedown",
        r#"{"did":"did:plc:nosuchaccount000000000000"}"#,
    ),
    ("GET", "/admin/repo/takedowns", ""),
];

fn basic(password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"));
    format!("Basic {token}")
}

fn call(port: u16, method: &str, path: &str, auth: Option<&str>, body: &str) -> HttpResponse {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = auth {
        headers.push(("Authorization", auth));
    }
    http_request(port, method, path, &headers, body.as_bytes()).expect("request")
}

fn json(r: &HttpResponse) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

/// Polls `check` every 50 ms for at most `WAIT`.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wait_ready(port: u16, child: &mut std::process::Child, log: &std::path::Path) {
    let deadline = Instant::now() + WAIT;
    loop {
        if crate::common::process::http_get(port, "/_readyz").is_ok_and(|r| r.status == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "not ready: {}", read(log));
        assert!(child.try_wait().expect("wait").is_none(), "{}", read(log));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut std::process::Child) {
    send_signal(child.id(), "TERM");
    assert!(wait_exit(child, WAIT).is_some_and(|s| s.success()));
}

/// The type of a JSON value, as goat's decoder would see it.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[actix_rt::test]
async fn admin_routes_authenticate_ban_disconnects_and_shapes_match_the_tools() {
    install_crypto_provider();
    let plc = SimPlc::start().expect("plc");
    let a = SimPds::start(&plc, SimPdsConfig::default()).expect("pds a");
    let b = SimPds::start(&plc, SimPdsConfig::default()).expect("pds b");
    let fixture = RelayFixture::new(&[&a, &b]).await;
    let (port, metrics_port) = (free_port(), free_port());

    // No password configured: the admin API is off, not open.
    let mut child = fixture.spawn(&plc.url(), port, metrics_port);
    wait_ready(port, &mut child, &fixture.log);
    for (method, path, body) in ROUTES {
        let r = call(port, method, path, Some(&basic("anything")), body);
        assert_eq!(r.status, 503, "{method} {path}: {}", r.body);
        assert!(
            json(&r)["error"]
                .as_str()
                .is_some_and(|e| e.contains("disabled"))
        );
    }
    stop(&mut child);
    assert!(read(&fixture.log).contains("admin API is disabled"));

    // Two passwords.
    let mut child = fixture.spawn_with(
        &plc.url(),
        port,
        metrics_port,
        &[("ROOKERY_ADMIN_PASSWORDS", "first-secret,second-secret")],
    );
    wait_ready(port, &mut child, &fixture.log);
    until("both hosts connected", || {
        a.live_connections() == 1 && b.live_connections() == 1
    })
    .await;
    let right = [basic("first-secret"), "Bearer second-secret".to_string()];
    for (method, path, body) in ROUTES {
        for wrong in [
            None,
            Some(basic("wrong")),
            Some("Bearer first-secretx".to_string()),
        ] {
            let r = call(port, method, path, wrong.as_deref(), body);
            assert_eq!(r.status, 401, "{method} {path} with {wrong:?}");
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Basic"))
            );
            assert_eq!(json(&r), serde_json::json!({"error": "Unauthorized"}));
            assert!(
                r.header("server")
                    .is_some_and(|s| s.contains("atproto-relay"))
            );
        }
        for auth in &right {
            let r = call(port, method, path, Some(auth), body);
            assert!(
                ![401, 403, 503].contains(&r.status),
                "{method} {path}: {} {}",
                r.status,
                r.body
            );
            assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        }
    }
    let admin =
        |method: &str, path: &str, body: &str| call(port, method, path, Some(&right[0]), body);

    // Unknown hosts: the reference's statuses where they are sound, 404 where it answers 500.
    assert_eq!(
        admin("POST", "/admin/pds/block?host=nosuch.example.com", "").status,
        404
    );
    assert_eq!(
        admin(
            "POST",
            "/admin/subs/killUpstream?host=nosuch.example.com",
            ""
        )
        .status,
        400
    );
    assert_eq!(
        admin("POST", "/admin/pds/block", "").status,
        400,
        "host is required"
    );
    assert_eq!(
        admin(
            "POST",
            "/admin/pds/changeLimits",
            r#"{"host":"nosuch.example.com","repo_limit":5}"#
        )
        .status,
        404
    );
    assert_eq!(
        admin(
            "POST",
            "/admin/pds/changeLimits",
            &format!(r#"{{"host":"{}"}}"#, a.hostname())
        )
        .status,
        400,
        "at least one field"
    );
    assert_eq!(
        admin("POST", "/admin/pds/changeLimits", "{not json").status,
        400
    );
    let big = format!(
        r#"{{"host":"{}","pad":"{}"}}"#,
        a.hostname(),
        "x".repeat(5000)
    );
    assert_eq!(admin("POST", "/admin/pds/changeLimits", &big).status, 413);

    // getUpstreamConns: an array of hostnames.
    let conns = json(&admin("GET", "/admin/subs/getUpstreamConns", ""));
    let mut names: Vec<&str> = conns
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_str().expect("string"))
        .collect();
    names.sort();
    let mut expected = vec![a.hostname(), b.hostname()];
    expected.sort();
    assert_eq!(names, expected);

    // A consumer, so the consumer list has a row.
    let (_resp, _consumer) = awc::Client::new()
        .ws(format!(
            "ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos"
        ))
        .header("User-Agent", "admin-test/1")
        .connect()
        .await
        .expect("subscribe");
    let consumers = json(&admin("GET", "/admin/consumers/list", ""));
    let consumers = consumers.as_array().expect("array");
    assert_eq!(consumers.len(), 1);
    for (field, want) in [
        ("id", "number"),
        ("remote_addr", "string"),
        ("user_agent", "string"),
        ("events_consumed", "number"),
        ("connected_at", "string"),
        ("cursor", "number"),
        ("lag", "number"),
    ] {
        assert_eq!(kind(&consumers[0][field]), want, "consumers/list {field}");
    }
    assert_eq!(consumers[0]["user_agent"], "admin-test/1");
    humantime::parse_rfc3339(consumers[0]["connected_at"].as_str().expect("time"))
        .expect("RFC 3339");

    // changeLimits updates the stored limit and the live rate limits.
    let r = admin(
        "POST",
        "/admin/pds/changeLimits",
        &format!(
            r#"{{"host":"{}","repo_limit":5000,"account_limit_alerts_silenced":true}}"#,
            a.hostname()
        ),
    );
    assert_eq!(
        (r.status, json(&r)),
        (200, serde_json::json!({"success": "true"}))
    );

    // /admin/pds/list: the PascalCase fields goat and dashboards read, with their types.
    let list = json(&admin("GET", "/admin/pds/list", ""));
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 2);
    let fields = [
        ("ID", "number"),
        ("CreatedAt", "string"),
        ("Host", "string"),
        ("SSL", "bool"),
        ("Cursor", "number"),
        ("Registered", "bool"),
        ("Blocked", "bool"),
        ("CrawlRateLimit", "number"),
        ("RepoCount", "number"),
        ("RepoLimit", "number"),
        ("HasActiveConnection", "bool"),
        ("EventsSeenSinceStartup", "number"),
        ("PerSecondEventRate", "object"),
        ("PerHourEventRate", "object"),
        ("PerDayEventRate", "object"),
        ("UserCount", "number"),
        ("AccountLimitAlertsSilenced", "bool"),
    ];
    for host in list {
        for (field, want) in fields {
            assert_eq!(kind(&host[field]), want, "pds/list {field}: {host}");
        }
        for rate in ["PerSecondEventRate", "PerHourEventRate", "PerDayEventRate"] {
            assert_eq!(kind(&host[rate]["Max"]), "number");
            assert_eq!(kind(&host[rate]["Window"]), "number");
        }
        humantime::parse_rfc3339(host["CreatedAt"].as_str().expect("time")).expect("RFC 3339");
        assert_eq!(host["SSL"], false, "the fixture's hosts are ws://");
        assert_eq!(host["HasActiveConnection"], true);
        assert_eq!(host["Registered"], true);
        assert_eq!(host["Blocked"], false);
    }
    let row_a = list
        .iter()
        .find(|h| h["Host"] == a.hostname().as_str())
        .expect("a listed");
    assert_eq!(row_a["RepoLimit"], 5000);
    assert_eq!(row_a["AccountLimitAlertsSilenced"], true);
    assert_eq!(
        row_a["PerSecondEventRate"],
        serde_json::json!({"Max": 55.0, "Window": 1.0})
    );
    assert_eq!(row_a["PerDayEventRate"]["Window"], 86400.0);

    // Block: disconnected and not redialled; listed as blocked; unblock dials it at once.
    let r = admin(
        "POST",
        &format!("/admin/pds/block?host={}", a.hostname()),
        "",
    );
    assert_eq!(
        (r.status, json(&r)),
        (200, serde_json::json!({"success": "true"}))
    );
    until("a disconnected", || a.live_connections() == 0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.live_connections(), 0, "a banned host is not redialled");
    assert_eq!(b.live_connections(), 1, "the other host is untouched");
    let list = json(&admin("GET", "/admin/pds/list", ""));
    let row_a = list
        .as_array()
        .expect("array")
        .iter()
        .find(|h| h["Host"] == a.hostname().as_str())
        .cloned()
        .expect("a");
    assert_eq!(
        (
            row_a["Blocked"].clone(),
            row_a["HasActiveConnection"].clone()
        ),
        (Value::Bool(true), Value::Bool(false))
    );
    assert_eq!(
        row_a["PerSecondEventRate"]["Max"], -1.0,
        "not subscribed: -1"
    );
    let conns = json(&admin("GET", "/admin/subs/getUpstreamConns", ""));
    assert_eq!(conns, serde_json::json!([b.hostname()]));
    // The ban is stored (batched within a second): listHosts shows it.
    until("the ban stored", || {
        json(&call(
            port,
            "GET",
            "/xrpc/com.atproto.sync.listHosts",
            None,
            "",
        ))["hosts"]
            .as_array()
            .is_some_and(|hosts| {
                hosts
                    .iter()
                    .any(|h| h["hostname"] == a.hostname().as_str() && h["status"] == "banned")
            })
    })
    .await;
    let r = admin(
        "POST",
        &format!("/admin/pds/unblock?host={}", a.hostname()),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    until("a reconnected", || a.live_connections() == 1).await;

    // killUpstream: the connection ends and comes back by itself; with block=true it stays down.
    let r = admin(
        "POST",
        &format!("/admin/subs/killUpstream?host={}", b.hostname()),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // The killed connection closes, then the relay redials after its minimal backoff and
    // shows the new connection as active.
    until("b's killed connection closed", || b.live_connections() == 0).await;
    until("b reconnected after the kill", || {
        b.live_connections() == 1
            && json(&admin("GET", "/admin/pds/list", ""))
                .as_array()
                .is_some_and(|hosts| {
                    hosts.iter().any(|h| {
                        h["Host"] == b.hostname().as_str() && h["HasActiveConnection"] == true
                    })
                })
    })
    .await;
    let r = admin(
        "POST",
        &format!("/admin/subs/killUpstream?host={}&block=true", b.hostname()),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    until("b disconnected", || b.live_connections() == 0).await;
    let list = json(&admin("GET", "/admin/pds/list", ""));
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .any(|h| h["Host"] == b.hostname().as_str() && h["Blocked"] == true)
    );

    // Requests are counted by route and status (the matched pattern, never the raw path), and
    // the group commit's latency is there too.
    let metrics = crate::common::process::http_get(metrics_port, "/metrics").expect("metrics");
    let has = |prefix: &str| metrics.body.lines().any(|l| l.starts_with(prefix));
    assert!(has(
        r#"rookery_http_requests_total{listener="public",route="/admin/pds/list",status="200"}"#
    ));
    assert!(has(
        r#"rookery_http_requests_total{listener="public",route="/admin/pds/block",status="401"}"#
    ));
    assert!(has(
        r#"rookery_http_requests_total{listener="public",route="/_readyz",status="200"}"#
    ));
    assert!(has(
        r#"rookery_http_request_seconds_bucket{listener="public",route="/admin/pds/list""#
    ));
    assert!(has("rookery_event_log_sync_seconds_bucket"));
    assert!(
        !metrics.body.contains("nosuch.example.com"),
        "no label from a request"
    );

    stop(&mut child);
    let log = read(&fixture.log);
    assert!(log.contains("admin request"), "admin requests are logged");
    assert!(
        !log.contains("first-secret") && !log.contains("second-secret"),
        "no secret in the log"
    );
}

/// Reads messages until `pred` matches a binary frame (bounded by `WAIT`); returns every
/// binary frame read, the match last.
async fn frames_until(
    c: &mut LeanConsumer,
    mut pred: impl FnMut(&frame::Frame) -> bool,
) -> Vec<frame::Frame> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, c.next())
            .await
            .expect("frame within the limit")
            .expect("stream");
        match next {
            Some(Message::Binary(b)) => {
                let f = frame::decode_frame(&b).expect("valid frame");
                let done = pred(&f);
                out.push(f);
                if done {
                    return out;
                }
            }
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }
}

fn did_of(f: &frame::Frame) -> Option<&str> {
    match f {
        frame::Frame::Commit(c) => Some(c.repo.as_str()),
        frame::Frame::Account(a) => Some(a.did.as_str()),
        frame::Frame::Identity(i) => Some(i.did.as_str()),
        frame::Frame::Sync(s) => Some(s.did.as_str()),
        _ => None,
    }
}

#[actix_rt::test]
async fn takedown_routes_go_through_the_firehose_and_page_with_string_cursors() {
    install_crypto_provider();
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let fixture = RelayFixture::new(&[&pds]).await;
    let (port, metrics_port) = (free_port(), free_port());
    let mut child = fixture.spawn_with(
        &plc.url(),
        port,
        metrics_port,
        &[("ROOKERY_ADMIN_PASSWORDS", "secret")],
    );
    wait_ready(port, &mut child, &fixture.log);
    until("connected", || pds.live_connections() == 1).await;
    let auth = basic("secret");
    let admin = |method: &str, path: &str, body: &str| call(port, method, path, Some(&auth), body);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let subscribe = |query: &'static str| async move {
        LeanConsumer::connect(
            addr,
            &format!("/xrpc/com.atproto.sync.subscribeRepos{query}"),
            "t",
        )
        .await
        .expect("subscribe")
    };

    let mut live = subscribe("").await;
    let target = pds.create_account().expect("account");
    let other = pds.create_account().expect("account");
    for did in [&target, &other] {
        pds.commit(did, &[Change::Create("app.bsky.feed.post/a".into())])
            .expect("commit");
    }
    // Both accounts' commits, so every earlier event of `target` (its creation's `#account`
    // among them, which could pass for the takedown below) is behind us: accounts are
    // sequenced by different shards, so one account's commit says nothing of the other's.
    let mut committed = HashSet::new();
    frames_until(&mut live, |f| {
        if let frame::Frame::Commit(c) = f {
            committed.insert(c.repo.clone());
        }
        committed.contains(&target) && committed.contains(&other)
    })
    .await;

    // Bad input, unknown account.
    assert_eq!(
        admin("POST", "/admin/repo/takeDown", r#"{"did":"not a did"}"#).status,
        400
    );
    assert_eq!(admin("POST", "/admin/repo/takeDown", "{}").status, 400);
    let r = admin(
        "POST",
        "/admin/repo/takeDown",
        r#"{"did":"did:plc:nosuchaccount000000000000"}"#,
    );
    assert_eq!(r.status, 404, "{}", r.body);

    // The takedown: `#account takendown` to the live consumer, next seq.
    let r = admin(
        "POST",
        "/admin/repo/takeDown",
        &format!(r#"{{"did":"{target}"}}"#),
    );
    assert_eq!(
        (r.status, json(&r)),
        (200, serde_json::json!({"success": "true"}))
    );
    let got = frames_until(
        &mut live,
        |f| matches!(f, frame::Frame::Account(a) if a.did == target),
    )
    .await;
    let frame::Frame::Account(a) = got.last().expect("frame") else {
        unreachable!()
    };
    assert!(!a.active);
    assert_eq!(a.status.as_deref(), Some("takendown"));
    // A replaying consumer no longer sees the account's earlier events, only the takedown.
    let mut replay = subscribe("?cursor=0").await;
    let seen = frames_until(
        &mut replay,
        |f| matches!(f, frame::Frame::Account(a) if a.did == target && !a.active),
    )
    .await;
    let of_target: Vec<&frame::Frame> = seen
        .iter()
        .filter(|f| did_of(f) == Some(target.as_str()))
        .collect();
    assert_eq!(
        of_target.len(),
        1,
        "only the takedown of the account is replayed: {of_target:?}"
    );
    assert!(
        seen.iter()
            .any(|f| matches!(f, frame::Frame::Commit(c) if c.repo == other)),
        "other accounts untouched"
    );
    // Listed, cursor omitted on the only page.
    assert_eq!(
        json(&admin("GET", "/admin/repo/takedowns", "")),
        serde_json::json!({"dids": [target]})
    );
    assert_eq!(
        admin("GET", "/admin/repo/takedowns?cursor=x", "").status,
        400
    );

    // Reversal: `#account` active again, the list is empty.
    let r = admin(
        "POST",
        "/admin/repo/reverseTakedown",
        &format!(r#"{{"did":"{target}"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let got = frames_until(
        &mut live,
        |f| matches!(f, frame::Frame::Account(a) if a.did == target && a.active),
    )
    .await;
    assert!(matches!(got.last(), Some(frame::Frame::Account(a)) if a.status.is_none()));
    assert_eq!(
        json(&admin("GET", "/admin/repo/takedowns", "")),
        serde_json::json!({"dids": []})
    );

    // Pages of 500 with a string cursor, none on the last page (seeded rows).
    fixture
        .db
        .client()
        .await
        .expect("client")
        .batch_execute(
            "INSERT INTO accounts (did, host_id, local_status) \
             SELECT 'did:plc:seeded' || lpad(i::text, 18, '0'), (SELECT min(id) FROM hosts), 'takendown' \
             FROM generate_series(1, 1100) AS i",
        )
        .await
        .expect("seed");
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        assert!(page < 10, "too many pages");
        let path = match &cursor {
            Some(c) => format!("/admin/repo/takedowns?cursor={c}"),
            None => "/admin/repo/takedowns".to_string(),
        };
        let body = json(&admin("GET", &path, ""));
        let dids = body["dids"].as_array().expect("dids");
        all.extend(dids.iter().map(|d| d.as_str().expect("string").to_string()));
        match body.get("cursor") {
            Some(c) => {
                assert_eq!(dids.len(), 500);
                cursor = Some(
                    c.as_str()
                        .expect("a string cursor, as goat reads it")
                        .to_string(),
                );
            }
            None => break,
        }
    }
    assert_eq!(all.len(), 1100);
    let unique: std::collections::HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 1100, "no repeats");

    send_signal(child.id(), "TERM");
    assert!(wait_exit(&mut child, WAIT).is_some_and(|s| s.success()));
}
