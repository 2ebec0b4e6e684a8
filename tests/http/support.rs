//! A relay's public listener (`http::start_public` with the sync routes) on 127.0.0.1 over a
//! fresh test database, and two HTTP clients: awc (redirects off) for ordinary requests and a
//! raw TCP one for request targets awc would refuse to send (raw non-ASCII bytes). Every reply
//! is checked for the `Server` header, so every test asserts it on every response.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::web;
use bytes::Bytes;
use rookery::http::sync::{self, SyncApi};
use rookery::http::{ListenerSettings, SERVER_HEADER};
use rookery::store::migrations;
use rookery::store::postgres::{Db, DbSettings};
use rookery::testkit::postgres::test_cluster;

/// How long a test waits for one reply.
pub const WAIT: Duration = Duration::from_secs(15);

/// Hosts and accounts most tests read. `did:plc:active` has a commit; every other account
/// shows one status the endpoints treat differently.
pub const SEED: &str = "
INSERT INTO hosts (id, hostname, status, last_seq, no_ssl) VALUES
    (1, 'pds.example.com', 'active', 42, false),
    (2, 'old.example.com', 'offline', 7, false),
    (3, 'localhost:2583', 'active', 0, true),
    (4, 'banned.example.com', 'banned', 3, false);
SELECT setval('hosts_id_seq', 4);
INSERT INTO accounts (uid, did, host_id, local_status, upstream_status) VALUES
    (1, 'did:plc:active', 1, 'active', 'active'),
    (2, 'did:plc:nocommit', 1, 'active', 'active'),
    (3, 'did:plc:takendown', 1, 'takendown', 'active'),
    (4, 'did:plc:deactivated', 1, 'active', 'deactivated'),
    (5, 'did:plc:suspended', 1, 'active', 'suspended'),
    (6, 'did:plc:deleted', 1, 'active', 'deleted'),
    (7, 'did:plc:throttled', 2, 'throttled', 'active'),
    (8, 'did:plc:desynchronized', 2, 'active', 'desynchronized'),
    (9, 'did:plc:inactive', 2, 'active', 'inactive'),
    (10, 'did:web:dev.example.com', 3, 'active', 'active');
SELECT setval('accounts_uid_seq', 10);
INSERT INTO account_sync_state (uid, rev, commit_cid, data_cid)
SELECT uid, '3kaaaaaaaaa' || lpad(uid::text, 2, '2'), 'bafyreicommit' || uid, 'bafyreidata' || uid
FROM accounts WHERE did <> 'did:plc:nocommit';
";

/// The rev and commit CID [`SEED`] gives the account with this uid.
pub fn seeded_commit(uid: i64) -> (String, String) {
    (
        format!("3kaaaaaaaaa{:2>2}", uid),
        format!("bafyreicommit{uid}"),
    )
}

/// A fresh, migrated database: a pool for the test's own statements, and its settings.
pub async fn fresh_db() -> (Db, tokio_postgres::Config) {
    let database = test_cluster()
        .fresh_database()
        .await
        .expect("fresh database");
    let db = Db::new(database.pg_config.clone(), DbSettings::default()).expect("pool");
    migrations::migrate(&db).await.expect("migrations");
    (db, database.pg_config)
}

/// Runs SQL (several statements allowed).
pub async fn sql(db: &Db, statements: &str) {
    db.client()
        .await
        .expect("connection")
        .batch_execute(statements)
        .await
        .expect("SQL");
}

/// A running public listener.
pub struct Relay {
    pub addr: SocketAddr,
    pub db: Db,
    handle: ServerHandle,
}

impl Relay {
    /// The sync routes over a fresh database seeded with `seed`. Call inside an actix system.
    pub async fn start(seed: &str) -> Relay {
        Relay::start_with(seed, |_| {}, |_| {}).await
    }

    /// Like [`Relay::start`], with other modules' routes mounted `before` and `after` the sync
    /// routes (as `main` would mount theirs).
    pub async fn start_with<B, A>(seed: &str, before: B, after: A) -> Relay
    where
        B: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
        A: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        Relay::start_inner(seed, before, after, |pg| pg).await
    }

    /// The sync routes over a database the API cannot reach (it does not exist), as during a
    /// Postgres outage.
    pub async fn start_without_database() -> Relay {
        Relay::start_inner(
            "",
            |_| {},
            |_| {},
            |mut pg| {
                pg.dbname("no_such_database");
                pg
            },
        )
        .await
    }

    async fn start_inner<B, A>(
        seed: &str,
        before: B,
        after: A,
        api_config: impl FnOnce(tokio_postgres::Config) -> tokio_postgres::Config,
    ) -> Relay
    where
        B: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
        A: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let (db, pg_config) = fresh_db().await;
        let pg_config = api_config(pg_config);
        if !seed.is_empty() {
            sql(&db, seed).await;
        }
        // The listener gets a pool of its own: a pooled connection is driven by the runtime
        // that opened it, and the test's thread may block (raw sockets) while the server runs.
        let api = SyncApi::new(Db::new(pg_config, DbSettings::default()).expect("pool"));
        let (server, addrs) = rookery::http::start_public(
            "127.0.0.1:0".parse().expect("address"),
            ListenerSettings::new(1, Duration::from_secs(1)),
            move |cfg| {
                before(cfg);
                sync::configure(cfg, api.clone());
                after(cfg);
            },
        )
        .expect("bind");
        let handle = server.handle();
        actix_rt::spawn(server);
        let relay = Relay {
            addr: addrs[0],
            db,
            handle,
        };
        // The spawned server starts its workers when this system next runs it: wait for an
        // answer, so a test may then block on a raw socket.
        assert_eq!(relay.get("/_health").await.status, 200);
        relay
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// `GET` without following redirects.
    pub async fn get(&self, path_and_query: &str) -> Reply {
        self.request(awc::http::Method::GET, path_and_query).await
    }

    pub async fn request(&self, method: awc::http::Method, path_and_query: &str) -> Reply {
        let client = awc::Client::builder()
            .timeout(WAIT)
            .disable_redirects()
            .finish();
        let mut response = client
            .request(method, self.url(path_and_query))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path_and_query}: {e}"));
        let body = response
            .body()
            .limit(16 * 1024 * 1024)
            .await
            .expect("HTTP body");
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        Reply::checked(path_and_query, response.status().as_u16(), headers, body)
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
        self.db.close();
    }
}

/// One response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Reply {
    /// Checks what every response of the relay must have: the `Server` header.
    fn checked(what: &str, status: u16, headers: Vec<(String, String)>, body: Bytes) -> Reply {
        let reply = Reply {
            status,
            headers,
            body,
        };
        assert_eq!(
            reply.header("server"),
            Some(SERVER_HEADER),
            "{what}: status {status}, no relay Server header"
        );
        reply
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts an XRPC error: the status, `application/json`, the error name, and that the
    /// message mentions `mentions`.
    pub fn assert_error(&self, status: u16, name: &str, mentions: &str) {
        assert_eq!(
            self.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body = self.json();
        assert_eq!(body["error"], name, "{body}");
        let message = body["message"].as_str().expect("message");
        assert!(
            message.contains(mentions),
            "message {message:?} should mention {mentions:?}"
        );
        let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["error", "message"], "{body}");
    }
}

/// A minimal HTTP/1.1 `GET` over a blocking socket (`Connection: close`, whole response
/// read), with the `Server` header checked. Bounded by [`WAIT`].
pub fn raw_get(addr: SocketAddr, target: &[u8]) -> Reply {
    let reply = raw_get_unchecked(addr, target);
    Reply::checked(
        &String::from_utf8_lossy(target),
        reply.status,
        reply.headers,
        reply.body,
    )
}

/// [`raw_get`] without the `Server` header check: for requests the HTTP parser itself refuses
/// before any application code (and so any middleware) runs.
pub fn raw_get_unchecked(addr: SocketAddr, target: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.set_write_timeout(Some(WAIT)).expect("timeout");
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n");
    stream.write_all(&request).expect("write request");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "read response: {e}; got so far {:?}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[head_end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body: Bytes::from(body),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .expect("chunk size");
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}
