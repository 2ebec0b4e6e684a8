//! The managed (embedded) Postgres cluster: rookery's default database.
//!
//! Why: a relay should run from one command on a fresh machine, and its tests should hit a
//! real Postgres, not a mock. So when no database URL is given, rookery creates a private
//! cluster under `<data-dir>/postgres` with the machine's own PostgreSQL binaries (`initdb`,
//! `pg_ctl`), listening on a unix socket only (`listen_addresses=''`), and stops it on exit.
//! The same code gives tests a throwaway cluster (`testkit::postgres::test_cluster`).
//!
//! Details that make it work in practice:
//! - Postgres refuses to run as root. As root, every `initdb`/`pg_ctl` call goes through
//!   `runuser -u postgres --`, the cluster dir is chowned to `postgres`, and ancestors that
//!   `postgres` cannot traverse (a `mktemp -d` dir is 0700) get the search bit (`o+x`).
//! - A unix socket path is limited to 107 bytes; when `<cluster>/.s.PGSQL.5432` would be
//!   longer, the socket lives in `/tmp/rookery-pg-<hash of the cluster path>` instead.
//! - A `postmaster.pid` left by a crash is removed when its pid is not a postgres of this
//!   cluster (pids get reused, and Postgres alone would refuse to start then); a postmaster
//!   of this cluster that outlived a killed rookery is stopped and started again cleanly.
//! - `pg_ctl start` runs in its own process group, so a Ctrl-C aimed at rookery does not
//!   also hit the postmaster behind rookery's back; rookery stops it itself.
//! - Finding the euid and the `postgres` uid uses `/proc/self/status` and `id`, not libc,
//!   to keep the crate free of `unsafe`.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

/// The Postgres port number; with `listen_addresses=''` it only names the socket file.
pub const PORT: u16 = 5432;
/// Socket paths must stay under this length (sun_path is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The superuser created by `initdb -U`.
pub const SUPERUSER: &str = "postgres";
/// The OS user that runs the cluster when rookery runs as root.
pub const OS_USER: &str = "postgres";
const LOG_FILE: &str = "rookery-postgres.log";

/// Why the managed cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManagedPostgresError {
    /// initdb/pg_ctl were not found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found ({searched}); install PostgreSQL (e.g. `apt-get install postgresql`) or set DATABASE_URL to use an existing server"
    )]
    BinariesNotFound { searched: String },
    /// The data dir cannot hold the cluster.
    #[error("the data directory {path} cannot hold the embedded Postgres cluster: {reason}")]
    DataDirNotWritable { path: PathBuf, reason: String },
    /// Running as root without a `postgres` OS user.
    #[error(
        "rookery runs as root, so the embedded Postgres must run as the OS user \"postgres\", which does not exist; create it (`useradd --system postgres`) or set DATABASE_URL"
    )]
    NoPostgresUser,
    /// `initdb` failed.
    #[error("initdb failed for {path}: {output}")]
    Initdb { path: PathBuf, output: String },
    /// `pg_ctl start` failed.
    #[error("could not start the embedded Postgres in {path}: {output}")]
    Start { path: PathBuf, output: String },
    /// `pg_ctl stop` failed.
    #[error("could not stop the embedded Postgres in {path}: {output}")]
    Stop { path: PathBuf, output: String },
    /// Some other file or process operation failed.
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
}

impl ManagedPostgresError {
    /// A short fixed label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BinariesNotFound { .. } => "binaries_not_found",
            Self::DataDirNotWritable { .. } => "data_dir_not_writable",
            Self::NoPostgresUser => "no_postgres_user",
            Self::Initdb { .. } => "initdb",
            Self::Start { .. } => "start",
            Self::Stop { .. } => "stop",
            Self::Io { .. } => "io",
        }
    }
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> ManagedPostgresError {
    let action = action.into();
    move |source| ManagedPostgresError::Io { action, source }
}

/// How to start a cluster.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Directory holding `initdb` and `pg_ctl`; `None` searches PATH, then the highest
    /// `/usr/lib/postgresql/*/bin`.
    pub bin_dir: Option<PathBuf>,
    /// Trade durability for speed (no fsync). Only for throwaway test clusters.
    pub ephemeral: bool,
}

/// Who runs the Postgres processes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RunAs {
    /// The current user (not root).
    CurrentUser,
    /// Root delegates to the `postgres` OS user.
    PostgresUser { uid: u32, gid: u32 },
}

/// A running cluster owned by this process. Dropping it stops the cluster.
pub struct ManagedPostgres {
    cluster_dir: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: RunAs,
    running: AtomicBool,
}

impl fmt::Debug for ManagedPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedPostgres")
            .field("cluster_dir", &self.cluster_dir)
            .field("socket_dir", &self.socket_dir)
            .field("bin_dir", &self.bin_dir)
            .field("running", &self.running.load(Ordering::SeqCst))
            .finish()
    }
}

impl ManagedPostgres {
    /// Creates the cluster in `cluster_dir` if needed (initdb) and starts it; waits until
    /// it accepts connections.
    pub fn start(
        cluster_dir: &Path,
        options: &StartOptions,
    ) -> Result<ManagedPostgres, ManagedPostgresError> {
        let bin_dir = find_binaries(options.bin_dir.as_deref())?;
        let run_as = if effective_uid() == Some(0) {
            let (uid, gid) = lookup_os_user(OS_USER).ok_or(ManagedPostgresError::NoPostgresUser)?;
            RunAs::PostgresUser { uid, gid }
        } else {
            RunAs::CurrentUser
        };
        let cluster_dir = prepare_cluster_dir(cluster_dir, &run_as)?;
        let socket_dir = prepare_socket_dir(&cluster_dir, &run_as)?;
        let postgres = ManagedPostgres {
            cluster_dir,
            socket_dir,
            bin_dir,
            run_as,
            running: AtomicBool::new(false),
        };
        if !postgres.cluster_dir.join("PG_VERSION").exists() {
            postgres.initdb(options.ephemeral)?;
        }
        postgres.clear_leftovers()?;
        postgres.pg_ctl_start(options.ephemeral)?;
        postgres.running.store(true, Ordering::SeqCst);
        Ok(postgres)
    }

    /// The cluster's data directory (PGDATA).
    pub fn cluster_dir(&self) -> &Path {
        &self.cluster_dir
    }

    /// The directory holding the unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Connection settings for database `dbname` as the superuser.
    pub fn pg_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(PORT)
            .user(SUPERUSER)
            .dbname(dbname);
        config
    }

    /// The same as a libpq key=value connection string (usable as `--database-url`).
    pub fn connection_string(&self, dbname: &str) -> String {
        format!(
            "host='{}' port={PORT} user={SUPERUSER} dbname='{}'",
            quote_kv(&self.socket_dir.to_string_lossy()),
            quote_kv(dbname)
        )
    }

    /// The `pg_ctl` this cluster is run with.
    pub fn pg_ctl(&self) -> PathBuf {
        self.bin_dir.join("pg_ctl")
    }

    /// The OS user the Postgres processes run as, when it is not the current user (root
    /// delegates to `postgres`).
    pub fn os_user(&self) -> Option<&'static str> {
        match self.run_as {
            RunAs::CurrentUser => None,
            RunAs::PostgresUser { .. } => Some(OS_USER),
        }
    }

    /// The pid of the running postmaster, read from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<u32> {
        read_postmaster_pid(&self.cluster_dir)
    }

    /// Whether this handle still considers the cluster running.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Stops the cluster (`pg_ctl stop -m fast`). Idempotent.
    pub fn stop(&self) -> Result<(), ManagedPostgresError> {
        if !self.running.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        self.pg_ctl_stop("fast")
    }

    /// Stops the cluster without a checkpoint (`pg_ctl stop -m immediate`): for an operator
    /// who asked to exit at once (a second signal). The next start runs crash recovery,
    /// which is what Postgres is built for. Idempotent.
    pub fn stop_immediately(&self) -> Result<(), ManagedPostgresError> {
        if !self.running.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        self.pg_ctl_stop("immediate")
    }

    fn initdb(&self, ephemeral: bool) -> Result<(), ManagedPostgresError> {
        let args: Vec<OsString> = vec![
            "-D".into(),
            self.cluster_dir.clone().into(),
            "-A".into(),
            "trust".into(),
            "-U".into(),
            SUPERUSER.into(),
            "-E".into(),
            "UTF8".into(),
            "--locale=C".into(),
            // initdb's own sync fsyncs ~1,000 files one by one (3.5 s measured under load);
            // one syncfs of the filesystem afterwards gives the same durability in a
            // fraction of that (see BENCHMARKS.md).
            "--no-sync".into(),
        ];
        let output = self
            .run(&self.bin_dir.join("initdb"), &args, false)
            .map_err(io_err("running initdb"))?;
        if !output.status.success() {
            return Err(ManagedPostgresError::Initdb {
                path: self.cluster_dir.clone(),
                output: describe_output(&output),
            });
        }
        if !ephemeral {
            sync_filesystem(&self.cluster_dir)?;
        }
        tracing::info!(cluster = %self.cluster_dir.display(), "created the embedded Postgres cluster");
        Ok(())
    }

    /// Deals with what a crashed or killed earlier run left behind.
    fn clear_leftovers(&self) -> Result<(), ManagedPostgresError> {
        let Some(pid) = read_postmaster_pid(&self.cluster_dir) else {
            // No pid file (or an unreadable one, which postgres would also reject).
            let pid_file = self.cluster_dir.join("postmaster.pid");
            if pid_file.exists() {
                remove_if_exists(&pid_file)?;
            }
            return Ok(());
        };
        if is_postmaster_of(pid, &self.cluster_dir) {
            tracing::warn!(
                pid,
                "a postmaster from an earlier run still serves this cluster; restarting it"
            );
            return self.pg_ctl_stop("fast");
        }
        tracing::warn!(
            pid,
            "removing a stale postmaster.pid left by an earlier run (that process is gone)"
        );
        remove_if_exists(&self.cluster_dir.join("postmaster.pid"))?;
        let socket_lock = self.socket_dir.join(format!(".s.PGSQL.{PORT}.lock"));
        remove_if_exists(&socket_lock)?;
        remove_if_exists(&self.socket_dir.join(format!(".s.PGSQL.{PORT}")))?;
        Ok(())
    }

    fn pg_ctl_start(&self, ephemeral: bool) -> Result<(), ManagedPostgresError> {
        let socket = self.socket_dir.to_string_lossy();
        // No JIT: rookery's queries are small, and LLVM's writable-then-executable pages are
        // what the hardened unit's MemoryDenyWriteExecute= forbids (ops/rookery.service).
        let mut server_options = format!(
            "-k '{}' -c listen_addresses='' -c jit=off",
            quote_sh(&socket)
        );
        if ephemeral {
            server_options
                .push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let log = self.cluster_dir.join(LOG_FILE);
        let args: Vec<OsString> = vec![
            "-D".into(),
            self.cluster_dir.clone().into(),
            "-l".into(),
            log.clone().into(),
            "-o".into(),
            server_options.into(),
            "-w".into(),
            "-t".into(),
            "30".into(),
            "start".into(),
        ];
        let output = self
            .run(&self.bin_dir.join("pg_ctl"), &args, true)
            .map_err(io_err("running pg_ctl start"))?;
        if !output.status.success() {
            let mut text = describe_output(&output);
            let log_tail = tail_of_file(&log, 12);
            if !log_tail.is_empty() {
                text.push_str("; server log: ");
                text.push_str(&log_tail);
            }
            return Err(ManagedPostgresError::Start {
                path: self.cluster_dir.clone(),
                output: text,
            });
        }
        tracing::info!(
            cluster = %self.cluster_dir.display(),
            socket_dir = %self.socket_dir.display(),
            pid = self.postmaster_pid(),
            "embedded Postgres started"
        );
        Ok(())
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), ManagedPostgresError> {
        let pid_file = self.cluster_dir.join("postmaster.pid");
        if !pid_file.exists() {
            return Ok(());
        }
        let args: Vec<OsString> = vec![
            "-D".into(),
            self.cluster_dir.clone().into(),
            "-m".into(),
            mode.into(),
            "-w".into(),
            "-t".into(),
            "60".into(),
            "stop".into(),
        ];
        let output = self
            .run(&self.bin_dir.join("pg_ctl"), &args, false)
            .map_err(io_err("running pg_ctl stop"))?;
        // The server may have been stopping already (then pg_ctl complains that the pid file
        // vanished); what matters is that it is gone.
        if !output.status.success() && pid_file.exists() {
            return Err(ManagedPostgresError::Stop {
                path: self.cluster_dir.clone(),
                output: describe_output(&output),
            });
        }
        tracing::info!(cluster = %self.cluster_dir.display(), "embedded Postgres stopped");
        Ok(())
    }

    /// Runs a Postgres tool as the right OS user, from `/` (root's cwd may be unreadable
    /// for `postgres`), with no stdin.
    fn run(&self, program: &Path, args: &[OsString], own_group: bool) -> io::Result<Output> {
        let mut command = match self.run_as {
            RunAs::CurrentUser => Command::new(program),
            RunAs::PostgresUser { .. } => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(OS_USER).arg("--").arg(program);
                c
            }
        };
        command
            .args(args)
            .current_dir("/")
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            // The service manager's sockets are rookery's: a Postgres built with systemd
            // support would otherwise report its own READY=1 to rookery's unit.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null());
        if own_group {
            command.process_group(0);
        }
        command.output()
    }
}

impl Drop for ManagedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "stopping the embedded Postgres failed");
        }
    }
}

/// Finds the directory with `initdb` and `pg_ctl`.
pub fn find_binaries(explicit: Option<&Path>) -> Result<PathBuf, ManagedPostgresError> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = explicit {
        return if has_tools(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(ManagedPostgresError::BinariesNotFound {
                searched: format!("looked in {}", dir.display()),
            })
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() {
                // Follow symlinks (/usr/local/bin/initdb → /usr/lib/postgresql/15/bin/initdb)
                // so pg_ctl finds the matching `postgres` next to it.
                let real = initdb.canonicalize().unwrap_or(initdb);
                if let Some(real_dir) = real.parent()
                    && has_tools(real_dir)
                {
                    return Ok(real_dir.to_path_buf());
                }
            }
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
            let bin = entry.path().join("bin");
            version.filter(|_| has_tools(&bin)).map(|v| (v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, dir)| dir)
        .ok_or_else(|| ManagedPostgresError::BinariesNotFound {
            searched: "looked on PATH and in /usr/lib/postgresql/*/bin".to_string(),
        })
}

/// The effective uid, from `/proc/self/status` (`Uid: real effective saved fs`).
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `(uid, gid)` of an OS user via `id` (which consults NSS, unlike reading /etc/passwd).
fn lookup_os_user(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id")
            .arg(flag)
            .arg(user)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

fn not_writable(path: &Path, reason: impl Into<String>) -> ManagedPostgresError {
    ManagedPostgresError::DataDirNotWritable {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Creates the cluster dir with the ownership and modes Postgres requires.
fn prepare_cluster_dir(dir: &Path, run_as: &RunAs) -> Result<PathBuf, ManagedPostgresError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| not_writable(dir, format!("cannot create it ({e})")))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| not_writable(dir, format!("cannot resolve it ({e})")))?;
    if !dir.join("PG_VERSION").exists() {
        let mut entries = std::fs::read_dir(&dir)
            .map_err(|e| not_writable(&dir, format!("cannot read it ({e})")))?;
        if entries.next().is_some() {
            return Err(not_writable(
                &dir,
                "it exists, is not empty, and is not a Postgres cluster",
            ));
        }
    }
    match run_as {
        RunAs::CurrentUser => {
            let probe = dir.join(".rookery-write-probe");
            std::fs::write(&probe, b"")
                .and_then(|()| std::fs::remove_file(&probe))
                .map_err(|e| not_writable(&dir, format!("it is not writable ({e})")))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| not_writable(&dir, format!("cannot set its mode to 0700 ({e})")))?;
        }
        RunAs::PostgresUser { uid, gid } => {
            make_ancestors_traversable(&dir)?;
            std::os::unix::fs::chown(&dir, Some(*uid), Some(*gid)).map_err(|e| {
                not_writable(&dir, format!("cannot give it to the postgres user ({e})"))
            })?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| not_writable(&dir, format!("cannot set its mode to 0700 ({e})")))?;
            // The postgres user must really be able to write there (read-only mounts, ACLs,
            // root-squashed network filesystems...).
            let ok = Command::new("runuser")
                .args(["-u", OS_USER, "--", "test", "-w"])
                .arg(&dir)
                .current_dir("/")
                .stdin(Stdio::null())
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !ok {
                return Err(not_writable(
                    &dir,
                    "the postgres user cannot write to it (check the permissions of it and its parents, and that the filesystem is writable)",
                ));
            }
        }
    }
    Ok(dir)
}

/// Adds the search bit for others to ancestors owned by root that lack it, so the
/// `postgres` user can reach the cluster dir (e.g. a 0700 temp dir becomes 0711).
fn make_ancestors_traversable(dir: &Path) -> Result<(), ManagedPostgresError> {
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() && mode & 0o001 == 0 && meta.uid() == 0 {
            let new_mode = mode | 0o011;
            std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(new_mode))
                .map_err(|e| {
                    not_writable(
                        dir,
                        format!(
                            "the postgres user cannot traverse {} and its mode cannot be changed ({e})",
                            ancestor.display()
                        ),
                    )
                })?;
            tracing::info!(
                dir = %ancestor.display(),
                mode = format!("{new_mode:o}"),
                "made a parent of the Postgres cluster traversable for the postgres user"
            );
        }
    }
    Ok(())
}

/// The socket dir: the cluster dir itself when the socket path fits, otherwise a short
/// private dir under /tmp named by a hash of the cluster path.
fn prepare_socket_dir(cluster_dir: &Path, run_as: &RunAs) -> Result<PathBuf, ManagedPostgresError> {
    let socket = cluster_dir.join(format!(".s.PGSQL.{PORT}"));
    if socket.as_os_str().len() < MAX_SOCKET_PATH {
        return Ok(cluster_dir.to_path_buf());
    }
    let hash = Sha256::digest(cluster_dir.as_os_str().as_encoded_bytes());
    let short: String = hash.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let dir = PathBuf::from(format!("/tmp/rookery-pg-{short}"));
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(not_writable(
                cluster_dir,
                format!(
                    "the socket path {} exists and is not a directory",
                    dir.display()
                ),
            ));
        }
        Err(_) => std::fs::create_dir(&dir).map_err(io_err(format!(
            "creating the Postgres socket directory {}",
            dir.display()
        )))?,
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(io_err("reading the socket directory"))?;
    let my_uid = effective_uid().unwrap_or(u32::MAX);
    let expected_owner = match run_as {
        RunAs::CurrentUser => my_uid,
        RunAs::PostgresUser { uid, gid } => {
            if meta.uid() == 0 {
                std::os::unix::fs::chown(&dir, Some(*uid), Some(*gid))
                    .map_err(io_err("giving the socket directory to postgres"))?;
            }
            *uid
        }
    };
    let meta = std::fs::symlink_metadata(&dir).map_err(io_err("reading the socket directory"))?;
    if meta.uid() != expected_owner {
        return Err(not_writable(
            cluster_dir,
            format!(
                "the socket directory {} belongs to another user (uid {})",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.uid() == my_uid {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(io_err("setting the socket directory's mode"))?;
    }
    Ok(dir)
}

/// Flushes the filesystem holding `dir` (`sync -f`, i.e. syncfs), falling back to a
/// plain `sync` where `-f` is not supported.
fn sync_filesystem(dir: &Path) -> Result<(), ManagedPostgresError> {
    let synced = Command::new("sync")
        .arg("-f")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if synced {
        return Ok(());
    }
    let output = Command::new("sync")
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("running sync after initdb"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ManagedPostgresError::Initdb {
            path: dir.to_path_buf(),
            output: format!("sync after initdb failed: {}", describe_output(&output)),
        })
    }
}

fn read_postmaster_pid(cluster_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(cluster_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Whether `pid` is a live (non-zombie) postgres process serving `cluster_dir`.
fn is_postmaster_of(pid: u32, cluster_dir: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // State is the field after the parenthesised command name.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_postgres = args
        .first()
        .and_then(|a| Path::new(std::str::from_utf8(a).unwrap_or("")).file_name())
        .is_some_and(|n| n == "postgres" || n == "postmaster");
    let dir = cluster_dir.as_os_str().as_encoded_bytes();
    is_postgres && args.contains(&dir)
}

/// Whether a process with this pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

fn remove_if_exists(path: &Path) -> Result<(), ManagedPostgresError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ManagedPostgresError::Io {
            action: format!("removing {}", path.display()),
            source: e,
        }),
    }
}

fn describe_output(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if text.is_empty() {
        text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    let text = text.lines().collect::<Vec<_>>().join(" / ");
    format!("{} ({})", truncate(&text, 2000), output.status)
}

fn tail_of_file(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    truncate(&all[start..].join(" / "), 2000)
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Quotes a value for a single-quoted POSIX shell word.
fn quote_sh(text: &str) -> String {
    text.replace('\'', "'\\''")
}

/// Escapes a value for a single-quoted libpq key=value field.
fn quote_kv(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_paths_keep_the_socket_in_the_cluster_dir() {
        let dir = Path::new("/tmp/x/pg");
        assert_eq!(prepare_socket_dir(dir, &RunAs::CurrentUser).unwrap(), dir);
    }

    #[test]
    fn long_paths_get_a_short_socket_dir() {
        let long = PathBuf::from(format!("/tmp/{}/pg", "d".repeat(120)));
        let dir = prepare_socket_dir(&long, &RunAs::CurrentUser).unwrap();
        assert!(
            dir.to_string_lossy().starts_with("/tmp/rookery-pg-"),
            "{}",
            dir.display()
        );
        assert!(dir.join(".s.PGSQL.5432").as_os_str().len() < 107);
        // Stable: the same cluster path maps to the same socket dir.
        assert_eq!(prepare_socket_dir(&long, &RunAs::CurrentUser).unwrap(), dir);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn euid_is_read() {
        assert!(effective_uid().is_some());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_sh("a'b"), "a'\\''b");
        assert_eq!(quote_kv("a'b\\"), "a\\'b\\\\");
    }

    #[test]
    fn dead_or_foreign_pids_are_not_postmasters() {
        let me = std::process::id();
        assert!(process_alive(me));
        assert!(!is_postmaster_of(me, Path::new("/tmp/none")));
        assert!(!is_postmaster_of(u32::MAX, Path::new("/tmp/none")));
    }
}
