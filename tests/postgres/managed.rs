//! The managed Postgres cluster against the machine's real PostgreSQL binaries.

use std::path::Path;
use std::time::{Duration, Instant};

use rookery::store::managed_postgres::{
    ManagedPostgres, ManagedPostgresError, StartOptions, process_alive,
};
use rookery::store::postgres::connect_once;
use rookery::testkit::postgres::test_cluster;

fn options() -> StartOptions {
    StartOptions {
        bin_dir: None,
        ephemeral: true,
    }
}

async fn query_count(postgres: &ManagedPostgres) -> i64 {
    let client = connect_once(&postgres.pg_config("postgres"), Duration::from_secs(5))
        .await
        .expect("connect");
    client
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .expect("select")
        .get(0)
}

#[tokio::test]
async fn starts_and_keeps_data_across_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data").join("postgres");

    let started = Instant::now();
    let postgres = ManagedPostgres::start(&dir, &options()).expect("first start");
    let first_start = started.elapsed();
    assert!(postgres.is_running());
    let pid = postgres.postmaster_pid().expect("postmaster.pid");
    assert!(process_alive(pid));
    // Unix socket only: no TCP listener configured.
    let conf = std::fs::read_to_string(dir.join("postmaster.opts")).unwrap();
    assert!(conf.contains("listen_addresses="), "{conf}");

    let client = connect_once(&postgres.pg_config("postgres"), Duration::from_secs(5))
        .await
        .expect("connect");
    client
        .batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (1), (2), (3);")
        .await
        .unwrap();
    let on_tcp: Option<String> = client
        .query_one("SELECT current_setting('listen_addresses')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_tcp.as_deref(), Some(""));
    drop(client);

    postgres.stop().expect("stop");
    assert!(!postgres.is_running());
    assert!(
        !dir.join("postmaster.pid").exists(),
        "pid file removed by a clean stop"
    );
    assert!(!process_alive(pid), "postmaster gone");
    postgres.stop().expect("stopping twice is fine");
    drop(postgres);

    let again = ManagedPostgres::start(&dir, &options()).expect("second start");
    assert_eq!(query_count(&again).await, 3, "rows survived the restart");
    eprintln!("first start (initdb + start): {first_start:?}");
}

#[tokio::test]
async fn stale_pid_files_do_not_prevent_start() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("pg");
    let postgres = ManagedPostgres::start(&dir, &options()).unwrap();
    let client = connect_once(&postgres.pg_config("postgres"), Duration::from_secs(5))
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7);")
        .await
        .unwrap();
    drop(client);
    let pid_file_text = std::fs::read_to_string(dir.join("postmaster.pid")).unwrap();
    postgres.stop().unwrap();
    drop(postgres);

    // A crashed run leaves postmaster.pid behind: once naming a dead pid, once naming a
    // live process that is not a postgres (pid reuse), which Postgres alone would refuse.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    for stale_pid in [dead_pid, std::process::id()] {
        let mut lines: Vec<&str> = pid_file_text.lines().collect();
        let pid_line = stale_pid.to_string();
        lines[0] = &pid_line;
        std::fs::write(dir.join("postmaster.pid"), lines.join("\n") + "\n").unwrap();
        let postgres = ManagedPostgres::start(&dir, &options())
            .unwrap_or_else(|e| panic!("start with stale pid {stale_pid}: {e}"));
        assert_ne!(postgres.postmaster_pid(), Some(stale_pid));
        assert_eq!(query_count(&postgres).await, 1);
        postgres.stop().unwrap();
    }
}

#[tokio::test]
async fn a_postmaster_left_by_a_killed_run_is_restarted() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("pg");
    let orphan = ManagedPostgres::start(&dir, &options()).unwrap();
    let orphan_pid = orphan.postmaster_pid().unwrap();
    // Simulate `kill -9` of rookery: the handle disappears without stopping the server.
    std::mem::forget(orphan);
    assert!(process_alive(orphan_pid));

    let postgres = ManagedPostgres::start(&dir, &options()).expect("start over an orphan");
    let new_pid = postgres.postmaster_pid().unwrap();
    assert_ne!(new_pid, orphan_pid);
    assert!(process_alive(new_pid));
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(orphan_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!process_alive(orphan_pid), "the orphan was stopped");
    connect_once(&postgres.pg_config("postgres"), Duration::from_secs(5))
        .await
        .expect("the restarted cluster answers");
}

#[test]
fn an_unusable_data_dir_is_refused_with_a_clear_error() {
    let temp = tempfile::tempdir().unwrap();
    // A path under a regular file cannot become a directory, not even for root.
    let file = temp.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = ManagedPostgres::start(&file.join("postgres"), &options()).unwrap_err();
    assert!(
        matches!(err, ManagedPostgresError::DataDirNotWritable { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("cannot hold the embedded Postgres cluster"),
        "{text}"
    );
    assert!(text.contains("a-file"), "{text}");
    assert_eq!(err.reason(), "data_dir_not_writable");

    // A directory that holds something else is not silently initdb'ed over.
    let other = temp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("precious.txt"), b"data").unwrap();
    let err = ManagedPostgres::start(&other, &options()).unwrap_err();
    assert!(err.to_string().contains("not a Postgres cluster"), "{err}");
    assert!(other.join("precious.txt").exists());
}

#[test]
fn missing_binaries_say_how_to_fix_it() {
    let temp = tempfile::tempdir().unwrap();
    let empty_bin = temp.path().join("bin");
    std::fs::create_dir(&empty_bin).unwrap();
    let err = ManagedPostgres::start(
        &temp.path().join("pg"),
        &StartOptions {
            bin_dir: Some(empty_bin),
            ephemeral: true,
        },
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ManagedPostgresError::BinariesNotFound { .. }));
    assert!(text.contains("install PostgreSQL"), "{text}");
    assert!(text.contains("DATABASE_URL"), "{text}");
}

#[tokio::test]
async fn deep_data_dirs_use_a_short_socket_dir() {
    let temp = tempfile::tempdir().unwrap();
    let mut dir = temp.path().to_path_buf();
    for _ in 0..4 {
        dir.push("a-rather-long-directory-name-segment");
    }
    dir.push("postgres");
    assert!(dir.join(".s.PGSQL.5432").as_os_str().len() >= 107);
    let postgres = ManagedPostgres::start(&dir, &options()).expect("start");
    let socket_dir = postgres.socket_dir().to_path_buf();
    assert_ne!(socket_dir, dir);
    assert!(socket_dir.join(".s.PGSQL.5432").as_os_str().len() < 107);
    assert!(Path::new(&socket_dir).join(".s.PGSQL.5432").exists());
    connect_once(&postgres.pg_config("postgres"), Duration::from_secs(5))
        .await
        .expect("connect over the short socket");
    postgres.stop().unwrap();
    let _ = std::fs::remove_dir_all(&socket_dir);
}

#[tokio::test]
async fn the_test_cluster_gives_each_test_its_own_database() {
    let cluster = test_cluster();
    assert!(
        std::ptr::eq(cluster, test_cluster()),
        "one cluster per process"
    );
    let a = cluster.fresh_database().await.unwrap();
    let b = cluster.fresh_database().await.unwrap();
    assert_ne!(a.name, b.name);
    let ca = connect_once(&a.pg_config, Duration::from_secs(5))
        .await
        .unwrap();
    let cb = connect_once(&b.pg_config, Duration::from_secs(5))
        .await
        .unwrap();
    ca.batch_execute("CREATE TABLE only_in_a (n int)")
        .await
        .unwrap();
    let in_b = cb
        .query_opt("SELECT 1 FROM pg_tables WHERE tablename = 'only_in_a'", &[])
        .await
        .unwrap();
    assert!(in_b.is_none(), "databases are isolated");
    let name: String = ca
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, a.name);
    // The key=value form parses to the same target.
    let parsed: tokio_postgres::Config = a.connection_string.parse().unwrap();
    assert_eq!(parsed.get_dbname(), Some(a.name.as_str()));
}
