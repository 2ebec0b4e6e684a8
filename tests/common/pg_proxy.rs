//! A TCP proxy on 127.0.0.1 in front of the test cluster's unix socket that can be
//! *frozen*: bytes are still accepted but held, so every query through it hangs without an
//! error (a Postgres that stopped answering), until it is thawed. The test cluster is shared
//! by every test of the process, so it cannot be stopped or paused itself.
//!
//! It runs on its own thread with its own runtime, so it keeps serving while the test
//! thread blocks (waiting for a child process, say).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rookery::testkit::postgres::test_cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::watch;
use tokio_postgres::config::Host;

pub struct PgProxy {
    pub port: u16,
    frozen: watch::Sender<bool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PgProxy {
    pub fn start() -> PgProxy {
        let direct = test_cluster().pg_config("postgres");
        let socket = match (direct.get_hosts(), direct.get_ports()) {
            ([Host::Unix(dir)], [port]) => dir.join(format!(".s.PGSQL.{port}")),
            other => panic!("the test cluster listens on a unix socket: {other:?}"),
        };
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let (frozen, frozen_rx) = watch::channel(false);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(serve(listener, socket, frozen_rx, stopping));
        });
        PgProxy {
            port,
            frozen,
            stop,
            thread: Some(thread),
        }
    }

    /// A libpq connection string for the test cluster's database `dbname` through this
    /// proxy.
    pub fn connection_string(&self, dbname: &str) -> String {
        let direct = test_cluster().pg_config(dbname);
        format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            self.port,
            direct.get_user().expect("user"),
            dbname
        )
    }

    /// From now on nothing passes in either direction (held, not dropped).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Everything held passes, and new bytes too.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thaw();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    socket: PathBuf,
    frozen: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    let mut connections = tokio::task::JoinSet::new();
    while !stop.load(Ordering::SeqCst) {
        let accepted =
            tokio::time::timeout(std::time::Duration::from_millis(50), listener.accept()).await;
        let Ok(Ok((tcp, _))) = accepted else {
            continue;
        };
        let Ok(unix) = UnixStream::connect(&socket).await else {
            continue;
        };
        let (tcp_read, tcp_write) = tcp.into_split();
        let (unix_read, unix_write) = unix.into_split();
        connections.spawn(pump(tcp_read, unix_write, frozen.clone()));
        connections.spawn(pump(unix_read, tcp_write, frozen.clone()));
    }
    connections.abort_all();
}

/// Copies `from` to `to`, holding what it read while frozen.
async fn pump<R, W>(mut from: R, mut to: W, mut frozen: watch::Receiver<bool>)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
