//! requestCrawl admission: which hosts the relay agrees to subscribe to, for the public
//! `com.atproto.sync.requestCrawl` (and its deprecated twin `notifyOfUpdate`) and the
//! operator's `/admin/pds/requestCrawl` (routes in `http::admin::crawl`).
//!
//! Why every check comes before anything is stored (lesson 3): a relay that stored a
//! requestCrawl before checking it later subscribed to another relay and lost 95% of its
//! coverage. Here a host reaches the HostSupervisor's `AddHost` (which stores and dials it)
//! only after it passed; a refused host leaves no row.
//!
//! The checks, cheapest first ([`AdmissionState::request_crawl`]):
//! 1. the hostname's syntax and stored form ([`hostname`]);
//! 2. public requests only: the operator's switch (`setEnabled`) → 403 `Forbidden`;
//! 3. domain bans, parent domains included → 400 `DomainBan`;
//! 4. a known host: banned → 400 `HostBanned`; otherwise `AddHost` dials it at once if it is
//!    not connected (an idle or offline host comes back now) → 200, without counting
//!    against the daily limit or probing it again;
//! 5. at most [`CrawlSettings::max_concurrent_probes`] new hosts probed at once → 503 `Busy`;
//! 6. public requests only: new hosts per day (`setPerDayLimit`; hosts public requests added
//!    in the last 24 hours, plus those being admitted now) → 429 `RateLimitExceeded` with
//!    `Retry-After`;
//! 7. unless the operator's request exempts the host: it resolves, only to public addresses
//!    ([`ssrf`]) → 400 `HostUnresolvable` / 400 `HostNotPublic`;
//! 8. describeServer answers with a DID and no relay `Server` header ([`probe`]) → 400
//!    `HostNotFound` / 400 `HostIsRelay`;
//! 9. `AddHost` stores and dials it.
//!
//! Each outcome is one label value of `rookery_crawl_requests_total{path, outcome}`
//! ([`Outcome`]); both label sets are fixed, so the counter's size is bounded. The operator's
//! settings (switch, daily limit) live in `relay_settings` and are cached here; the admin
//! routes write through [`AdmissionState`], so the cache never goes stale in this process.

pub mod hostname;
pub mod probe;
pub mod ssrf;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use tokio::sync::{Mutex, Semaphore};

use self::hostname::{CrawlPath, CrawlTarget, parse_crawl_hostname};
use self::probe::{ProbeRefusal, ProbeSettings, probe_describe_server};
use self::ssrf::{DnsResolver, SsrfRefusal, resolve_public};
use crate::actors::host_supervisor::{AddHost, AddHostError, HostSupervisor, HostView, NewHost};
use crate::actors::obs::InstrumentedAddr;
use crate::actors::upstream_tls::UpstreamTls;
use crate::http::xrpc::{XrpcError, procedure_only};
use crate::store::crawl_policy;
use crate::store::postgres::{Db, DbError};

/// Largest requestCrawl body (a hostname fits many times over).
pub const MAX_BODY_BYTES: usize = 4 * 1024;

/// The public NSIDs [`configure`] serves: requestCrawl and the deprecated notifyOfUpdate,
/// handled the same (PROTOCOL.md §3).
pub const PUBLIC_METHODS: [&str; 2] = [
    "com.atproto.sync.requestCrawl",
    "com.atproto.sync.notifyOfUpdate",
];

/// Admission settings; `config` fills them from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrawlSettings {
    /// `--public-crawl`: whether public requestCrawl is accepted, until an operator stores
    /// another value with `setEnabled`.
    pub public_crawl: bool,
    /// `--new-hosts-per-day`: until an operator stores another with `setPerDayLimit`.
    pub new_hosts_per_day: u32,
    /// describeServer limits.
    pub probe: ProbeSettings,
    /// How long one DNS lookup may take.
    pub dns_timeout: Duration,
    /// New hosts checked (DNS and describeServer) at once; more get 503 `Busy`.
    pub max_concurrent_probes: usize,
    /// The roots the describeServer probe trusts (`--upstream-ca-file`).
    pub upstream_tls: UpstreamTls,
}

impl Default for CrawlSettings {
    fn default() -> Self {
        CrawlSettings {
            public_crawl: true,
            new_hosts_per_day: 50,
            probe: ProbeSettings::default(),
            dns_timeout: Duration::from_secs(5),
            max_concurrent_probes: 16,
            upstream_tls: UpstreamTls::default(),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Outcomes and their counter

/// What became of one requestCrawl: the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A new host was stored and dialled.
    Added,
    /// A known host (dialled at once if it was not connected).
    Known,
    InvalidRequest,
    TooLarge,
    InvalidHostname,
    Disabled,
    DomainBanned,
    HostBanned,
    Busy,
    DailyLimit,
    Unresolvable,
    NotPublic,
    DescribeFailed,
    Relay,
    /// The database or the supervisor could not answer.
    Unavailable,
}

impl Outcome {
    pub const ALL: [Outcome; 15] = [
        Outcome::Added,
        Outcome::Known,
        Outcome::InvalidRequest,
        Outcome::TooLarge,
        Outcome::InvalidHostname,
        Outcome::Disabled,
        Outcome::DomainBanned,
        Outcome::HostBanned,
        Outcome::Busy,
        Outcome::DailyLimit,
        Outcome::Unresolvable,
        Outcome::NotPublic,
        Outcome::DescribeFailed,
        Outcome::Relay,
        Outcome::Unavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Added => "added",
            Outcome::Known => "known",
            Outcome::InvalidRequest => "invalid_request",
            Outcome::TooLarge => "too_large",
            Outcome::InvalidHostname => "invalid_hostname",
            Outcome::Disabled => "disabled",
            Outcome::DomainBanned => "domain_banned",
            Outcome::HostBanned => "host_banned",
            Outcome::Busy => "busy",
            Outcome::DailyLimit => "daily_limit",
            Outcome::Unresolvable => "unresolvable",
            Outcome::NotPublic => "not_public",
            Outcome::DescribeFailed => "describe_failed",
            Outcome::Relay => "relay",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// `rookery_crawl_requests_total{path, outcome}`.
#[derive(Clone, Debug)]
pub struct CrawlMetrics {
    requests: prometheus::IntCounterVec,
}

impl CrawlMetrics {
    /// Registers the counter on `registry`, every label pair at zero.
    pub fn register(registry: &prometheus::Registry) -> Result<CrawlMetrics, prometheus::Error> {
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "rookery_crawl_requests_total",
                "requestCrawl requests by path (public, admin) and outcome",
            ),
            &["path", "outcome"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        for path in [CrawlPath::Public, CrawlPath::Admin] {
            for outcome in Outcome::ALL {
                requests.with_label_values(&[path.as_str(), outcome.label()]);
            }
        }
        Ok(CrawlMetrics { requests })
    }

    fn count(&self, path: CrawlPath, outcome: Outcome) {
        self.requests
            .with_label_values(&[path.as_str(), outcome.label()])
            .inc();
    }

    /// Requests so far with this path and outcome.
    pub fn get(&self, path: CrawlPath, outcome: Outcome) -> u64 {
        self.requests
            .with_label_values(&[path.as_str(), outcome.label()])
            .get()
    }
}

// ------------------------------------------------------------------------------------------
// Refusals

/// A refused requestCrawl: its outcome label and the XRPC error the client gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub outcome: Outcome,
    pub error: XrpcError,
    /// Sent as `Retry-After` (whole seconds, at least 1).
    pub retry_after: Option<Duration>,
}

impl Refusal {
    fn new(
        outcome: Outcome,
        status: StatusCode,
        name: &'static str,
        message: impl Into<String>,
    ) -> Refusal {
        Refusal {
            outcome,
            error: XrpcError::new(status, name, message),
            retry_after: None,
        }
    }

    fn bad_request(outcome: Outcome, name: &'static str, message: impl Into<String>) -> Refusal {
        Refusal::new(outcome, StatusCode::BAD_REQUEST, name, message)
    }

    fn unavailable(error: XrpcError) -> Refusal {
        Refusal {
            outcome: Outcome::Unavailable,
            error,
            retry_after: None,
        }
    }

    /// The XRPC error response, with `Retry-After` when set.
    pub fn to_response(&self) -> HttpResponse {
        let mut resp = self.error.to_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(value) = header::HeaderValue::from_str(&secs) {
                resp.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        resp
    }
}

impl From<DbError> for Refusal {
    fn from(e: DbError) -> Refusal {
        Refusal::unavailable(XrpcError::from(e))
    }
}

/// An admitted host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Stored and dialled now.
    Added(HostView),
    /// Already known; dialled now if it was not connected.
    Known(HostView),
}

impl Admitted {
    pub fn view(&self) -> &HostView {
        match self {
            Admitted::Added(v) | Admitted::Known(v) => v,
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            Admitted::Added(_) => Outcome::Added,
            Admitted::Known(_) => Outcome::Known,
        }
    }
}

// ------------------------------------------------------------------------------------------
// The state

struct Inner {
    db: Db,
    supervisor: InstrumentedAddr<HostSupervisor>,
    dns: Arc<dyn DnsResolver>,
    settings: CrawlSettings,
    metrics: CrawlMetrics,
    public_enabled: AtomicBool,
    per_day: AtomicU32,
    /// New hosts being probed now.
    probes: Semaphore,
    /// Public new hosts admitted past the daily check whose rows may not exist yet; the
    /// mutex makes "count, compare, reserve" one step, so concurrent requests cannot both
    /// take the last slot.
    reserved: AtomicU64,
    daily_check: Mutex<()>,
}

/// Admission's shared state: the database, the supervisor, the resolver, the operator's
/// settings (cached) and the counter. Cheap to clone.
#[derive(Clone)]
pub struct AdmissionState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AdmissionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionState")
            .field("settings", &self.inner.settings)
            .field("public_enabled", &self.public_crawl_enabled())
            .field("new_hosts_per_day", &self.new_hosts_per_day())
            .finish()
    }
}

/// Releases a daily-limit reservation when the admission ends (added or refused later).
struct Reservation<'a>(&'a AtomicU64);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AdmissionState {
    /// Reads the stored settings (a stored value wins over `settings`' defaults).
    pub async fn load(
        db: Db,
        supervisor: InstrumentedAddr<HostSupervisor>,
        dns: Arc<dyn DnsResolver>,
        settings: CrawlSettings,
        metrics: CrawlMetrics,
    ) -> Result<AdmissionState, DbError> {
        let stored = crawl_policy::load_settings(&db).await?;
        let public = stored.public_crawl_enabled.unwrap_or(settings.public_crawl);
        let per_day = stored
            .new_hosts_per_day
            .unwrap_or(settings.new_hosts_per_day);
        tracing::info!(
            public_crawl = public,
            new_hosts_per_day = per_day,
            "requestCrawl admission settings"
        );
        Ok(AdmissionState {
            inner: Arc::new(Inner {
                db,
                supervisor,
                dns,
                metrics,
                public_enabled: AtomicBool::new(public),
                per_day: AtomicU32::new(per_day),
                probes: Semaphore::new(settings.max_concurrent_probes.max(1)),
                reserved: AtomicU64::new(0),
                daily_check: Mutex::new(()),
                settings,
            }),
        })
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    pub fn supervisor(&self) -> &InstrumentedAddr<HostSupervisor> {
        &self.inner.supervisor
    }

    pub fn metrics(&self) -> &CrawlMetrics {
        &self.inner.metrics
    }

    /// Whether public requestCrawl is accepted.
    pub fn public_crawl_enabled(&self) -> bool {
        self.inner.public_enabled.load(Ordering::Acquire)
    }

    /// Stores, then applies, the public switch.
    pub async fn set_public_crawl_enabled(&self, enabled: bool) -> Result<(), DbError> {
        crawl_policy::set_public_crawl_enabled(&self.inner.db, enabled).await?;
        self.inner.public_enabled.store(enabled, Ordering::Release);
        tracing::info!(enabled, "public requestCrawl switched by an operator");
        Ok(())
    }

    /// New hosts public requestCrawl may add per 24 hours.
    pub fn new_hosts_per_day(&self) -> u32 {
        self.inner.per_day.load(Ordering::Acquire)
    }

    /// Stores, then applies, the daily limit.
    pub async fn set_new_hosts_per_day(&self, limit: u32) -> Result<(), DbError> {
        crawl_policy::set_new_hosts_per_day(&self.inner.db, limit).await?;
        self.inner.per_day.store(limit, Ordering::Release);
        tracing::info!(limit, "new hosts per day set by an operator");
        Ok(())
    }

    /// Reads a requestCrawl body (`{"hostname": "..."}`, at most [`MAX_BODY_BYTES`]) and
    /// runs admission on it; the outcome is counted.
    pub async fn request_crawl_body(
        &self,
        path: CrawlPath,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<Admitted, Refusal> {
        let result = match read_hostname(req, payload).await {
            Ok(hostname) => self.admit(&hostname, path).await,
            Err(refusal) => Err(refusal),
        };
        self.finish(path, result)
    }

    /// Runs admission on `hostname` for `path`; the outcome is counted.
    pub async fn request_crawl(
        &self,
        hostname: &str,
        path: CrawlPath,
    ) -> Result<Admitted, Refusal> {
        let result = self.admit(hostname, path).await;
        self.finish(path, result)
    }

    fn finish(
        &self,
        path: CrawlPath,
        result: Result<Admitted, Refusal>,
    ) -> Result<Admitted, Refusal> {
        match &result {
            Ok(admitted) => {
                self.inner.metrics.count(path, admitted.outcome());
                if let Admitted::Added(view) = admitted {
                    tracing::info!(host = %view.hostname, path = path.as_str(), "requestCrawl: new host added");
                }
            }
            Err(refusal) => {
                self.inner.metrics.count(path, refusal.outcome);
                tracing::debug!(
                    path = path.as_str(),
                    outcome = refusal.outcome.label(),
                    message = %refusal.error.message,
                    "requestCrawl refused"
                );
            }
        }
        result
    }

    async fn admit(&self, raw: &str, path: CrawlPath) -> Result<Admitted, Refusal> {
        let inner = &self.inner;
        let target = parse_crawl_hostname(raw, path).map_err(|e| {
            Refusal::bad_request(Outcome::InvalidHostname, "InvalidHostname", e.message())
        })?;
        if path == CrawlPath::Public && !self.public_crawl_enabled() {
            return Err(Refusal::new(
                Outcome::Disabled,
                StatusCode::FORBIDDEN,
                "Forbidden",
                "this relay does not accept public requestCrawl at the moment",
            ));
        }
        if let Some(domain) =
            crawl_policy::banned_domain_among(&inner.db, &target.ban_candidates()).await?
        {
            return Err(Refusal::bad_request(
                Outcome::DomainBanned,
                "DomainBan",
                format!("the domain {domain} is banned on this relay"),
            ));
        }
        if let Some(status) = crawl_policy::host_status(&inner.db, &target.hostname).await? {
            if status == "banned" {
                return Err(host_banned());
            }
            return self.add(&target, path).await.map(Admitted::Known);
        }
        let Ok(_probe_permit) = inner.probes.try_acquire() else {
            let mut refusal = Refusal::new(
                Outcome::Busy,
                StatusCode::SERVICE_UNAVAILABLE,
                "Busy",
                "too many hosts are being checked at the moment; retry shortly",
            );
            refusal.retry_after = Some(inner.settings.probe.timeout);
            return Err(refusal);
        };
        let _reservation = match path {
            CrawlPath::Public => Some(self.reserve_daily_slot().await?),
            CrawlPath::Admin => None,
        };
        let pinned = if target.ssrf_exempt {
            None
        } else {
            let port = target.port.unwrap_or(if target.no_ssl { 80 } else { 443 });
            Some(
                resolve_public(
                    inner.dns.as_ref(),
                    &target.host,
                    port,
                    inner.settings.dns_timeout,
                )
                .await
                .map_err(|refusal| match refusal {
                    SsrfRefusal::Unresolvable(why) => Refusal::bad_request(
                        Outcome::Unresolvable,
                        "HostUnresolvable",
                        format!("{} does not resolve: {why}", target.host),
                    ),
                    SsrfRefusal::NotPublic { addr, range } => Refusal::bad_request(
                        Outcome::NotPublic,
                        "HostNotPublic",
                        format!("{} resolves to {addr}, a {range} address", target.host),
                    ),
                })?,
            )
        };
        probe_describe_server(
            &target,
            pinned,
            inner.settings.probe,
            &inner.settings.upstream_tls,
        )
        .await
        .map_err(|refusal| match refusal {
            ProbeRefusal::Relay => Refusal::bad_request(
                Outcome::Relay,
                "HostIsRelay",
                "the host identifies itself as a relay (Server: ...atproto-relay)",
            ),
            ProbeRefusal::Failed(why) => {
                Refusal::bad_request(Outcome::DescribeFailed, "HostNotFound", why)
            }
        })?;
        self.add(&target, path).await.map(Admitted::Added)
    }

    /// Counts the public hosts of the last 24 hours and those being admitted now; takes a
    /// slot when the sum is under the limit.
    async fn reserve_daily_slot(&self) -> Result<Reservation<'_>, Refusal> {
        let inner = &self.inner;
        let _one_at_a_time = inner.daily_check.lock().await;
        let limit = u64::from(self.new_hosts_per_day());
        let recent = crawl_policy::recent_public_hosts(&inner.db).await?;
        let in_flight = inner.reserved.load(Ordering::Acquire);
        if recent.count.saturating_add(in_flight) >= limit {
            let retry_after = if recent.count >= limit {
                // When the oldest counted host leaves the window (a day when none is counted:
                // the limit is 0).
                recent
                    .oldest_leaves_in
                    .unwrap_or(Duration::from_secs(24 * 3600))
            } else {
                // Slots held by admissions in progress free up within one probe.
                inner.settings.probe.timeout
            };
            return Err(Refusal {
                outcome: Outcome::DailyLimit,
                error: XrpcError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RateLimitExceeded",
                    format!(
                        "this relay adds at most {limit} new hosts per day through public requestCrawl"
                    ),
                ),
                retry_after: Some(retry_after),
            });
        }
        inner.reserved.fetch_add(1, Ordering::AcqRel);
        Ok(Reservation(&inner.reserved))
    }

    async fn add(&self, target: &CrawlTarget, path: CrawlPath) -> Result<HostView, Refusal> {
        let new = NewHost {
            hostname: target.hostname.clone(),
            no_ssl: target.no_ssl,
            admin_added: path == CrawlPath::Admin,
            ssrf_exempt: target.ssrf_exempt,
            account_limit: None,
        };
        match self.inner.supervisor.send(AddHost(new)).await {
            Ok(Ok(view)) => Ok(view),
            Ok(Err(AddHostError::Banned)) => Err(host_banned()),
            Ok(Err(AddHostError::Store(reason))) => {
                tracing::warn!(host = %target.hostname, reason, "requestCrawl: host not stored");
                Err(Refusal::unavailable(XrpcError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "DatabaseUnavailable",
                    "the relay could not store the host; retry later",
                )))
            }
            Err(e) => {
                tracing::warn!(host = %target.hostname, error = %e, "requestCrawl: supervisor unavailable");
                Err(Refusal::unavailable(XrpcError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    "the relay is not accepting hosts at the moment; retry later",
                )))
            }
        }
    }
}

fn host_banned() -> Refusal {
    Refusal::bad_request(
        Outcome::HostBanned,
        "HostBanned",
        "this host is banned on this relay",
    )
}

// ------------------------------------------------------------------------------------------
// Bodies

/// Why a JSON body could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Over the limit (by `Content-Length` or by what arrived).
    TooLarge(usize),
    /// Not readable or not JSON (the text says which).
    Malformed(String),
}

/// Reads a JSON body of at most `limit` bytes, stopping as soon as more arrives.
pub async fn read_json_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<serde_json::Value, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| BodyError::Malformed(format!("body unreadable: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| BodyError::Malformed(format!("body is not JSON: {e}")))
}

/// The `hostname` of a requestCrawl body.
async fn read_hostname(req: &HttpRequest, payload: web::Payload) -> Result<String, Refusal> {
    let value = read_json_body(req, payload, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(limit) => Refusal::new(
                Outcome::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                format!("the body must be at most {limit} bytes"),
            ),
            BodyError::Malformed(why) => {
                Refusal::bad_request(Outcome::InvalidRequest, "InvalidRequest", why)
            }
        })?;
    match value.get("hostname") {
        Some(serde_json::Value::String(h)) => Ok(h.clone()),
        Some(_) => Err(Refusal::bad_request(
            Outcome::InvalidRequest,
            "InvalidRequest",
            "hostname must be a string",
        )),
        None => Err(Refusal::bad_request(
            Outcome::InvalidRequest,
            "InvalidRequest",
            "the body must be a JSON object with a hostname",
        )),
    }
}

// ------------------------------------------------------------------------------------------
// Public routes

/// Adds `POST /xrpc/com.atproto.sync.requestCrawl` and `.../notifyOfUpdate` (another HTTP
/// method is a 405 in the XRPC error shape).
pub fn configure(cfg: &mut web::ServiceConfig, state: AdmissionState) {
    let data = web::Data::new(state);
    for method in PUBLIC_METHODS {
        cfg.service(
            web::resource(format!("/xrpc/{method}"))
                .app_data(data.clone())
                .route(web::post().to(public_request_crawl))
                .default_service(web::to(procedure_only)),
        );
    }
}

/// The lexicon's output is empty: 200 with no body.
async fn public_request_crawl(
    state: web::Data<AdmissionState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    match state
        .request_crawl_body(CrawlPath::Public, &req, payload)
        .await
    {
        Ok(_) => HttpResponse::Ok().finish(),
        Err(refusal) => refusal.to_response(),
    }
}
