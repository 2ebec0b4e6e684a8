//! The fleet (`rookery::sim::fleet`): the host table's generator and loader, a small fleet
//! with dead and flapping hosts and its event driver, a fleet serving TLS, and the
//! `rookery-fleet bench` binary end to end against the real `rookery serve`: `ramp` over
//! wss:// and ws://, and small `ingest`, `fanout`, `replay` and `chaos` runs; `ramp` and
//! `ingest` with `--relay-url` against a `rookery serve` already running.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rookery::actors::upstream_tls::UpstreamTls;
use rookery::sim::fleet::table::{MAX_ACCOUNTS_PER_HOST, TableShape};
use rookery::sim::fleet::{Fault, Fleet, FleetOptions, HostClass, HostTable, TableError};

use crate::client::{Incoming, WAIT, connect, connect_with, tls_client};
use crate::common::process::{free_port, http_get, rookery, wait_for_health};

#[test]
fn a_generated_table_is_shaped_like_the_network() {
    let table = HostTable::generate(3000, 7);
    assert_eq!(table.hosts.len(), 3000);
    assert_eq!(table.count(HostClass::Large), 100);
    assert_eq!(table.count(HostClass::Mid), 40);
    assert_eq!(table.count(HostClass::Tail), 2860);
    // Large hosts carry most accounts and most events.
    let accounts = table.total_accounts();
    assert!(
        table.accounts(HostClass::Large) * 2 > accounts,
        "{accounts}"
    );
    let share = |class| -> f64 {
        table
            .hosts
            .iter()
            .filter(|h| h.class == class)
            .map(|h| h.share)
            .sum()
    };
    assert!((share(HostClass::Large) - 0.85).abs() < 1e-9);
    assert!((share(HostClass::Mid) - 0.12).abs() < 1e-9);
    let total: f64 = table.hosts.iter().map(|h| h.share).sum();
    assert!((total - 1.0).abs() < 1e-9, "{total}");
    for host in &table.hosts {
        let range = match host.class {
            HostClass::Large => 150..=450,
            HostClass::Mid => 20..=80,
            HostClass::Tail => 1..=10,
        };
        assert!(range.contains(&host.accounts), "{host:?}");
        assert!(host.faults.is_empty());
    }
    // Half the tail hosts or more hold a single account.
    let single = table
        .hosts
        .iter()
        .filter(|h| h.class == HostClass::Tail && h.accounts == 1)
        .count();
    assert!(single * 2 >= 2860 * 9 / 10, "{single}");
}

#[test]
fn small_tables_keep_a_large_host_and_shares_that_sum_to_one() {
    assert_eq!(
        TableShape::for_hosts(50),
        TableShape {
            large: 2,
            mid: 0,
            tail: 48
        }
    );
    assert_eq!(
        TableShape::for_hosts(1),
        TableShape {
            large: 1,
            mid: 0,
            tail: 0
        }
    );
    for hosts in [1, 2, 50, 150] {
        let table = HostTable::generate(hosts, 1);
        assert_eq!(table.hosts.len(), hosts);
        let total: f64 = table.hosts.iter().map(|h| h.share).sum();
        assert!((total - 1.0).abs() < 1e-9, "{hosts}: {total}");
    }
}

#[test]
fn the_same_seed_gives_the_same_table_and_the_file_round_trips() {
    let a = HostTable::generate(500, 42);
    assert_eq!(a, HostTable::generate(500, 42));
    assert_ne!(a, HostTable::generate(500, 43));
    let mut faulty = a.clone();
    faulty.add_fault(Fault::Dead, 2);
    faulty.add_fault(Fault::Flapping { period_ms: 500 }, 1);
    assert_eq!(faulty.hosts.iter().filter(|h| h.is_dead()).count(), 2);
    assert_eq!(faulty.hosts[497].flap_period_ms(), Some(500));
    let text = faulty.to_jsonl();
    assert_eq!(text.lines().count(), 500);
    same_table(&HostTable::parse(&text).unwrap(), &faulty);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts.jsonl");
    faulty.write(&path).unwrap();
    same_table(&HostTable::load(&path).unwrap(), &faulty);
}

/// Equal up to the last bit of a share (serde_json's float parsing is not exact).
fn same_table(read: &HostTable, written: &HostTable) {
    assert_eq!(read.hosts.len(), written.hosts.len());
    for (r, w) in read.hosts.iter().zip(&written.hosts) {
        assert_eq!(
            (r.class, r.accounts, &r.faults),
            (w.class, w.accounts, &w.faults)
        );
        assert!((r.share - w.share).abs() <= w.share * 1e-12, "{r:?} {w:?}");
    }
}

#[test]
fn the_loader_refuses_malformed_lines_with_their_number() {
    let good = r#"{"class":"large","accounts":3,"share":0.5}"#;
    let cases = [
        (r#"{"class":"huge","accounts":3,"share":0.5}"#, "not a host"),
        (
            r#"{"class":"tail","accounts":-1,"share":0.5}"#,
            "not a host",
        ),
        (
            r#"{"class":"tail","accounts":1,"share":0.5,"colour":1}"#,
            "not a host",
        ),
        (r#"{"class":"tail","accounts":1}"#, "not a host"),
        (
            r#"{"class":"tail","accounts":1,"share":0.1,"faults":[{"fault":"slow"}]}"#,
            "not a host",
        ),
        (
            r#"{"class":"tail","accounts":1,"share":0.1,"faults":[{"fault":"flapping","period_ms":0}]}"#,
            "period_ms",
        ),
        (
            r#"{"class":"tail","accounts":1,"share":-0.1}"#,
            "non-negative",
        ),
        (
            r#"{"class":"tail","accounts":1,"share":1e999}"#,
            "not a host",
        ),
        (
            r#"{"class":"tail","accounts":100001,"share":0.1}"#,
            "accounts 100001",
        ),
        ("class=tail accounts=1", "not a host"),
    ];
    for (line, expected) in cases {
        let text = format!("# a comment\n{good}\n\n{line}\n{good}\n");
        let err = HostTable::parse(&text).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, TableError::Line { line: 4, .. }) && message.contains(expected),
            "{line}: {message}"
        );
    }
    assert!(matches!(
        HostTable::parse("# nothing\n\n"),
        Err(TableError::Empty)
    ));
    let long = format!("{good}{}", " ".repeat(5000));
    assert!(
        HostTable::parse(&long)
            .unwrap_err()
            .to_string()
            .contains("longer than")
    );
    assert_eq!(MAX_ACCOUNTS_PER_HOST, 100_000);
}

proptest! {
    #[test]
    fn the_loader_never_panics(text in ".{0,400}", lines in prop::collection::vec(
        prop_oneof![
            Just(r#"{"class":"tail","accounts":1,"share":0.1}"#.to_string()),
            r#"\{"class":"(large|mid|tail|x)","accounts":-?[0-9]{1,7},"share":-?[0-9.e]{1,6}(,"faults":\[\{"fault":"(dead|flapping)"(,"period_ms":[0-9]{1,3})?\}\])?\}"#,
            ".{0,60}",
        ],
        0..8,
    )) {
        let _ = HostTable::parse(&text);
        let joined = lines.join("\n");
        if let Ok(table) = HostTable::parse(&joined) {
            prop_assert!(!table.hosts.is_empty());
            for host in &table.hosts {
                prop_assert!(host.share.is_finite() && host.share >= 0.0);
                prop_assert!(host.accounts <= MAX_ACCOUNTS_PER_HOST);
            }
        }
    }
}

#[actix_rt::test]
async fn a_fleet_starts_its_hosts_stops_the_dead_ones_and_drives_events_by_share() {
    rookery::sim::install_crypto_provider();
    let mut table = HostTable::generate(6, 3);
    table.add_fault(Fault::Dead, 1);
    table.add_fault(Fault::Flapping { period_ms: 200 }, 1);
    let fleet = Fleet::start(&table, FleetOptions::default()).await.unwrap();
    assert_eq!(fleet.hosts.len(), 6);
    assert_eq!(fleet.reachable(), 5);
    for host in &fleet.hosts {
        assert_eq!(host.accounts.len(), host.spec.accounts as usize);
        assert_eq!(host.pds.is_running(), !host.spec.is_dead());
    }
    let dead = &fleet.hosts[5];
    assert!(dead.spec.is_dead());
    assert!(connect(&dead.pds.subscribe_url()).await.is_err());
    // A subscriber on the busiest host sees the driver's commits.
    let busiest = fleet
        .hosts
        .iter()
        .max_by(|a, b| a.spec.share.total_cmp(&b.spec.share))
        .unwrap();
    let mut client = connect(&busiest.pds.subscribe_url()).await.unwrap();
    let heads: Vec<u64> = fleet.hosts.iter().map(|h| h.pds.head_seq()).collect();
    let driver = fleet.drive(200.0, 9);
    let begun = Instant::now();
    let mut commits = 0;
    while commits < 5 && begun.elapsed() < WAIT {
        match client.next_within(WAIT).await {
            Incoming::Binary(_) => commits += 1,
            other => panic!("expected a commit, got {other:?}"),
        }
    }
    assert_eq!(commits, 5);
    let deadline = Instant::now() + WAIT;
    while driver.stats().flaps() < 2 && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(driver.stats().flaps() >= 2);
    let events = driver.stats().events();
    assert!(events >= 5, "{events}");
    assert_eq!(driver.stats().errors(), 0);
    drop(driver);
    // Every event went to a reachable host; the dead one published nothing.
    let emitted: u64 = fleet
        .hosts
        .iter()
        .zip(&heads)
        .map(|(h, before)| h.pds.head_seq() - before)
        .sum();
    assert_eq!(emitted, events);
    assert_eq!(dead.pds.head_seq(), heads[5]);
    fleet.stop().await;
}

/// A corpus: as many events as asked, mostly commits, every commit and `#sync` valid for its
/// account and chained from the one before (checked with the relay's own validation, from
/// the account's state before the corpus), drawn only from hosts a relay can receive from,
/// built the same for the same seed; published re-sequenced under each host's next seqs,
/// and the account's next ordinary commit chains from the corpus's last.
#[actix_rt::test]
async fn a_corpus_is_valid_chained_commits_that_publish_under_the_hosts_seqs() {
    use rookery::atproto::frame::{Frame, decode_frame};
    use rookery::atproto::validate::{
        CommitVerdict, SyncVerdict, ValidationPolicy, validate_commit, validate_sync,
    };
    use rookery::sim::fleet::{Corpus, CorpusHost};
    use rookery::testkit::repo::Change;
    use std::collections::HashMap;

    rookery::sim::install_crypto_provider();
    let mut table = HostTable::generate(6, 3);
    table.add_fault(Fault::Dead, 1);
    let fleet = Fleet::start(&table, FleetOptions::default()).await.unwrap();
    let hosts = CorpusHost::of(&fleet);
    assert_eq!(hosts.len(), 5, "the dead host is left out");
    let accounts: HashMap<String, usize> = fleet
        .hosts
        .iter()
        .enumerate()
        .flat_map(|(i, h)| h.accounts.iter().map(move |d| (d.clone(), i)))
        .collect();
    let mut states: HashMap<String, _> = accounts
        .keys()
        .map(|did| {
            let pds = &fleet.hosts[accounts[did]].pds;
            (did.clone(), pds.repo_state(did))
        })
        .collect();
    let corpus = Corpus::generate(&hosts, 400, 7, 2).unwrap();
    assert_eq!(corpus.len(), 400);
    let policy = ValidationPolicy::default();
    let now = rookery::atproto::tid::now_micros();
    let mut last_of = HashMap::new();
    let mut kinds = HashMap::new();
    for commit in &corpus.commits {
        let event = decode_frame(&commit.frame).expect("an event");
        *kinds.entry(event.kind()).or_insert(0) += 1;
        let did = match &event {
            Frame::Commit(c) => c.repo.clone(),
            Frame::Sync(s) => s.did.clone(),
            Frame::Identity(i) => i.did.clone(),
            Frame::Account(a) => a.did.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(accounts[&did], commit.host, "the event is its host's");
        let key = fleet.hosts[commit.host].pds.signing_key(&did).unwrap();
        match &event {
            Frame::Commit(c) => {
                let verdict = validate_commit(c, &key, states[&did].as_ref(), now, &policy);
                let Ok(CommitVerdict::Accept {
                    new_state,
                    discontinuity: None,
                    ..
                }) = verdict
                else {
                    panic!("{verdict:?}");
                };
                states.insert(did.clone(), Some(new_state));
                last_of.insert(did, c.rev.clone());
            }
            Frame::Sync(s) => {
                let verdict = validate_sync(s, &key, states[&did].as_ref(), now, &policy);
                let Ok(SyncVerdict::Accept {
                    new_state,
                    rollback: false,
                }) = verdict
                else {
                    panic!("{verdict:?}");
                };
                states.insert(did.clone(), Some(new_state));
                last_of.insert(did, s.rev.clone());
            }
            _ => {}
        }
    }
    // Mostly commits, and some of the other kinds (2% of 400).
    assert!(kinds["commit"] > 380, "{kinds:?}");
    assert!(kinds.len() >= 3, "{kinds:?}");
    // Publishing: the host's next seqs, the bytes otherwise the corpus's.
    let first = &corpus.commits[0];
    let pds = &fleet.hosts[first.host].pds;
    let head = pds.head_seq();
    let seq = pds.publish_resequenced(&first.frame).unwrap();
    assert_eq!(seq, head + 1);
    let sent = pds.published_frame(seq).unwrap();
    let peek = rookery::atproto::frame::peek_event(&sent).unwrap();
    assert_eq!(peek.seq, Some(seq));
    // The accounts' repos moved to the corpus's ends.
    let (did, rev) = last_of.iter().next().unwrap();
    let pds = &fleet.hosts[accounts[did]].pds;
    let seq = pds.commit(
        did,
        &[Change::Create("app.bsky.feed.post/aftercorpus".into())],
    );
    let Ok(Frame::Commit(next)) = decode_frame(&pds.published_frame(seq.unwrap()).unwrap()) else {
        panic!("not a commit");
    };
    assert_eq!(next.since.as_deref(), Some(rev.as_str()));
    // The same seed draws the same hosts (the repos have moved on, so not the same bytes).
    let again = Corpus::generate(&hosts, 400, 7, 1).unwrap();
    let hosts_of = |c: &Corpus| c.commits.iter().map(|c| c.host).collect::<Vec<_>>();
    assert_eq!(hosts_of(&corpus), hosts_of(&again));
    fleet.stop().await;
}

#[actix_rt::test]
async fn a_tls_fleet_serves_wss_and_writes_its_ca_file_until_dropped() {
    rookery::sim::install_crypto_provider();
    let table = HostTable::generate(3, 5);
    let options = FleetOptions {
        tls: true,
        ..FleetOptions::default()
    };
    let fleet = Fleet::start(&table, options).await.unwrap();
    let ca_file = fleet.ca_file().expect("a CA file").to_path_buf();
    let trusted = UpstreamTls::load(&ca_file).expect("the relay loads it");
    assert_eq!(trusted.extra_roots(), 1);
    let host = &fleet.hosts[0].pds;
    assert!(host.subscribe_url().starts_with("wss://"));
    let client = tls_client(trusted.websocket_config());
    let mut firehose = connect_with(&client, &host.subscribe_url()).await.unwrap();
    host.create_account().unwrap();
    assert_eq!(firehose.take(3).await.len(), 3);
    fleet.stop().await;
    drop(fleet);
    assert!(!ca_file.exists(), "the CA file goes with the fleet");
    // The default fleet is plain.
    let fleet = Fleet::start(&table, FleetOptions::default()).await.unwrap();
    assert!(fleet.ca_file().is_none());
    assert!(fleet.hosts[0].pds.subscribe_url().starts_with("ws://"));
    fleet.stop().await;
}

/// Runs `rookery-fleet bench <args>` (the real binaries, a throwaway Postgres, none of this
/// process's relay settings) with a 1 s startup spread; returns its stdout and last line's
/// JSON object.
fn run_bench(args: &[&str]) -> (String, serde_json::Value) {
    let output = bench_command(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let result = serde_json::from_str(last).expect(last);
    (stdout, result)
}

fn bench_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rookery-fleet"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("ROOKERY_") || key == "DATABASE_URL" || key == "RELAY_ADMIN_PASSWORD" {
            command.env_remove(key);
        }
    }
    command
        .arg("bench")
        .args(args)
        .args(["--json", "--timeout", "90s"])
        .env("ROOKERY_STARTUP_SPREAD", "1s")
        .stdin(Stdio::null());
    command
}

fn health_is_clean(result: &serde_json::Value) {
    assert_eq!(result["health_failures"], 0, "{result}");
    for field in ["health_p99_ms", "health_max_ms"] {
        assert!(result[field].as_f64().is_some(), "{field}: {result}");
    }
}

/// `rookery-fleet bench ramp --hosts 50 --json [extra]` with the real binaries: every host
/// connected, no `/_health` failure, and the JSON line carries the issue's fields.
fn bench_ramp_fifty(extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["ramp", "--hosts", "50"];
    args.extend_from_slice(extra);
    let (stdout, result) = run_bench(&args);
    assert_eq!(result["hosts_connected"], 50, "{result}");
    assert_eq!(result["fleet_connected"], 50, "{result}");
    assert_eq!(result["health_failures"], 0, "{result}");
    assert!(result["health_probes"].as_u64().unwrap() > 0, "{result}");
    for field in [
        "seconds_to_99pct",
        "health_p50_ms",
        "health_p99_ms",
        "health_max_ms",
    ] {
        assert!(result[field].as_f64().is_some(), "{field}: {result}");
    }
    assert!(stdout.contains("seconds to 99% connected"), "{stdout}");
    result
}

/// The default transport is wss://: the relay trusts the fleet's CA and connects every host.
#[test]
fn bench_ramp_connects_fifty_hosts_over_wss_without_a_health_failure() {
    let result = bench_ramp_fifty(&[]);
    assert_eq!(result["transport"], "wss", "{result}");
}

#[test]
fn bench_ramp_connects_fifty_hosts_over_ws_without_a_health_failure() {
    let result = bench_ramp_fifty(&["--transport", "ws"]);
    assert_eq!(result["transport"], "ws", "{result}");
}

/// `bench ingest` at small rates: every event published through the fleet's websockets
/// delivered once and in order to the checker, and the issue's fields, consistent with the
/// steps. (Whether a step counts as sustained depends on the machine's load, so the test
/// checks only that the figure is the best sustained step's.)
#[test]
fn bench_ingest_delivers_every_published_event_once() {
    let (stdout, result) = run_bench(&[
        "ingest", "--hosts", "20", "--rates", "100,200", "--step", "3s", "--drain", "20s",
    ]);
    let steps = result["steps"].as_array().expect("steps");
    assert!(!steps.is_empty(), "{result}");
    let mut best = 0.0_f64;
    for step in steps {
        assert!(step["published"].as_u64().unwrap() > 100, "{result}");
        // The step published from its corpus, built beforehand (5% more than it owes).
        let offered = step["offered_per_sec"].as_f64().unwrap();
        assert!(
            step["corpus_commits"].as_f64().unwrap() >= offered * 3.0,
            "{result}"
        );
        assert!(step["corpus_built_s"].as_f64().unwrap() > 0.0, "{result}");
        assert!(step["drained_after_s"].as_f64().is_some(), "{result}");
        assert_eq!(step["missing"], 0, "{result}");
        if step["sustained"] == true {
            best = best.max(step["delivered_per_sec"].as_f64().unwrap());
        }
    }
    assert_eq!(result["missing"], 0, "{result}");
    assert_eq!(result["duplicated"], 0, "{result}");
    assert_eq!(result["out_of_order"], 0, "{result}");
    let rate = result["events_per_sec"].as_f64().unwrap();
    assert!((rate - best).abs() < 0.01, "{result}");
    let validate_us = result["validate_full_us"].as_f64().unwrap();
    assert!(validate_us > 1.0, "{result}");
    let efficiency = result["efficiency"].as_f64().unwrap();
    assert!(
        (efficiency - rate * validate_us / 1e6).abs() < 0.01,
        "{result}"
    );
    health_is_clean(&result);
    assert!(stdout.contains("sustained"), "{stdout}");
}

/// `bench fanout` with 20 consumers in 2 processes: every consumer received every event
/// the fleet published, and the latency figures are there.
#[test]
fn bench_fanout_delivers_every_event_to_every_consumer() {
    let (_, result) = run_bench(&[
        "fanout",
        "--hosts",
        "20",
        "--consumers",
        "20",
        "--rate",
        "200",
        "--duration",
        "3s",
    ]);
    assert_eq!(result["consumers"], 20, "{result}");
    let published = result["published"].as_u64().unwrap();
    assert!(published > 300, "{result}");
    assert_eq!(result["min_frames_per_consumer"], published, "{result}");
    assert_eq!(result["frames"], published * 20, "{result}");
    assert_eq!(result["consumers_ended"], 0, "{result}");
    let p99 = result["delivery_p99_ms"].as_f64().unwrap();
    assert!(p99 > 0.0 && p99 < 10_000.0, "{result}");
    health_is_clean(&result);
}

/// `bench replay` over a 20 MB log: the consumer received every event, and both rates are
/// reported.
#[test]
fn bench_replay_reads_the_whole_log() {
    let (_, result) = run_bench(&["replay", "--log-size", "20M"]);
    let events = result["events"].as_u64().unwrap();
    assert!(events > 5_000, "{result}");
    assert!(
        result["log_bytes"].as_u64().unwrap() >= 20_000_000,
        "{result}"
    );
    assert!(result["events_per_sec"].as_f64().unwrap() > 0.0, "{result}");
    assert!(
        result["log_replay_events_per_sec"].as_f64().unwrap() > 0.0,
        "{result}"
    );
    health_is_clean(&result);
}

/// `bench chaos` for 60 s on 50 hosts with every fault on and one SIGKILL and restart of the
/// relay at 30 s: every valid event delivered exactly once and in order, nothing invalid
/// delivered.
#[test]
fn bench_chaos_sixty_seconds_with_a_relay_restart_loses_nothing() {
    let (stdout, result) = run_bench(&[
        "chaos",
        "--hosts",
        "50",
        "--duration",
        "60s",
        "--rate",
        "100",
        "--restart-at",
        "30s",
    ]);
    assert_eq!(result["relay_restarts"], 1, "{result}");
    assert!(
        result["invalid_published"].as_u64().unwrap() > 50,
        "{result}"
    );
    assert!(
        result["valid_published"].as_u64().unwrap() > 4_000,
        "{result}"
    );
    assert!(
        result["checker_reconnects"].as_u64().unwrap() >= 4,
        "{result}"
    );
    for field in ["missing", "duplicated", "out_of_order", "invalid_delivered"] {
        assert_eq!(result[field], 0, "{field}: {stdout}");
    }
    // `#identity`/`#account`/`#sync` a host resends after the crash: counted, not failed.
    assert!(result["harmless_repeats"].is_u64(), "{result}");
    assert_eq!(result["delivered"], result["valid_published"], "{result}");
    assert_eq!(result["passed"], true, "{result}");
}

const ADMIN_PASSWORD: &str = "fleet-admin-secret";

/// `rookery serve` started as an operator starts a relay before `bench --relay-url`: an empty
/// host table in a fresh database, an admin password, and as its PLC directory a port the
/// fleet's directory takes later. Killed when dropped.
struct RunningRelay {
    child: std::process::Child,
    port: u16,
    plc_port: u16,
    _dir: tempfile::TempDir,
}

impl RunningRelay {
    fn start() -> RunningRelay {
        let database_url = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(rookery::testkit::postgres::test_cluster().fresh_database())
            .expect("db")
            .connection_string;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let (port, metrics_port, plc_port) = (free_port(), free_port(), free_port());
        let mut child = rookery()
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("DATABASE_URL", database_url)
            .env("ROOKERY_BIND", format!("127.0.0.1:{port}"))
            .env("ROOKERY_METRICS_BIND", format!("127.0.0.1:{metrics_port}"))
            .env("ROOKERY_PLC_URL", format!("http://127.0.0.1:{plc_port}"))
            .env("ROOKERY_ADMIN_PASSWORDS", ADMIN_PASSWORD)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for_health(&mut child, port, &log);
        RunningRelay {
            child,
            port,
            plc_port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `bench <bench> --relay-url ... --relay-admin-url ... --relay-admin-password ...
    /// --plc-port ...` and `more`.
    fn bench(&self, bench: &str, more: &[&str]) -> (String, serde_json::Value) {
        let (url, plc_port) = (self.url(), self.plc_port.to_string());
        let mut args = vec![
            bench,
            "--relay-url",
            &url,
            "--relay-admin-url",
            &url,
            "--relay-admin-password",
            ADMIN_PASSWORD,
            "--plc-port",
            &plc_port,
        ];
        args.extend_from_slice(more);
        run_bench(&args)
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ramp --relay-url` with the admin requestCrawl: every host added (the relay lists them
/// all), connected in the fleet's view, and the figures of the relay's process null.
#[test]
fn bench_ramp_against_a_running_relay_adds_and_connects_every_host() {
    let relay = RunningRelay::start();
    let (stdout, result) = relay.bench("ramp", &["--hosts", "20"]);
    // Plain ws is the default with --relay-url (the relay cannot know this run's CA).
    assert_eq!(result["transport"], "ws", "{result}");
    assert_eq!(result["hosts_added"], 20, "{result}");
    assert_eq!(result["hosts_add_failed"], 0, "{result}");
    assert_eq!(result["hosts_limits_failed"], 0, "{result}");
    assert_eq!(result["hosts_connected"], 20, "{result}");
    assert_eq!(result["fleet_connected"], 20, "{result}");
    assert!(result["seconds_to_all"].as_f64().is_some(), "{result}");
    assert!(result["rss_mb"].is_null(), "{result}");
    assert!(result["seconds_to_listen"].is_null(), "{result}");
    assert_eq!(result["relay_url"], format!("{}/", relay.url()), "{result}");
    health_is_clean(&result);
    assert!(
        stdout.contains(&format!(
            "relay measured             {}/ (already running)",
            relay.url()
        )),
        "{stdout}"
    );
    // The relay's own view: the twenty hosts, each with the limit the bench raised.
    let listed = http_get(relay.port, "/xrpc/com.atproto.sync.listHosts?limit=100").unwrap();
    let hosts: serde_json::Value = serde_json::from_str(&listed.body).unwrap();
    let hosts = hosts["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 20, "{}", listed.body);
    assert!(
        hosts
            .iter()
            .all(|h| h["hostname"].as_str().unwrap().starts_with("localhost:")),
        "{}",
        listed.body
    );
}

/// `ingest --relay-url` with rookery's `/_readyz` as the connected count: every host
/// connected and every event delivered once, in order.
#[test]
fn bench_ingest_against_a_running_relay_delivers_every_event() {
    let relay = RunningRelay::start();
    let (_, result) = relay.bench(
        "ingest",
        &[
            "--hosts",
            "20",
            "--rates",
            "100",
            "--step",
            "3s",
            "--drain",
            "20s",
            "--connected-path",
            "/_readyz#/hosts/connected",
            "--transport",
            "ws",
        ],
    );
    assert_eq!(result["hosts_connected"], 20, "{result}");
    let steps = result["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{result}");
    assert!(steps[0]["published"].as_u64().unwrap() > 100, "{result}");
    assert_eq!(steps[0]["missing"], 0, "{result}");
    for field in ["missing", "duplicated", "out_of_order"] {
        assert_eq!(result[field], 0, "{field}: {result}");
    }
    health_is_clean(&result);
}

/// `fanout --relay-url`: every consumer received events and none was cut off; the relay's
/// CPU and RSS are null (not this bench's process).
#[test]
fn bench_fanout_against_a_running_relay_reports_no_process_figures() {
    let relay = RunningRelay::start();
    let (stdout, result) = relay.bench(
        "fanout",
        &[
            "--hosts",
            "20",
            "--consumers",
            "10",
            "--rate",
            "200",
            "--duration",
            "3s",
        ],
    );
    let published = result["published"].as_u64().unwrap();
    assert!(published > 300, "{result}");
    // Every event to every consumer is the spawned relay's test; with five of these benches
    // on two cores the relay's tail may arrive after the consumers stop.
    assert!(
        result["min_frames_per_consumer"].as_u64().unwrap() > 0,
        "{result}"
    );
    assert!(
        result["frames"].as_u64().unwrap() <= published * 10,
        "{result}"
    );
    assert_eq!(result["consumers_ended"], 0, "{result}");
    for field in ["relay_cpu_cores", "relay_rss_mb", "rss_per_consumer_kb"] {
        assert!(result[field].is_null(), "{field}: {result}");
    }
    assert!(
        stdout.contains("relay CPU                  n/a"),
        "{stdout}"
    );
    health_is_clean(&result);
}

/// `chaos --relay-url` with a restart asked for: none is done and the table says so; the
/// checker's verdict still holds.
#[test]
fn bench_chaos_against_a_running_relay_does_not_restart_it() {
    let relay = RunningRelay::start();
    let (stdout, result) = relay.bench(
        "chaos",
        &[
            "--hosts",
            "20",
            "--duration",
            "8s",
            "--rate",
            "100",
            "--restart-at",
            "4s",
        ],
    );
    assert_eq!(result["relay_restarts"], 0, "{result}");
    assert_eq!(result["relay_restart_skipped"], true, "{result}");
    assert!(
        stdout.contains("none: the relay is not this bench's process"),
        "{stdout}"
    );
    assert!(
        result["valid_published"].as_u64().unwrap() > 300,
        "{result}"
    );
    assert_eq!(result["passed"], true, "{stdout}");
}

/// `memory` and `replay` need the relay's process and say so; an https:// relay URL is
/// refused before anything starts.
#[test]
fn benches_that_need_the_relay_process_refuse_a_relay_url() {
    let cases = [
        (
            ["memory", "http://127.0.0.1:9"],
            "memory cannot measure the relay at",
        ),
        (
            ["replay", "http://127.0.0.1:9"],
            "replay cannot measure the relay at",
        ),
        (["ramp", "https://127.0.0.1:9"], "only http://"),
    ];
    for ([bench, url], expected) in cases {
        let output = bench_command(&[bench, "--relay-url", url, "--plc-port", "0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{bench}: {stderr}");
        assert!(stderr.contains(expected), "{bench}: {stderr}");
    }
}
