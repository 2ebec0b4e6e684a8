//! `rookery serve` reading simulated PDS hosts: a fresh database with the hosts in its table,
//! a data dir, and the child process started (again) on them.

use std::path::PathBuf;
use std::process::{Child, Stdio};

use rookery::sim::SimPds;
use rookery::store::migrations;
use rookery::store::postgres::{Db, DbSettings};
use rookery::testkit::postgres::test_cluster;

use crate::common::process::rookery;

/// What stays across restarts of the relay process.
pub struct RelayFixture {
    pub db: Db,
    /// What the relay connects with (a test may point it through a proxy).
    pub database_url: String,
    /// The fresh database's name in the test cluster.
    pub dbname: String,
    pub data: PathBuf,
    /// The child's stderr, appended to by every start.
    pub log: PathBuf,
    _temp: tempfile::TempDir,
}

impl RelayFixture {
    /// A fresh, migrated database whose host table holds `hosts` (admin-added; `wss://` for
    /// a host that serves TLS, else `ws://`).
    pub async fn new(hosts: &[&SimPds]) -> RelayFixture {
        let database = test_cluster().fresh_database().await.expect("db");
        let db = Db::new(database.pg_config.clone(), DbSettings::default()).expect("pool");
        migrations::migrate(&db).await.expect("migrate");
        let client = db.client().await.expect("client");
        for host in hosts {
            client
                .execute(
                    "INSERT INTO hosts (hostname, no_ssl, admin_added) VALUES ($1, $2, true)",
                    &[&host.hostname(), &!host.is_tls()],
                )
                .await
                .expect("host");
        }
        let temp = tempfile::tempdir().expect("tempdir");
        RelayFixture {
            db,
            dbname: database
                .pg_config
                .get_dbname()
                .expect("a database name")
                .to_string(),
            database_url: database.connection_string,
            data: temp.path().join("data"),
            log: temp.path().join("stderr.log"),
            _temp: temp,
        }
    }

    /// Starts `rookery serve` on the fixture with its public API on `port` and `/metrics` on
    /// `metrics_port`.
    pub fn spawn(&self, plc_url: &str, port: u16, metrics_port: u16) -> Child {
        self.spawn_with(plc_url, port, metrics_port, &[])
    }

    /// [`RelayFixture::spawn`] with more environment (options as `ROOKERY_*` variables).
    pub fn spawn_with(
        &self,
        plc_url: &str,
        port: u16,
        metrics_port: u16,
        env: &[(&str, &str)],
    ) -> Child {
        rookery()
            .envs(env.iter().copied())
            .args(["serve", "--data-dir"])
            .arg(&self.data)
            .env("DATABASE_URL", &self.database_url)
            .env("ROOKERY_BIND", format!("127.0.0.1:{port}"))
            .env("ROOKERY_METRICS_BIND", format!("127.0.0.1:{metrics_port}"))
            .env("ROOKERY_PLC_URL", plc_url)
            .env("ROOKERY_STARTUP_SPREAD", "1ms")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .expect("log file"),
            )
            .spawn()
            .expect("spawn rookery")
    }
}
