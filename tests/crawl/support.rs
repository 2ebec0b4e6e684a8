//! A relay for admission tests: the real ingest pipeline (HostSupervisor, Subscribers, shards,
//! event log on a temp dir) over a fresh test database, and a public listener on 127.0.0.1
//! with the requestCrawl routes and the admin scope (its auth, with [`ADMIN_PASSWORD`]) with
//! the crawl admin routes, mounted as `rookery serve` mounts them. DNS for the public-address
//! checks is a [`TestDns`] the tests fill.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use base64::Engine;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use prometheus::Registry;
use rookery::actors::host_supervisor::{HostView, ListConnections};
use rookery::actors::obs::ActorMetrics;
use rookery::actors::validator_shard::system_clock;
use rookery::actors::{Pipeline, PipelineSettings, start_pipeline};
use rookery::http::request_crawl::hostname::CrawlPath;
use rookery::http::request_crawl::ssrf::DnsResolver;
use rookery::http::request_crawl::{self, AdmissionState, CrawlMetrics, CrawlSettings, Outcome};
use rookery::http::sync::{self, SyncApi};
use rookery::http::{ListenerSettings, SERVER_HEADER, admin};
use rookery::sim::{SimPlc, install_crypto_provider};
use rookery::store::event_log::{EventLog, EventLogConfig};
use rookery::store::migrations;
use rookery::store::postgres::{Db, DbSettings};
use rookery::testkit::postgres::test_cluster;

pub use crate::common::wait::eventually;

/// How long a test waits for one condition or reply.
pub const WAIT: Duration = Duration::from_secs(20);

/// The admin password the guard in front of `/admin` lets in.
pub const ADMIN_PASSWORD: &str = "crawl-test-password";

/// `Authorization` for [`ADMIN_PASSWORD`].
pub fn admin_authorization(password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"));
    format!("Basic {token}")
}

/// A resolver the tests fill: a name resolves to the addresses set for it, any other name
/// fails as NXDOMAIN would. Every lookup is recorded.
#[derive(Clone, Default)]
pub struct TestDns {
    names: Arc<Mutex<HashMap<String, Vec<IpAddr>>>>,
    lookups: Arc<Mutex<Vec<String>>>,
}

impl TestDns {
    pub fn set(&self, name: &str, addrs: &[&str]) {
        let addrs = addrs
            .iter()
            .map(|a| a.parse().expect("test address"))
            .collect();
        self.names
            .lock()
            .expect("dns")
            .insert(name.to_string(), addrs);
    }

    /// The names looked up so far.
    pub fn lookups(&self) -> Vec<String> {
        self.lookups.lock().expect("dns").clone()
    }
}

impl DnsResolver for TestDns {
    fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        self.lookups.lock().expect("dns").push(host.to_string());
        let found = self.names.lock().expect("dns").get(host).cloned();
        Box::pin(async move {
            match found {
                Some(addrs) => Ok(addrs
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect()),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such name (test resolver)",
                )),
            }
        })
    }
}

/// Pipeline settings for tests: dials at once, fast status flushes, local did:web allowed.
pub fn pipeline_settings(plc: &SimPlc) -> PipelineSettings {
    let mut s = PipelineSettings {
        shards: 2,
        ..PipelineSettings::default()
    };
    s.resolver.plc_url = plc.url();
    s.resolver.allow_localhost_did_web = true;
    s.resolver.request_timeout = Duration::from_secs(2);
    s.supervisor.startup_spread = Duration::ZERO;
    s.supervisor.status_flush_every = Duration::from_millis(100);
    s.ingest.write_behind.flush_every = Duration::from_millis(200);
    s.shard.hold_for = Duration::from_secs(3);
    s.shard.retry_after = Duration::from_millis(200);
    s
}

/// Admission settings for tests: short probe and DNS timeouts.
pub fn crawl_settings() -> CrawlSettings {
    let mut s = CrawlSettings::default();
    s.probe.timeout = Duration::from_secs(3);
    s.dns_timeout = Duration::from_secs(2);
    s
}

/// A fresh, migrated database and its connection settings.
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

/// One `hosts` row as admission left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub status: String,
    pub no_ssl: bool,
    pub admin_added: bool,
    pub ssrf_exempt: bool,
}

/// A relay with admission in front of a running pipeline.
pub struct CrawlRelay {
    pub addr: SocketAddr,
    /// The test's own pool (setup and assertions).
    pub db: Db,
    pub pg_config: tokio_postgres::Config,
    pub admission: AdmissionState,
    pub dns: TestDns,
    pub plc: SimPlc,
    pipeline: Option<Pipeline>,
    firehose: Arc<rookery::actors::firehose::Firehose>,
    handle: ServerHandle,
    _dir: tempfile::TempDir,
}

impl CrawlRelay {
    /// A relay over a fresh database seeded with `seed` (before the pipeline loads the host
    /// table), with the test admission settings.
    pub async fn start(seed: &str) -> CrawlRelay {
        CrawlRelay::start_with(seed, crawl_settings()).await
    }

    pub async fn start_with(seed: &str, crawl: CrawlSettings) -> CrawlRelay {
        install_crypto_provider();
        let plc = SimPlc::start().expect("plc");
        let (db, pg_config) = fresh_db().await;
        if !seed.is_empty() {
            sql(&db, seed).await;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log_config = EventLogConfig::new(dir.path());
        log_config.segment_max_bytes = 64 * 1024;
        let log = EventLog::open(log_config).expect("event log").0;
        let registry = Registry::new();
        let actor_metrics = ActorMetrics::register(&registry).expect("metrics");
        let pipeline_db = Db::new(pg_config.clone(), DbSettings::default()).expect("pool");
        let pipeline = start_pipeline(
            log,
            pipeline_db,
            pipeline_settings(&plc),
            system_clock(),
            &actor_metrics,
            &registry,
        )
        .await
        .expect("pipeline");
        let dns = TestDns::default();
        let api_db = Db::new(pg_config.clone(), DbSettings::default()).expect("pool");
        let admission = AdmissionState::load(
            api_db,
            pipeline.supervisor.clone(),
            Arc::new(dns.clone()),
            crawl,
            CrawlMetrics::register(&registry).expect("crawl metrics"),
        )
        .await
        .expect("admission");
        let firehose = Arc::new(
            rookery::actors::firehose::start_firehose(
                pipeline.ingest.reader.clone(),
                pipeline.ingest.durable_head.clone(),
                Default::default(),
                &actor_metrics,
                &registry,
            )
            .expect("firehose"),
        );
        let admin_api = admin::AdminApi {
            auth: admin::AdminAuth::new([ADMIN_PASSWORD]),
            supervisor: pipeline.supervisor.clone(),
            accounts: pipeline.accounts.clone(),
            firehose: Arc::clone(&firehose),
            db: Db::new(pg_config.clone(), DbSettings::default()).expect("pool"),
        };
        let routes_state = admission.clone();
        let (server, addrs) = rookery::http::start_public(
            "127.0.0.1:0".parse().expect("address"),
            ListenerSettings::new(2, Duration::from_secs(1)),
            move |cfg| {
                request_crawl::configure(cfg, routes_state.clone());
                let admin_state = routes_state.clone();
                admin::configure(cfg, admin_api.clone(), move |c| {
                    admin::crawl::configure(c, admin_state)
                });
            },
        )
        .expect("bind");
        let handle = server.handle();
        actix_rt::spawn(server);
        let relay = CrawlRelay {
            addr: addrs[0],
            db,
            pg_config,
            admission,
            dns,
            plc,
            pipeline: Some(pipeline),
            firehose,
            handle,
            _dir: dir,
        };
        assert_eq!(relay.get("/_health").await.status, 200);
        relay
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pipeline(&self) -> &Pipeline {
        self.pipeline.as_ref().expect("running")
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(awc::http::Method::GET, path, Bytes::new())
            .await
    }

    /// POST with the admin credentials (ignored by public routes).
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.request(awc::http::Method::POST, path, body.into())
            .await
    }

    pub async fn request(&self, method: awc::http::Method, path: &str, body: Bytes) -> Reply {
        request(&self.url(path), method, body).await
    }

    /// The public requestCrawl with `{"hostname": hostname}`.
    pub async fn public_crawl(&self, hostname: &str) -> Reply {
        let body = serde_json::json!({ "hostname": hostname }).to_string();
        self.post("/xrpc/com.atproto.sync.requestCrawl", body).await
    }

    /// The admin requestCrawl with `{"hostname": hostname}`.
    pub async fn admin_crawl(&self, hostname: &str) -> Reply {
        let body = serde_json::json!({ "hostname": hostname }).to_string();
        self.post("/admin/pds/requestCrawl", body).await
    }

    pub async fn host_row(&self, hostname: &str) -> Option<HostRow> {
        let client = self.db.client().await.expect("client");
        client
            .query_opt(
                "SELECT status, no_ssl, admin_added, ssrf_exempt FROM hosts WHERE hostname = $1",
                &[&hostname],
            )
            .await
            .expect("hosts")
            .map(|r| HostRow {
                status: r.get(0),
                no_ssl: r.get(1),
                admin_added: r.get(2),
                ssrf_exempt: r.get(3),
            })
    }

    pub async fn host_count(&self) -> i64 {
        let client = self.db.client().await.expect("client");
        client
            .query_one("SELECT count(*) FROM hosts", &[])
            .await
            .expect("hosts")
            .get(0)
    }

    /// The supervisor's view of `hostname`.
    pub async fn connection(&self, hostname: &str) -> Option<HostView> {
        self.pipeline()
            .supervisor
            .send(ListConnections)
            .await
            .expect("supervisor")
            .into_iter()
            .find(|h| h.hostname == hostname)
    }

    pub fn counted(&self, path: CrawlPath, outcome: Outcome) -> u64 {
        self.admission.metrics().get(path, outcome)
    }

    pub async fn stop(mut self) {
        self.firehose.shutdown(Duration::from_secs(1)).await;
        self.handle.stop(false).await;
        if let Some(p) = self.pipeline.take() {
            p.shutdown().await;
        }
        self.plc.stop().await;
        self.db.close();
    }
}

/// A source relay for `pull-hosts`: the sync routes over a fresh database seeded with `seed`.
pub struct SourceRelay {
    pub addr: SocketAddr,
    pub db: Db,
    handle: ServerHandle,
}

impl SourceRelay {
    pub async fn start(seed: &str) -> SourceRelay {
        let (db, pg_config) = fresh_db().await;
        sql(&db, seed).await;
        let api = SyncApi::new(Db::new(pg_config, DbSettings::default()).expect("pool"));
        let (server, addrs) = rookery::http::start_public(
            "127.0.0.1:0".parse().expect("address"),
            ListenerSettings::new(1, Duration::from_secs(1)),
            move |cfg| sync::configure(cfg, api.clone()),
        )
        .expect("bind");
        let handle = server.handle();
        actix_rt::spawn(server);
        let source = SourceRelay {
            addr: addrs[0],
            db,
            handle,
        };
        let url = format!("http://{}/_health", source.addr);
        assert_eq!(
            request(&url, awc::http::Method::GET, Bytes::new())
                .await
                .status,
            200
        );
        source
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
        self.db.close();
    }
}

/// One request with the admin credentials; every reply must carry the relay `Server` header.
pub async fn request(url: &str, method: awc::http::Method, body: Bytes) -> Reply {
    let client = awc::Client::builder()
        .timeout(WAIT)
        .disable_redirects()
        .finish();
    let mut response = client
        .request(method, url)
        .insert_header(("authorization", admin_authorization(ADMIN_PASSWORD)))
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let body = response.body().limit(1 << 20).await.expect("body");
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
    let reply = Reply {
        status: response.status().as_u16(),
        headers,
        body,
    };
    assert_eq!(
        reply.header("server"),
        Some(SERVER_HEADER),
        "{url}: no relay Server header"
    );
    reply
}

/// One response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// An XRPC error: status, JSON, the name, a message.
    pub fn assert_xrpc(&self, status: u16, name: &str) {
        assert_eq!(
            self.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body = self.json();
        assert_eq!(body["error"], name, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }

    /// An admin error: status and `{"error": "<text>"}` only.
    pub fn assert_admin_error(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["error"], "{body}");
        assert!(body["error"].as_str().is_some_and(|m| !m.is_empty()));
    }

    /// `{"success": "true", ...}`.
    pub fn assert_success(&self) -> serde_json::Value {
        assert_eq!(
            self.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        assert_eq!(body["success"], "true", "{body}");
        body
    }
}
