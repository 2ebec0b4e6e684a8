//! A throwaway Postgres cluster per test process (the managed-cluster code of
//! `store::managed_postgres`, started ephemeral under the temp dir), and a fresh database per
//! test, so tests hit a real Postgres and never each other's rows.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::store::managed_postgres::{ManagedPostgres, ManagedPostgresError, StartOptions};
use crate::store::postgres::{DbError, connect_once};

fn io_err(action: &str) -> impl FnOnce(std::io::Error) -> ManagedPostgresError + '_ {
    move |source| ManagedPostgresError::Io {
        action: action.to_string(),
        source,
    }
}

/// A throwaway cluster shared by the tests of one process.
#[derive(Debug)]
pub struct TestCluster {
    postgres: ManagedPostgres,
    root: PathBuf,
}

/// A fresh database in the test cluster.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// Its name (`test_<random>`).
    pub name: String,
    /// Connection settings.
    pub pg_config: tokio_postgres::Config,
    /// The same as a key=value string (usable as `--database-url`).
    pub connection_string: String,
}

static TEST_CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();

/// The test cluster of this process, started on first use. Panics with the reason if it
/// cannot start: this is test support, and a test without its database must fail loudly.
pub fn test_cluster() -> &'static TestCluster {
    match try_test_cluster() {
        Ok(cluster) => cluster,
        Err(e) => panic!("the test Postgres cluster could not start: {e}"),
    }
}

/// Like [`test_cluster`], returning the failure instead of panicking.
pub fn try_test_cluster() -> Result<&'static TestCluster, &'static str> {
    TEST_CLUSTER
        .get_or_init(|| TestCluster::start().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(String::as_str)
}

impl TestCluster {
    fn start() -> Result<TestCluster, ManagedPostgresError> {
        let root = std::env::temp_dir().join(format!(
            "rookery-test-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&root).map_err(io_err("creating the test cluster directory"))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))
            .map_err(io_err("setting the test cluster directory's mode"))?;
        let postgres = ManagedPostgres::start(
            &root.join("pg"),
            &StartOptions {
                bin_dir: None,
                ephemeral: true,
            },
        )?;
        spawn_cleanup_watchdog(&postgres, &root)?;
        Ok(TestCluster { postgres, root })
    }

    /// The running cluster.
    pub fn postgres(&self) -> &ManagedPostgres {
        &self.postgres
    }

    /// The temp directory holding the cluster (removed when the process exits).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Connection settings for `dbname`.
    pub fn pg_config(&self, dbname: &str) -> tokio_postgres::Config {
        self.postgres.pg_config(dbname)
    }

    /// Creates a database no other test uses. Needs a tokio runtime.
    pub async fn fresh_database(&self) -> Result<TestDatabase, DbError> {
        let name = format!("test_{:016x}", rand::random::<u64>());
        let admin = connect_once(
            &self.postgres.pg_config("postgres"),
            Duration::from_secs(10),
        )
        .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(TestDatabase {
            pg_config: self.postgres.pg_config(&name),
            connection_string: self.postgres.connection_string(&name),
            name,
        })
    }
}

/// Statics are never dropped, so a tiny shell process waits for this process to exit (also
/// when it is killed) and then stops the cluster and removes its directory.
fn spawn_cleanup_watchdog(
    postgres: &ManagedPostgres,
    root: &Path,
) -> Result<(), ManagedPostgresError> {
    const SCRIPT: &str = r#"
pid=$1; pgctl=$2; dir=$3; root=$4; sockdir=$5; user=$6
while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
if [ -n "$user" ]; then
  runuser -u "$user" -- "$pgctl" -D "$dir" -m immediate -w stop >/dev/null 2>&1
else
  "$pgctl" -D "$dir" -m immediate -w stop >/dev/null 2>&1
fi
rm -rf "$root"
if [ "$sockdir" != "$dir" ]; then rm -rf "$sockdir"; fi
"#;
    let user = postgres.os_user().unwrap_or("");
    Command::new("/bin/sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("rookery-test-cleanup")
        .arg(std::process::id().to_string())
        .arg(postgres.pg_ctl())
        .arg(postgres.cluster_dir())
        .arg(root)
        .arg(postgres.socket_dir())
        .arg(user)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(io_err("starting the test cluster cleanup process"))?;
    Ok(())
}
