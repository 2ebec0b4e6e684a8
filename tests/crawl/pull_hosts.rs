//! `rookery pull-hosts` between two relays on 127.0.0.1: a source relay's listHosts (the sync
//! routes over a seeded database) → this relay's admin requestCrawl (admission in front of a
//! running pipeline). The library function for the counts, the binary for its exit codes.

use std::process::Stdio;
use std::time::Duration;

use rookery::http::pull_hosts::{
    AdminPassword, FailedSide, PullHostsSettings, PullSummary, pull_hosts,
};
use rookery::sim::{SimPds, SimPdsConfig};

use crate::common::process::{free_port, rookery};
use crate::support::{ADMIN_PASSWORD, CrawlRelay, SourceRelay, WAIT, eventually};

fn settings(from: &str, relay: &CrawlRelay, password: &str) -> PullHostsSettings {
    let mut s = PullHostsSettings::new(
        from.parse().expect("url"),
        relay.url("/").parse().expect("url"),
        AdminPassword::new(password),
    );
    s.request_timeout = Duration::from_secs(15);
    s
}

/// Two simulated PDS hosts, one banned host, and 1,000 more (500 under a domain the target
/// bans, 500 that do not resolve): 1,003 hosts, two pages of 1,000.
fn source_seed(pds: &[&SimPds]) -> String {
    format!(
        "INSERT INTO hosts (hostname, status, no_ssl, admin_added) VALUES \
             ('{}', 'active', true, true), ('{}', 'active', true, true); \
         INSERT INTO hosts (hostname, status) VALUES ('gone.crawl.example', 'banned'); \
         INSERT INTO hosts (hostname) SELECT 'h' || g || '.bannedsrc.example' \
             FROM generate_series(1, 500) g; \
         INSERT INTO hosts (hostname) SELECT 'h' || g || '.nx.example' \
             FROM generate_series(1, 500) g;",
        pds[0].hostname(),
        pds[1].hostname()
    )
}

#[actix_rt::test]
async fn hosts_of_another_relay_go_through_admission_and_the_pds_hosts_are_read() {
    let relay = CrawlRelay::start("").await;
    relay
        .post("/admin/subs/banDomain", r#"{"domain":"bannedsrc.example"}"#)
        .await
        .assert_success();
    let a = SimPds::start(&relay.plc, SimPdsConfig::default()).expect("pds");
    let b = SimPds::start(&relay.plc, SimPdsConfig::default()).expect("pds");
    let source = SourceRelay::start(&source_seed(&[&a, &b])).await;

    let mut run = settings(&source.base_url(), &relay, ADMIN_PASSWORD);
    run.progress_every = Duration::ZERO;
    let mut reports: Vec<PullSummary> = Vec::new();
    let summary = pull_hosts(&run, &mut |p| reports.push(p.clone()))
        .await
        .expect("pull");
    assert_eq!(summary.pages, 2);
    assert_eq!(summary.listed, 1003);
    assert_eq!(summary.skipped_banned, 1);
    assert_eq!(summary.added, 2);
    assert_eq!(summary.already_known, 0);
    assert_eq!(
        summary.refused.clone().into_iter().collect::<Vec<_>>(),
        [
            ("DomainBan".to_string(), 500),
            ("HostUnresolvable".to_string(), 500)
        ]
    );
    assert_eq!(summary.stopped_early, None);
    // A report after each submission (progress_every zero), counts only growing.
    assert_eq!(reports.len(), 1002);
    assert!(
        reports
            .windows(2)
            .all(|w| w[0].added + w[0].refused_total() < w[1].added + w[1].refused_total())
    );
    // Only the two PDS hosts were stored, and the relay reads them.
    assert_eq!(relay.host_count().await, 2);
    for pds in [&a, &b] {
        let row = relay.host_row(&pds.hostname()).await.expect("stored");
        assert!(row.admin_added && row.no_ssl, "{row:?}");
        assert!(
            eventually(WAIT, || async { pds.live_connections() > 0 }).await,
            "{} not connected",
            pds.hostname()
        );
    }
    assert!(relay.host_row("gone.crawl.example").await.is_none());

    // Again: both known now, the rest refused the same way.
    let summary = pull_hosts(
        &settings(&source.base_url(), &relay, ADMIN_PASSWORD),
        &mut |_| {},
    )
    .await
    .expect("pull");
    assert_eq!((summary.added, summary.already_known), (0, 2));
    assert_eq!(summary.refused_total(), 1000);

    // A page cap stops the walk early.
    let mut capped = settings(&source.base_url(), &relay, ADMIN_PASSWORD);
    capped.max_pages = 1;
    let summary = pull_hosts(&capped, &mut |_| {}).await.expect("pull");
    assert_eq!(summary.pages, 1);
    assert_eq!(summary.listed, 1000);
    assert_eq!(summary.stopped_early, Some("page cap reached"));

    source.stop().await;
    a.stop().await;
    b.stop().await;
    relay.stop().await;
}

#[actix_rt::test]
async fn an_unreachable_side_or_a_refused_password_ends_the_run() {
    let relay = CrawlRelay::start("").await;
    let source = SourceRelay::start(
        "INSERT INTO hosts (hostname) VALUES ('one.nx.example'), ('two.nx.example');",
    )
    .await;
    let dead = format!("http://127.0.0.1:{}", free_port());

    let failure = pull_hosts(&settings(&dead, &relay, ADMIN_PASSWORD), &mut |_| {})
        .await
        .expect_err("source down");
    assert_eq!(failure.side, FailedSide::Source);

    let mut to_dead = settings(&source.base_url(), &relay, ADMIN_PASSWORD);
    to_dead.relay = dead.parse().expect("url");
    let failure = pull_hosts(&to_dead, &mut |_| {})
        .await
        .expect_err("relay down");
    assert_eq!(failure.side, FailedSide::Relay);
    assert_eq!(failure.summary.listed, 2);

    // The admin scope does not let a wrong password in: nothing is submitted.
    let failure = pull_hosts(&settings(&source.base_url(), &relay, "wrong"), &mut |_| {})
        .await
        .expect_err("refused");
    assert_eq!(failure.side, FailedSide::Relay);
    assert!(
        failure.reason.contains("admin credentials (401)"),
        "{}",
        failure.reason
    );
    assert_eq!(failure.summary.refused_total() + failure.summary.added, 0);
    assert!(relay.dns.lookups().is_empty());

    // A source that is not a relay (its listHosts is a 404).
    let failure = pull_hosts(
        &settings(&relay.url("/nope"), &relay, ADMIN_PASSWORD),
        &mut |_| {},
    )
    .await
    .expect_err("no listHosts");
    assert_eq!(failure.side, FailedSide::Source);
    source.stop().await;
    relay.stop().await;
}

#[actix_rt::test]
async fn a_source_repeating_its_cursor_is_read_once_around() {
    let relay = CrawlRelay::start("").await;
    // A source whose every page says "more after `same`".
    let (server, addrs) = rookery::http::start_public(
        "127.0.0.1:0".parse().expect("address"),
        rookery::http::ListenerSettings::new(1, Duration::from_secs(1)),
        |cfg| {
            cfg.route(
                "/xrpc/com.atproto.sync.listHosts",
                actix_web::web::get().to(|| async {
                    actix_web::HttpResponse::Ok().json(serde_json::json!({
                        "cursor": "same",
                        "hosts": [{ "hostname": "loop.nx.example" }, { "status": "active" }],
                    }))
                }),
            );
        },
    )
    .expect("bind");
    let handle = server.handle();
    actix_rt::spawn(server);
    let summary = pull_hosts(
        &settings(&format!("http://{}", addrs[0]), &relay, ADMIN_PASSWORD),
        &mut |_| {},
    )
    .await
    .expect("pull");
    assert_eq!(summary.pages, 2, "the first page, then the one at `same`");
    assert_eq!(summary.listed, 2, "entries without a hostname are skipped");
    assert_eq!(summary.stopped_early, Some("the source repeated a cursor"));
    handle.stop(false).await;
    relay.stop().await;
}

/// Runs the binary without blocking this thread (the relay's actors run on it).
async fn run_binary(args: &[&str], password: Option<&str>) -> (i32, String, String) {
    let mut command = rookery();
    command
        .arg("pull-hosts")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = password {
        command.env("ROOKERY_ADMIN_PASSWORD", p);
    }
    let child = command.spawn().expect("spawn rookery");
    let pid = child.id();
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let output = match waited {
        Ok(joined) => joined.expect("join").expect("output"),
        Err(_) => {
            crate::common::process::send_signal(pid, "KILL");
            panic!("rookery pull-hosts did not exit");
        }
    };
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[actix_rt::test]
async fn the_binary_exits_0_after_a_run_1_when_a_side_is_down_2_without_a_password() {
    let relay = CrawlRelay::start("").await;
    let pds = SimPds::start(&relay.plc, SimPdsConfig::default()).expect("pds");
    let source = SourceRelay::start(&format!(
        "INSERT INTO hosts (hostname, status, no_ssl) VALUES ('{}', 'active', true), \
         ('gone.crawl.example', 'banned', false), ('x.nx.example', 'active', false);",
        pds.hostname()
    ))
    .await;
    let from = source.base_url();
    let to = relay.url("");

    let dir = tempfile::tempdir().expect("tempdir");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{ADMIN_PASSWORD}\n")).expect("write");
    let file = password_file.to_string_lossy().into_owned();
    let (code, stdout, stderr) = run_binary(
        &[
            "--from",
            &from,
            "--relay",
            &to,
            "--admin-password-file",
            &file,
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for line in [
        "hosts listed:      3",
        "skipped (banned):  1",
        "added:             1",
        "HostUnresolvable: 1",
    ] {
        assert!(stdout.contains(line), "{line:?} in {stdout}");
    }
    assert!(eventually(WAIT, || async { pds.live_connections() > 0 }).await);
    // The environment variable works as well; the host is known now.
    let (code, stdout, _) =
        run_binary(&["--from", &from, "--relay", &to], Some(ADMIN_PASSWORD)).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("already known:     1"), "{stdout}");

    let dead = format!("http://127.0.0.1:{}", free_port());
    let (code, _, stderr) =
        run_binary(&["--from", &dead, "--relay", &to], Some(ADMIN_PASSWORD)).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("source relay"), "{stderr}");
    let (code, _, stderr) =
        run_binary(&["--from", &from, "--relay", &dead], Some(ADMIN_PASSWORD)).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("could not be reached"), "{stderr}");
    let (code, _, stderr) = run_binary(&["--from", &from, "--relay", &to], None).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--admin-password-file"), "{stderr}");
    let (code, _, stderr) = run_binary(&["--from", "ftp://x", "--relay", &to], Some("p")).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--from"), "{stderr}");

    source.stop().await;
    pds.stop().await;
    relay.stop().await;
}
