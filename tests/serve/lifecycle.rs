//! The `rookery` binary as a child process: real HTTP on loopback, real signals, real
//! embedded Postgres, and the one-sentence errors for bad configuration.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::common::process::*;
use rookery::store::managed_postgres::process_alive;
use rookery::testkit::postgres::test_cluster;

fn pid_file(data: &Path) -> PathBuf {
    data.join("postgres").join("postmaster.pid")
}

fn postmaster_pid(data: &Path) -> Option<u32> {
    read(&pid_file(data)).lines().next()?.trim().parse().ok()
}

fn assert_serving(port: u16, metrics_port: u16) {
    for path in ["/_health", "/xrpc/_health"] {
        let response = http_get(port, path).unwrap();
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.body, r#"{"status":"ok"}"#, "{path}");
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{path}"
        );
        let server = response.header("server").unwrap_or_default();
        assert!(server.starts_with("rookery/"), "{server}");
        assert!(server.ends_with("(atproto-relay)"), "{server}");
    }
    let missing = http_get(port, "/xrpc/no.such.method").unwrap();
    assert_eq!(missing.status, 404);
    assert!(missing.header("server").is_some());
    assert!(
        missing.body.contains(r#""error":"MethodNotImplemented""#),
        "{}",
        missing.body
    );
    let metrics = http_get(metrics_port, "/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("rookery_build_info{version="),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("rookery_process_start_time_seconds"));
    assert!(
        metrics
            .header("server")
            .unwrap_or_default()
            .contains("atproto-relay")
    );
}

#[test]
fn serve_with_embedded_postgres_answers_and_stops_cleanly_on_sigterm() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let log = temp.path().join("stderr.log");
    let (port, metrics_port) = (free_port(), free_port());
    let mut child = rookery()
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--metrics-bind", &format!("127.0.0.1:{metrics_port}")])
        .args(["--admin-password", "first-secret-pw"])
        .env("ROOKERY_REPLAY_WINDOW", "2h")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    let health = wait_for_health(&mut child, port, &log);
    assert_eq!(health.status, 200);
    assert_serving(port, metrics_port);

    let pg_pid = postmaster_pid(&data).expect("embedded postgres is running");
    assert!(process_alive(pg_pid));

    send_signal(child.id(), "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let Some(status) = status else {
        let _ = child.kill();
        panic!("no exit within 10 s of SIGTERM: {}", read(&log));
    };
    let stderr = read(&log);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        !process_alive(pg_pid),
        "postmaster still alive after shutdown"
    );
    assert!(!pid_file(&data).exists(), "postmaster.pid left behind");
    assert!(http_get(port, "/_health").is_err(), "still listening");

    // The effective configuration was printed, with the secret redacted.
    assert!(stderr.contains("replay-window"), "{stderr}");
    assert!(stderr.contains("2h"), "{stderr}");
    assert!(stderr.contains("admin-password"), "{stderr}");
    assert!(!stderr.contains("first-secret-pw"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn serve_with_an_external_database_and_json_logs_stops_on_sigint() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let database = runtime.block_on(test_cluster().fresh_database()).unwrap();
    // trust auth ignores the password, but rookery must never print it.
    let url = format!("{} password=db-secret-pw", database.connection_string);
    let temp = tempfile::tempdir().unwrap();
    let log = temp.path().join("stderr.log");
    let (port, metrics_port) = (free_port(), free_port());
    let mut child = rookery()
        .args(["serve", "--log-format", "json", "--data-dir"])
        .arg(temp.path().join("data"))
        .env("DATABASE_URL", &url)
        .env("ROOKERY_BIND", format!("127.0.0.1:{port}"))
        .env("ROOKERY_METRICS_BIND", format!("127.0.0.1:{metrics_port}"))
        .env("ROOKERY_ADMIN_PASSWORDS", "pw-one-secret,pw-two-secret")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_health(&mut child, port, &log);
    assert_serving(port, metrics_port);
    assert!(
        !temp.path().join("data").join("postgres").exists(),
        "no embedded cluster with DATABASE_URL"
    );

    send_signal(child.id(), "INT");
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exit after SIGINT");
    let stderr = read(&log);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("db-secret-pw"), "{stderr}");
    assert!(stderr.contains("password=REDACTED"), "{stderr}");
    assert!(!stderr.contains("pw-one-secret") && !stderr.contains("pw-two-secret"));
    assert!(
        stderr.contains("2 configured"),
        "comma-separated list: {stderr}"
    );
    // JSON lines.
    let first = stderr.lines().next().unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(first).expect("json log line");
    assert!(parsed.get("level").is_some(), "{first}");

    // The migrations ran against that database.
    let versions: i64 = runtime.block_on(async {
        let client =
            rookery::store::postgres::connect_once(&database.pg_config, Duration::from_secs(5))
                .await
                .unwrap();
        client
            .query_one("SELECT count(*) FROM schema_migrations", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(
        versions as usize,
        rookery::store::migrations::MIGRATIONS.len()
    );
}

#[test]
fn migrate_with_embedded_postgres_applies_and_stops() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    for run in 0..2 {
        let output: Output = rookery()
            .args(["migrate", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "run {run}: {stderr}");
        assert!(stderr.contains("migrations done"), "{stderr}");
        if run == 0 {
            assert!(stderr.contains("applied schema migration"), "{stderr}");
        } else {
            assert!(
                !stderr.contains("applied schema migration"),
                "second run is a no-op: {stderr}"
            );
        }
        assert!(data.join("postgres").join("PG_VERSION").exists());
        assert!(!pid_file(&data).exists(), "postgres stopped after migrate");
    }
}

/// Runs `rookery <args>` expecting a configuration error; returns stderr.
fn expect_config_error(args: &[&str], data_dir: &Path) -> String {
    let output = rookery()
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("rookery: invalid --"), "{stderr}");
    stderr
}

#[test]
fn bad_configuration_is_one_sentence_naming_the_option() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let cases: &[(&[&str], &str)] = &[
        (
            &["serve", "--bind", "abc"],
            "rookery: invalid --bind \"abc\": expected host:port",
        ),
        (
            &["serve", "--metrics-bind", "127.0.0.1:99999"],
            "invalid --metrics-bind",
        ),
        (
            &["serve", "--plc-url", "not a url"],
            "invalid --plc-url \"not a url\"",
        ),
        (
            &["serve", "--plc-url", "ftp://plc.example"],
            "invalid --plc-url",
        ),
        (
            &["serve", "--replay-window", "soon"],
            "invalid --replay-window \"soon\"",
        ),
        (&["serve", "--log-format", "xml"], "invalid --log-format"),
        (
            &["serve", "--event-log-sync", "sometimes"],
            "invalid --event-log-sync \"sometimes\"",
        ),
        (&["serve", "--initial-seq", "0"], "invalid --initial-seq"),
        (
            &["serve", "--event-log-segment-size", "1x"],
            "invalid --event-log-segment-size",
        ),
        (
            &["serve", "--event-log-max-size", "big"],
            "invalid --event-log-max-size",
        ),
        (
            &["migrate", "--db-statement-timeout", "-1"],
            "invalid --db-statement-timeout",
        ),
        (
            &[
                "serve",
                "--database-url",
                "postgres://u:hidden-pw@db:port/x",
            ],
            "invalid --database-url",
        ),
    ];
    for (args, expected) in cases {
        let stderr = expect_config_error(args, &data);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("hidden-pw"), "{stderr}");
    }

    // An upstream CA file that is missing, or holds no certificate, is named.
    let missing = temp.path().join("no-such-ca.pem");
    let stderr = expect_config_error(
        &["serve", "--upstream-ca-file", missing.to_str().unwrap()],
        &data,
    );
    assert!(stderr.contains("invalid --upstream-ca-file"), "{stderr}");
    assert!(
        stderr.contains("no-such-ca.pem") && stderr.contains("cannot read"),
        "{stderr}"
    );
    let empty = temp.path().join("empty-ca.pem");
    std::fs::write(&empty, b"not a certificate\n").unwrap();
    let stderr = expect_config_error(
        &["serve", "--upstream-ca-file", empty.to_str().unwrap()],
        &data,
    );
    assert!(
        stderr.contains("empty-ca.pem") && stderr.contains("no PEM certificate"),
        "{stderr}"
    );

    // An unusable data dir: a path under a regular file.
    let file = temp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let stderr = expect_config_error(&["serve"], &file.join("data"));
    assert!(stderr.contains("invalid --data-dir"), "{stderr}");
    assert!(stderr.contains("plain-file"), "{stderr}");

    // Unknown flags are clap's usage errors: also one line and status 2.
    let output = rookery()
        .args(["serve", "--no-such-flag"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");

    // The same check reached through the environment names the option too.
    let output = rookery()
        .arg("serve")
        .env("ROOKERY_BIND", "nonsense")
        .env("ROOKERY_DATA_DIR", &data)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid --bind \"nonsense\""));
}

#[test]
fn missing_postgres_binaries_exit_with_advice() {
    let temp = tempfile::tempdir().unwrap();
    let empty_bin = temp.path().join("bin");
    std::fs::create_dir(&empty_bin).unwrap();
    let output = rookery()
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
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("install PostgreSQL"), "{stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
