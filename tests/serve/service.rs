//! rookery as a systemd service (ops/): the notify protocol seen from a fake
//! `NOTIFY_SOCKET` (READY=1 once `/_readyz` is 200, WATCHDOG=1 at half of `WATCHDOG_USEC`,
//! no pings once ingest really stalls), the journald log format, and the files in ops/
//! checked against the binary's CLI and `systemd-analyze`.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use rookery::config::{Cli, Config};
use rookery::sim::{SimPds, SimPdsConfig, SimPlc};
use rookery::testkit::repo::Change;

use crate::common::process::{BIN, free_port, http_get, read, send_signal};
use crate::relay_fixture::RelayFixture;

const WAIT: Duration = Duration::from_secs(60);

/// The service manager's side of `NOTIFY_SOCKET`: a datagram socket read by its own thread,
/// every message kept with the moment it arrived.
struct NotifyListener {
    path: PathBuf,
    received: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifyListener {
    fn bind(dir: &Path) -> NotifyListener {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let received: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopping) = (Arc::clone(&received), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut buf = vec![0u8; 4096];
            while !stopping.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok(n) = socket.recv(&mut buf) {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    into.lock().expect("lock").push((Instant::now(), message));
                }
            }
        });
        NotifyListener {
            path,
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn messages(&self) -> Vec<(Instant, String)> {
        self.received.lock().expect("lock").clone()
    }

    /// The first message (in arrival order) with `assignment` among its lines; `child`, if
    /// given, must stay alive meanwhile.
    async fn wait_for(
        &self,
        assignment: &str,
        mut child: Option<&mut std::process::Child>,
        log: &Path,
    ) -> (Instant, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self
                .messages()
                .into_iter()
                .find(|(_, m)| m.lines().any(|l| l.starts_with(assignment)))
            {
                return found;
            }
            assert!(Instant::now() < deadline, "no {assignment}: {}", read(log));
            if let Some(child) = child.as_deref_mut() {
                assert!(
                    child.try_wait().expect("wait").is_none(),
                    "exited: {}",
                    read(log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Arrival times of `WATCHDOG=1` after `since`.
    fn pings_after(&self, since: Instant) -> Vec<Instant> {
        self.messages()
            .into_iter()
            .filter(|(at, m)| *at > since && m.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(at, _)| at)
            .collect()
    }
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn status_of(message: &str) -> &str {
    message
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_default()
}

#[actix_rt::test]
async fn ready_follows_readyz_the_watchdog_pings_at_its_interval_and_stops_when_ingest_stalls() {
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let fixture = RelayFixture::new(&[&pds]).await;
    let log = fixture.log.clone();
    let temp = tempfile::tempdir().expect("tempdir");
    let notify = NotifyListener::bind(temp.path());
    let port = free_port();
    let notify_socket = notify.path.to_string_lossy().into_owned();
    let mut child = fixture.spawn_with(
        &plc.url(),
        port,
        free_port(),
        &[
            ("NOTIFY_SOCKET", &notify_socket),
            // WatchdogSec=1s: pings every 500 ms.
            ("WATCHDOG_USEC", "1000000"),
            ("ROOKERY_LOG_FORMAT", "journald"),
            // Small segments: a few large records make the log start a new one.
            ("ROOKERY_EVENT_LOG_SEGMENT_SIZE", "1M"),
        ],
    );

    // READY=1 comes once /_readyz answers 200, and no ping comes before it.
    let (ready_at, ready) = notify.wait_for("READY=1", Some(&mut child), &log).await;
    let readyz = http_get(port, "/_readyz").expect("readyz");
    assert_eq!(
        readyz.status, 200,
        "READY=1 before /_readyz is 200: {}",
        readyz.body
    );
    assert!(
        status_of(&ready).starts_with("ready;") && status_of(&ready).contains("hosts connected"),
        "{ready}"
    );
    let before: Vec<_> = notify
        .messages()
        .into_iter()
        .filter(|(at, _)| *at < ready_at)
        .collect();
    assert!(
        before.is_empty(),
        "notifications before READY=1: {before:?}"
    );

    // WATCHDOG=1 every half WATCHDOG_USEC.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let pings = notify.pings_after(ready_at);
    assert!(
        pings.len() >= 5,
        "{} pings in 3.2 s: {pings:?}",
        pings.len()
    );
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = gaps.iter().sum::<Duration>() / gaps.len() as u32;
    assert!(
        mean >= Duration::from_millis(400) && mean <= Duration::from_millis(650),
        "mean ping interval {mean:?}: {gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(1_000)),
        "a gap as long as WatchdogSec: {gaps:?}"
    );
    // STATUS= follows: hosts connected, consumers, seq head.
    let deadline = Instant::now() + WAIT;
    while pds.live_connections() == 0 {
        assert!(Instant::now() < deadline, "no connection: {}", read(&log));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let did = pds.create_account().expect("account");
    let head = pds.head_seq();
    let deadline = Instant::now() + WAIT;
    loop {
        let latest = notify.messages().into_iter().rev().find_map(|(_, m)| {
            let s = status_of(&m).to_string();
            (!s.is_empty()).then_some(s)
        });
        if latest.as_deref().is_some_and(|s| {
            s.contains("1/1 hosts connected, 0 consumers, seq head") && !s.ends_with("seq head 0")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status: {latest:?}: {}",
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(head >= 3, "#identity, #account, #sync");

    // A real stall: the events directory disappears under the relay, so the next segment
    // cannot be created; the Persister fails and the Sequencer halts.
    let events = fixture.data.join("events");
    std::fs::rename(&events, fixture.data.join("events.moved")).expect("move the log away");
    std::fs::write(&events, b"not a directory").expect("a file in its place");
    for i in 0..4 {
        pds.commit(
            &did,
            &[Change::CreateSized(
                format!("app.bsky.feed.post/big{i}"),
                400_000,
            )],
        )
        .expect("commit");
    }
    let (stalled_at, stalled) = notify
        .wait_for("STATUS=stalled", Some(&mut child), &log)
        .await;
    assert!(
        status_of(&stalled).contains("the event log failed"),
        "{stalled}"
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let late = notify.pings_after(stalled_at);
    assert!(late.is_empty(), "pings after the stall: {late:?}");
    assert!(
        notify.pings_after(ready_at).len() >= pings.len(),
        "pings went on until the stall"
    );

    send_signal(child.id(), "TERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = read(&log);
    assert_eq!(status.code(), Some(0), "{stderr}");
    let (_, stopping) = notify.wait_for("STOPPING=1", None, &log).await;
    assert!(status_of(&stopping).starts_with("stopping"), "{stopping}");

    // journald format: a priority prefix on every line, no timestamp, no colour; the stall
    // is logged once as an error.
    assert!(!stderr.contains('\u{1b}'), "escape sequences: {stderr}");
    for line in stderr.lines() {
        let bytes = line.as_bytes();
        assert!(
            bytes.len() > 3 && bytes[0] == b'<' && bytes[1].is_ascii_digit() && bytes[2] == b'>',
            "no priority prefix: {line}"
        );
        assert!(
            !bytes[3..].first().is_some_and(u8::is_ascii_digit),
            "a timestamp: {line}"
        );
    }
    let stall_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ingest stalled: watchdog pings stop"))
        .collect();
    assert_eq!(stall_lines.len(), 1, "{stderr}");
    assert!(stall_lines[0].starts_with("<3>"), "{}", stall_lines[0]);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("<6>") && l.contains("rookery is serving"))
    );
    pds.stop().await;
    plc.stop().await;
}

// ------------------------------------------------------------------------------------------
// ops/ files

fn ops_file(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops").join(name);
    let text = std::fs::read_to_string(&path).expect("ops file");
    (path, text)
}

/// `[Service]` (and other sections') assignments of a unit file, repeated keys kept.
fn unit_settings(text: &str) -> HashMap<String, Vec<String>> {
    let mut settings: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        settings
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    settings
}

fn one<'a>(settings: &'a HashMap<String, Vec<String>>, key: &str) -> &'a str {
    match settings.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("{key}: expected one value, got {other:?}"),
    }
}

/// The unit's `Environment=` assignments.
fn unit_environment(settings: &HashMap<String, Vec<String>>) -> Vec<(String, String)> {
    settings
        .get("Environment")
        .into_iter()
        .flatten()
        .flat_map(|v| v.split_whitespace())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("NAME=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// `rookery serve`'s options by environment variable: (flag, default).
fn serve_options() -> HashMap<String, (String, Option<String>)> {
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("serve");
    serve
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_string_lossy().into_owned();
            let flag = a.get_long()?.to_string();
            let default = a
                .get_default_values()
                .first()
                .map(|d| d.to_string_lossy().into_owned());
            Some((env, (flag, default)))
        })
        .collect()
}

#[test]
fn the_unit_starts_the_cli_as_a_hardened_notify_service_and_passes_systemd_analyze() {
    let (path, text) = ops_file("rookery.service");
    let settings = unit_settings(&text);

    // ExecStart is `rookery serve` and what the unit sets in the environment parses.
    let exec: Vec<&str> = one(&settings, "ExecStart").split_whitespace().collect();
    assert_eq!(exec[0], "/usr/local/bin/rookery");
    let options = serve_options();
    let mut argv: Vec<String> = exec.iter().map(|s| s.to_string()).collect();
    argv[0] = "rookery".into();
    let environment = unit_environment(&settings);
    assert!(!environment.is_empty());
    for (name, value) in &environment {
        let (flag, _) = options
            .get(name)
            .unwrap_or_else(|| panic!("Environment={name} is no option of rookery serve"));
        argv.push(format!("--{flag}"));
        argv.push(value.clone());
    }
    let cli = <Cli as clap::Parser>::try_parse_from(&argv).expect("ExecStart parses");
    let rookery::config::Command::Serve(args) = cli.command else {
        panic!("ExecStart runs serve: {argv:?}");
    };
    let config = Config::from_serve_args(&args).expect("the unit's settings are valid");
    assert_eq!(config.storage.log_format.to_string(), "journald");

    // What the issue asks of the unit.
    assert_eq!(one(&settings, "Type"), "notify");
    assert_eq!(one(&settings, "NotifyAccess"), "main");
    assert_eq!(one(&settings, "Restart"), "on-failure");
    assert_eq!(one(&settings, "User"), "rookery");
    let watchdog = humantime::parse_duration(one(&settings, "WatchdogSec")).expect("WatchdogSec");
    assert!(watchdog >= Duration::from_secs(10), "{watchdog:?}");
    // SIGTERM to rookery only, so the embedded Postgres takes the final flush.
    assert_eq!(one(&settings, "KillMode"), "mixed");
    let stop = humantime::parse_duration(one(&settings, "TimeoutStopSec")).expect("TimeoutStopSec");
    assert!(
        stop > config.service.shutdown_timeout + Duration::from_secs(60),
        "TimeoutStopSec {stop:?} must exceed --shutdown-timeout plus pg_ctl stop's 60 s"
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("SystemCallFilter", "@system-service"),
        ("MemoryDenyWriteExecute", "yes"),
    ] {
        assert_eq!(one(&settings, key), value, "{key}");
    }
    let data_dir = config.storage.data_dir.to_string_lossy().into_owned();
    assert_eq!(
        one(&settings, "ReadWritePaths"),
        data_dir,
        "the data dir is writable"
    );
    let nofile: u64 = one(&settings, "LimitNOFILE").parse().expect("a number");
    assert!(
        nofile >= config.firehose.max_consumers as u64 + 10_000,
        "LimitNOFILE {nofile} for {} consumers plus thousands of hosts",
        config.firehose.max_consumers
    );

    // systemd-analyze verify, on a copy whose ExecStart names the binary under test
    // (verify insists that the executable exists).
    let analyze = [
        "systemd-analyze",
        "/usr/bin/systemd-analyze",
        "/bin/systemd-analyze",
    ]
    .into_iter()
    .find(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(analyze) = analyze else {
        eprintln!(
            "SKIPPED: systemd-analyze verify of {}: systemd-analyze is not installed here \
             (.ci/run installs the `systemd` package)",
            path.display()
        );
        return;
    };
    let temp = tempfile::tempdir().expect("tempdir");
    let copy = temp.path().join("rookery.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/rookery", BIN)).expect("copy");
    let verify = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze verify");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "verify failed: {complaints}");
    // verify reports unknown keys and bad values as warnings on stderr and still exits 0.
    assert!(
        complaints.trim().is_empty(),
        "verify complained: {complaints}"
    );

    // The exposure score of the hardening (0 to 10, lower is better), where the tool can
    // analyse a unit file offline (systemd 250 and later).
    let security = Command::new(analyze)
        .args(["security", "--offline=yes", "--threshold=25", "--no-pager"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze security");
    let report = String::from_utf8_lossy(&security.stdout);
    let errors = String::from_utf8_lossy(&security.stderr);
    if errors.contains("--offline")
        || errors.contains("--threshold")
        || errors.contains("unrecognized")
    {
        eprintln!("SKIPPED: systemd-analyze security --offline is not supported here: {errors}");
        return;
    }
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_default();
    assert!(
        security.status.success(),
        "exposure above 2.5: {overall}\n{report}{errors}"
    );
}

#[test]
fn the_env_example_shows_every_option_with_its_default_and_what_it_does() {
    let (_, example) = ops_file("rookery.env.example");
    let (_, unit) = ops_file("rookery.service");
    let unit_env: HashMap<String, String> = unit_environment(&unit_settings(&unit))
        .into_iter()
        .collect();
    let lines: Vec<&str> = example.lines().collect();
    let options = serve_options();
    assert!(options.len() >= 25, "{} options", options.len());
    for (env, (flag, default)) in &options {
        let at: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                l.trim_start_matches('#')
                    .split_once('=')
                    .is_some_and(|(name, _)| name == env)
            })
            .map(|(i, _)| i)
            .collect();
        let [i] = at[..] else {
            panic!(
                "{env} (--{flag}) appears {} times in rookery.env.example",
                at.len()
            );
        };
        assert!(
            i > 0 && lines[i - 1].starts_with("# ") && lines[i - 1].len() > 10,
            "{env}: no line on what it does above it"
        );
        let value = lines[i]
            .trim_start_matches('#')
            .split_once('=')
            .map(|(_, v)| v)
            .unwrap_or("");
        // The default the service runs with: the unit's, else the binary's.
        if let Some(expected) = unit_env.get(env).or(default.as_ref()) {
            assert_eq!(value, expected, "{env}: the example shows another default");
            assert!(
                lines[i].starts_with('#'),
                "{env}: a default is shown commented out"
            );
        }
    }
}

/// Runs `rookery serve` until it fails for want of Postgres binaries, with stderr in a file;
/// `journal` makes that file the "journal" (`JOURNAL_STREAM` names it). Returns stderr.
fn text_log(journal: bool) -> String {
    use std::os::unix::fs::MetadataExt;
    let temp = tempfile::tempdir().expect("tempdir");
    let empty_bin = temp.path().join("bin");
    std::fs::create_dir(&empty_bin).expect("bin dir");
    let log = temp.path().join("stderr.log");
    let file = std::fs::File::create(&log).expect("log file");
    let meta = file.metadata().expect("metadata");
    let mut command = crate::common::process::rookery();
    command
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--metrics-bind",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(temp.path().join("data"))
        .arg("--postgres-bin-dir")
        .arg(&empty_bin)
        .stderr(file);
    if journal {
        command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    let status = command.status().expect("run rookery");
    assert_eq!(status.code(), Some(1));
    read(&log)
}

#[test]
fn text_logs_have_no_colour_off_a_terminal_and_no_timestamps_in_the_journal() {
    let plain = text_log(false);
    let journal = text_log(true);
    for stderr in [&plain, &journal] {
        assert!(stderr.contains("rookery starting"), "{stderr}");
        assert!(
            !stderr.contains('\u{1b}'),
            "escape sequences in a file: {stderr}"
        );
    }
    let stamped = |line: &str| line.len() > 20 && line.as_bytes()[4] == b'-' && line.contains('T');
    let starting = |stderr: &str| -> String {
        stderr
            .lines()
            .find(|l| l.contains("rookery starting"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(stamped(&starting(&plain)), "{plain}");
    let line = starting(&journal);
    assert!(
        line.starts_with(" INFO") || line.starts_with("INFO"),
        "journald stamps it: {line}"
    );
}
