//! The HostAuthorityResolver pool: DID → (signing key, PDS host, handle), cached.
//!
//! What it owns: a memory cache of identities (positive entries with a long TTL, negative
//! ones, "not found / tombstoned / broken", with a short one), a rate limiter for forced
//! re-resolutions, the `did_cache` table as a second level, and a small pool of [`Fetcher`]
//! actors that do the HTTP requests. What it never does: decide what happens to an event (the
//! ValidatorShard does, with [`Resolver::check_host`] and [`Resolver::resolve_fresh`]), resolve
//! handles through DNS, follow redirects, or request a URL built from an invalid DID.
//!
//! Why actors for the requests: awc's `Client` is `!Send`, bound to the arbiter it was built
//! on, and awc is the one HTTP client of the crate. So each [`Fetcher`] lives on its own
//! arbiter (DID lookups never share a thread with Subscribers' sockets), owns one client and
//! is reached through the instrumented, bounded mailbox every actor uses. Everything else
//! (caches, singleflight, the in-flight semaphore, Postgres) is `Send + Sync` and lives in the
//! cloneable [`Resolver`] handle, so a ValidatorShard's async task, the HostSupervisor and
//! tests all call the same `async fn`s.
//!
//! The lessons it prevents:
//! - 10 (unbounded resolver futures): at most `max_in_flight` requests run (a semaphore held
//!   across the mailbox send, so a fetcher's mailbox never holds more than that), and one
//!   lookup per DID runs at a time: concurrent callers join it (moka's `try_get_with`).
//! - 17 (pooled keep-alive connections that went bad): a fetcher whose request failed at the
//!   transport level (connect, timeout, broken body) rebuilds its client, dropping its
//!   connection pool; every outcome is counted (`rookery_resolver_outcomes_total{outcome}`).
//!   Transient failures are typed apart from "the DID is gone" and are never cached, so a
//!   failing resolver makes the shard hold and retry, it does not reject good events.
//! - 19 (validation skipped on a miss): callers await the singleflight resolution; nothing
//!   here answers "unknown" for a DID that is merely slow.
//!
//! Forced re-resolution ([`Resolver::resolve_fresh`], used after a host mismatch or a
//! signature failure, PROTOCOL.md §6 and §10) is allowed once per DID per `fresh_interval`.
//! Any upstream can send events with a wrong host or a bad signature for any DID; without the
//! limit a hostile host could turn each such event into a PLC request and get the relay
//! rate-limited by the directory. A genuine key rotation or migration is still picked up
//! within one interval; a rate-limited call answers from the cache (often the entry the
//! previous fresh lookup just stored).
//!
//! Postgres is a second level, never a dependency: a read on a memory miss, an upsert after a
//! network answer, a delete on purge, each bounded by `pg_timeout`. After a failure the second
//! level is skipped (counted `pg_skipped`) for `pg_retry_after`, so a dead database costs one
//! timeout per interval, not one per lookup.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use awc::error::{PayloadError, SendRequestError};
use bytes::Bytes;
use moka::Expiry;
use moka::future::Cache;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::Semaphore;

use super::obs::{ActorMetrics, ActorObs, InstrumentedAddr, ObservedMessage};
use crate::atproto::did_doc::{MAX_DID_DOC_BYTES, PdsEndpoint, parse_did_document};
use crate::atproto::keys::PublicKey;
use crate::atproto::syntax::validate_account_did;
use crate::store::postgres::Db;

// ---------------------------------------------------------------------------------------------
// Settings, results, errors

/// Resolver settings (the `--plc-url` and friends end up here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// PLC directory base, `https://plc.directory` or `http://…` for a local directory.
    pub plc_url: String,
    /// Most HTTP requests in flight, over all fetchers.
    pub max_in_flight: usize,
    /// Fetcher actors, one arbiter (thread) each.
    pub fetchers: usize,
    /// Whole-request timeout (connect, headers and body).
    pub request_timeout: Duration,
    pub positive_ttl: Duration,
    /// TTL of "not found", "tombstoned" and "broken" answers.
    pub negative_ttl: Duration,
    /// Memory cache bound, in entries (positive and negative together).
    pub max_entries: u64,
    /// A DID is re-resolved by force at most once per this interval.
    pub fresh_interval: Duration,
    /// Bound on each second-level (Postgres) statement.
    pub pg_timeout: Duration,
    /// How long the second level is skipped after it failed.
    pub pg_retry_after: Duration,
    /// Resolve `did:web:localhost[%3A<port>]` over plain HTTP. Development and tests only: in
    /// production it would let any upstream make the relay request its own loopback services.
    pub allow_localhost_did_web: bool,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        ResolverSettings {
            plc_url: "https://plc.directory".to_string(),
            max_in_flight: 32,
            fetchers: 2,
            request_timeout: Duration::from_secs(10),
            // Changes arrive as `#identity` (purge) or show up as a host mismatch or a bad
            // signature (fresh lookup), so the TTL only bounds staleness nobody signalled.
            positive_ttl: Duration::from_secs(60 * 60),
            negative_ttl: Duration::from_secs(5 * 60),
            max_entries: 1_000_000,
            fresh_interval: Duration::from_secs(30),
            pg_timeout: Duration::from_secs(2),
            pg_retry_after: Duration::from_secs(10),
            allow_localhost_did_web: false,
        }
    }
}

/// A usable identity: it has a signing key and a PDS (a document without them is
/// [`ResolveError::Broken`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedIdentity {
    pub did: String,
    /// The handle the document claims (`alsoKnownAs`), lower case, unverified.
    pub handle: Option<String>,
    pub signing_key: PublicKey,
    /// Compare hosts with `pds.host` (it keeps the port); `hostname()` drops it.
    pub pds: PdsEndpoint,
    /// When the document was fetched (from the network, possibly by an earlier process).
    pub resolved_at: SystemTime,
}

/// Result of [`Resolver::check_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCheck {
    /// The upstream is the DID's current PDS (possibly after one re-resolution).
    Authoritative(Arc<ResolvedIdentity>),
    /// Still a different PDS after re-resolving: drop the event.
    NotAuthoritative(Arc<ResolvedIdentity>),
}

/// Why a lookup failed. Transient errors are the only kind worth retrying soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Not a valid account DID; no request was made.
    #[error("invalid DID: {0}")]
    InvalidDid(&'static str),
    /// The directory or host answered 404.
    #[error("DID not found")]
    NotFound,
    /// The directory answered 410.
    #[error("DID tombstoned")]
    Tombstoned,
    /// The document is unusable (no key, no PDS, malformed); the reason is a metric label.
    #[error("identity unusable: {0}")]
    Broken(&'static str),
    /// Network trouble or a server error: not cached, retry with backoff.
    #[error("resolution failed: {0}")]
    Transient(Transient),
}

impl ResolveError {
    /// True when a retry later may succeed (hold the DID's events, PROTOCOL.md §10).
    pub fn is_transient(&self) -> bool {
        matches!(self, ResolveError::Transient(_))
    }

    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::InvalidDid(_) => "invalid_did",
            ResolveError::NotFound => "not_found",
            ResolveError::Tombstoned => "tombstoned",
            ResolveError::Broken(_) => "broken",
            ResolveError::Transient(t) => t.label(),
        }
    }
}

/// A failure that says nothing about the DID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Transient {
    #[error("timed out")]
    Timeout,
    #[error("connection failed")]
    Connect,
    #[error("transport error")]
    Transport,
    #[error("body could not be read")]
    Body,
    #[error("unexpected HTTP status {0}")]
    Status(u16),
    /// The fetchers are gone (shutdown).
    #[error("resolver unavailable")]
    Unavailable,
}

impl Transient {
    /// The `outcome` label.
    pub fn label(&self) -> &'static str {
        match self {
            Transient::Timeout => "error_timeout",
            Transient::Connect => "error_connect",
            Transient::Transport => "error_transport",
            Transient::Body => "error_body",
            Transient::Status(_) => "error_status",
            Transient::Unavailable => "error_unavailable",
        }
    }

    /// A client whose request failed this way may hold a bad connection: rebuild it.
    fn recycles_client(&self) -> bool {
        matches!(
            self,
            Transient::Timeout | Transient::Connect | Transient::Transport | Transient::Body
        )
    }
}

/// Broken-identity reasons that can come back from the second level (anything else read
/// there becomes `did-doc-invalid`). The `did-doc-*` ones are `DidDocError::reason`s.
const BROKEN_REASONS: [&str; 10] = [
    "no-signing-key",
    "no-pds",
    "did-doc-too-large",
    "did-doc-not-json",
    "did-doc-bad-structure",
    "did-doc-bad-did",
    "did-doc-wrong-id",
    "did-doc-list-too-long",
    "did-doc-bad-key",
    "did-doc-bad-pds-endpoint",
];

// ---------------------------------------------------------------------------------------------
// Observable state and metrics

/// What the resolver is doing, for tests, `/metrics` and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResolverState {
    pub in_flight: usize,
    /// Highest `in_flight` seen since start.
    pub peak_in_flight: usize,
    pub max_in_flight: usize,
    pub positive_entries: u64,
    pub negative_entries: u64,
    /// True while the second level is being skipped after a failure.
    pub pg_skipped: bool,
}

/// `rookery_resolver_outcomes_total{outcome}` and `rookery_resolver_in_flight`.
#[derive(Clone, Debug)]
pub struct ResolverMetrics {
    outcomes: IntCounterVec,
    in_flight: IntGauge,
}

impl ResolverMetrics {
    pub fn register(registry: &Registry) -> Result<ResolverMetrics, prometheus::Error> {
        let metrics = ResolverMetrics {
            outcomes: IntCounterVec::new(
                Opts::new(
                    "rookery_resolver_outcomes_total",
                    "DID resolution steps and outcomes (hit, miss, pg_hit, resolved, not_found, \
                     error_*, singleflight_joined, fresh_rate_limited, ...)",
                ),
                &["outcome"],
            )?,
            in_flight: IntGauge::new(
                "rookery_resolver_in_flight",
                "DID document requests in flight",
            )?,
        };
        registry.register(Box::new(metrics.outcomes.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        Ok(metrics)
    }

    fn count(&self, outcome: &'static str) {
        self.outcomes.with_label_values(&[outcome]).inc();
    }

    /// How often `outcome` was counted.
    pub fn outcome(&self, outcome: &str) -> u64 {
        self.outcomes.with_label_values(&[outcome]).get()
    }
}

// ---------------------------------------------------------------------------------------------
// The fetcher actor

/// GET one DID document URL.
#[derive(Debug, Message)]
#[rtype(result = "Result<Fetched, Transient>")]
pub struct Fetch {
    pub url: String,
}

impl ObservedMessage for Fetch {
    const NAME: &'static str = "fetch";
}

/// What a host answered, when it answered something meaningful.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Document(Bytes),
    NotFound,
    Gone,
    /// The body exceeded [`MAX_DID_DOC_BYTES`].
    TooLarge,
}

/// Owns one awc client on its arbiter.
pub struct Fetcher {
    obs: ActorObs,
    metrics: ResolverMetrics,
    client: awc::Client,
    /// Bumped on each rebuild, so failures of requests sent on an older client do not
    /// rebuild the new one again.
    generation: u64,
    timeout: Duration,
    capacity: usize,
}

impl Fetcher {
    pub const NAME: &'static str = "resolver_fetcher";

    fn recycle(&mut self) {
        self.client = build_client(self.timeout);
        self.generation += 1;
        self.metrics.count("client_recycled");
    }
}

impl Actor for Fetcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The resolver's semaphore allows at most `max_in_flight` sends over all fetchers,
        // so this capacity is never the limiting bound; it only keeps actix's soft bound
        // from being lower than the real one.
        ctx.set_mailbox_capacity(self.capacity);
    }
}

impl Handler<Fetch> for Fetcher {
    type Result = ResponseActFuture<Self, Result<Fetched, Transient>>;

    fn handle(&mut self, msg: Fetch, _: &mut Context<Self>) -> Self::Result {
        // The guard travels with the request, so handler time is request latency.
        let guard = self.obs.enter(Fetch::NAME);
        let client = self.client.clone();
        let generation = self.generation;
        let timeout = self.timeout;
        let request = async move {
            let result = fetch(&client, &msg.url, timeout).await;
            drop(guard);
            result
        };
        Box::pin(request.into_actor(self).map(move |result, act, _| {
            if let Err(e) = &result
                && e.recycles_client()
                && act.generation == generation
            {
                act.recycle();
            }
            result
        }))
    }
}

fn build_client(timeout: Duration) -> awc::Client {
    awc::Client::builder()
        .timeout(timeout)
        // A redirect would let a did:web host point the relay anywhere; PLC never redirects.
        .disable_redirects()
        .finish()
}

async fn fetch(client: &awc::Client, url: &str, timeout: Duration) -> Result<Fetched, Transient> {
    let exchange = async {
        let mut response = client
            .get(url)
            .insert_header((
                awc::http::header::ACCEPT,
                "application/did+ld+json, application/json",
            ))
            .send()
            .await
            .map_err(|e| match e {
                SendRequestError::Timeout => Transient::Timeout,
                SendRequestError::Connect(_) => Transient::Connect,
                _ => Transient::Transport,
            })?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(Fetched::NotFound),
            410 => return Ok(Fetched::Gone),
            // Anything else (5xx, 429, a redirect) says nothing about the DID.
            other => return Err(Transient::Status(other)),
        }
        match response.body().limit(MAX_DID_DOC_BYTES).await {
            Ok(body) => Ok(Fetched::Document(body)),
            Err(PayloadError::Overflow) => Ok(Fetched::TooLarge),
            Err(_) => Err(Transient::Body),
        }
    };
    actix_rt::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(Transient::Timeout))
}

// ---------------------------------------------------------------------------------------------
// The handle

/// A cached answer: an identity or a negative, with its own TTL (shorter for negatives, and
/// what is left of `expires_at` for second-level hits).
#[derive(Debug, Clone)]
struct Cached {
    answer: Result<Arc<ResolvedIdentity>, ResolveError>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Cached> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, value: &Cached, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

#[derive(Default)]
struct EntryCounts {
    positive: AtomicI64,
    negative: AtomicI64,
}

impl EntryCounts {
    fn slot(&self, cached: &Cached) -> &AtomicI64 {
        if cached.answer.is_ok() {
            &self.positive
        } else {
            &self.negative
        }
    }
}

struct Inner {
    settings: ResolverSettings,
    metrics: ResolverMetrics,
    cache: Cache<String, Cached>,
    entries: Arc<EntryCounts>,
    /// DIDs re-resolved by force within `fresh_interval`.
    fresh: Cache<String, ()>,
    fetchers: Vec<InstrumentedAddr<Fetcher>>,
    next_fetcher: AtomicUsize,
    permits: Semaphore,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    db: Option<Db>,
    pg_down_until: Mutex<Option<Instant>>,
    arbiters: Vec<Arbiter>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// Cloneable, `Send + Sync` handle to the resolver pool.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("plc_url", &self.inner.settings.plc_url)
            .field("in_flight", &self.inner.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why the resolver could not start.
#[derive(Debug, thiserror::Error)]
pub enum ResolverStartError {
    #[error("--plc-url must be an http(s) URL without a query: {0}")]
    BadPlcUrl(String),
    #[error("registering resolver metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Resolver {
    /// Starts the fetchers, each on a new arbiter. Must be called inside an actix System.
    /// `db` is the second level; `None` runs from memory and the network only.
    pub fn start(
        mut settings: ResolverSettings,
        db: Option<Db>,
        actor_metrics: &ActorMetrics,
        registry: &Registry,
    ) -> Result<Resolver, ResolverStartError> {
        settings.plc_url = normalize_plc_url(&settings.plc_url)?;
        settings.max_in_flight = settings.max_in_flight.max(1);
        settings.fetchers = settings.fetchers.max(1);
        install_crypto_provider();
        let metrics = ResolverMetrics::register(registry)?;

        let mut arbiters = Vec::with_capacity(settings.fetchers);
        let mut fetchers = Vec::with_capacity(settings.fetchers);
        for _ in 0..settings.fetchers {
            let obs = actor_metrics.actor(Fetcher::NAME, settings.max_in_flight);
            let arbiter = Arbiter::new();
            let (actor_obs, fetcher_metrics) = (obs.clone(), metrics.clone());
            let (timeout, capacity) = (settings.request_timeout, settings.max_in_flight);
            // The client is built on the fetcher's own arbiter: it is `!Send`.
            let addr = Fetcher::start_in_arbiter(&arbiter.handle(), move |_| Fetcher {
                obs: actor_obs,
                metrics: fetcher_metrics,
                client: build_client(timeout),
                generation: 0,
                timeout,
                capacity,
            });
            fetchers.push(InstrumentedAddr::new(addr, obs));
            arbiters.push(arbiter);
        }

        let entries = Arc::new(EntryCounts::default());
        let listener_entries = Arc::clone(&entries);
        let cache = Cache::builder()
            .max_capacity(settings.max_entries)
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_, value: Cached, _| {
                listener_entries
                    .slot(&value)
                    .fetch_sub(1, Ordering::Relaxed);
            })
            .build();
        let fresh = Cache::builder()
            .max_capacity(settings.max_entries)
            .time_to_live(settings.fresh_interval)
            .build();

        Ok(Resolver {
            inner: Arc::new(Inner {
                permits: Semaphore::new(settings.max_in_flight),
                settings,
                metrics,
                cache,
                entries,
                fresh,
                fetchers,
                next_fetcher: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                peak_in_flight: AtomicUsize::new(0),
                db,
                pg_down_until: Mutex::new(None),
                arbiters,
            }),
        })
    }

    /// The metrics this resolver counts into.
    pub fn metrics(&self) -> &ResolverMetrics {
        &self.inner.metrics
    }

    /// The DID's identity: memory cache, then `did_cache`, then the network (one lookup per
    /// DID at a time; concurrent callers share it).
    pub async fn resolve(&self, did: &str) -> Result<Arc<ResolvedIdentity>, ResolveError> {
        self.checked(did)?;
        if let Some(cached) = self.inner.cache.get(did).await {
            self.count(if cached.answer.is_ok() {
                "hit"
            } else {
                "negative_hit"
            });
            return cached.answer;
        }
        self.count("miss");
        self.load(did, false).await
    }

    /// The DID's identity if the memory cache has an answer (positive or negative), without
    /// any I/O: a ValidatorShard decides at once on a hit and holds the event on a miss
    /// while [`Resolver::resolve`] runs elsewhere, so one slow lookup never stalls a shard.
    pub async fn cached(&self, did: &str) -> Option<Result<Arc<ResolvedIdentity>, ResolveError>> {
        let cached = self.inner.cache.get(did).await?;
        self.count(if cached.answer.is_ok() {
            "hit"
        } else {
            "negative_hit"
        });
        Some(cached.answer)
    }

    /// Purges the DID and resolves it from the network (skipping `did_cache`): the
    /// "re-resolve once" after a host mismatch or a signature failure. At most once per DID
    /// per `fresh_interval`; a call inside the interval answers like [`Resolver::resolve`]
    /// (counted `fresh_rate_limited`).
    pub async fn resolve_fresh(&self, did: &str) -> Result<Arc<ResolvedIdentity>, ResolveError> {
        self.checked(did)?;
        let slot = self.inner.fresh.entry(did.to_string()).or_insert(()).await;
        if !slot.is_fresh() {
            self.count("fresh_rate_limited");
            return self.resolve(did).await;
        }
        self.count("fresh");
        self.inner.cache.invalidate(did).await;
        self.load(did, true).await
    }

    /// [`Resolver::purge`], then a resolution from the network that skips `did_cache` (even
    /// when the purge could not delete its row): what an `#identity` asks for. Like `purge`
    /// it is not rate-limited, and it does not spend the DID's one forced re-resolution per
    /// `fresh_interval` ([`Resolver::resolve_fresh`]), which a signature failure or a host
    /// mismatch right after the `#identity` still needs.
    pub async fn purge_and_resolve(
        &self,
        did: &str,
    ) -> Result<Arc<ResolvedIdentity>, ResolveError> {
        self.purge(did).await;
        self.checked(did)?;
        self.count("miss");
        self.load(did, true).await
    }

    /// Forgets the DID in memory and in `did_cache` (on `#identity`). Not rate-limited: any
    /// upstream may send `#identity` for any DID, but those frames are bounded by the
    /// Subscriber's per-host rate limits, and the lookups they cause still go through
    /// singleflight and the in-flight cap. A lookup already in flight when the purge lands
    /// still stores its answer.
    pub async fn purge(&self, did: &str) {
        self.count("purged");
        self.inner.cache.invalidate(did).await;
        if self.checked(did).is_ok()
            && let Some(db) = self.second_level()
        {
            let deleted = self
                .pg(async {
                    let client = db.client().await.map_err(drop)?;
                    client
                        .execute("DELETE FROM did_cache WHERE did = $1", &[&did])
                        .await
                        .map_err(drop)
                })
                .await;
            if deleted.is_none() {
                self.count("pg_error");
            }
        }
    }

    /// Host authority (PROTOCOL.md §6): is `upstream_host` (`host[:port]`) the DID's PDS? On
    /// a mismatch the DID is re-resolved once (rate-limited) and checked again.
    pub async fn check_host(
        &self,
        did: &str,
        upstream_host: &str,
    ) -> Result<HostCheck, ResolveError> {
        let identity = self.resolve(did).await?;
        if identity.pds.host.eq_ignore_ascii_case(upstream_host) {
            return Ok(HostCheck::Authoritative(identity));
        }
        self.count("host_mismatch");
        let identity = self.resolve_fresh(did).await?;
        Ok(if identity.pds.host.eq_ignore_ascii_case(upstream_host) {
            HostCheck::Authoritative(identity)
        } else {
            HostCheck::NotAuthoritative(identity)
        })
    }

    /// A snapshot of the observable state (runs the caches' pending maintenance first, so
    /// expired and evicted entries are no longer counted).
    pub async fn state(&self) -> ResolverState {
        self.inner.cache.run_pending_tasks().await;
        let count = |a: &AtomicI64| u64::try_from(a.load(Ordering::Relaxed)).unwrap_or(0);
        ResolverState {
            in_flight: self.inner.in_flight.load(Ordering::Relaxed),
            peak_in_flight: self.inner.peak_in_flight.load(Ordering::Relaxed),
            max_in_flight: self.inner.settings.max_in_flight,
            positive_entries: count(&self.inner.entries.positive),
            negative_entries: count(&self.inner.entries.negative),
            pg_skipped: self.inner.db.is_some() && self.second_level().is_none(),
        }
    }

    fn count(&self, outcome: &'static str) {
        self.inner.metrics.count(outcome);
    }

    fn checked(&self, did: &str) -> Result<(), ResolveError> {
        document_url(
            &self.inner.settings.plc_url,
            did,
            self.inner.settings.allow_localhost_did_web,
        )
        .map(drop)
        .inspect_err(|_| self.count("invalid_did"))
    }

    /// The singleflight step: one caller runs `lookup`, the others wait for its answer.
    /// Transient errors are handed to every waiter but not cached.
    async fn load(&self, did: &str, skip_pg: bool) -> Result<Arc<ResolvedIdentity>, ResolveError> {
        let led = AtomicBool::new(false);
        let lookup = async {
            led.store(true, Ordering::Relaxed);
            let cached = self.lookup(did, skip_pg).await?;
            self.inner
                .entries
                .slot(&cached)
                .fetch_add(1, Ordering::Relaxed);
            Ok::<_, ResolveError>(cached)
        };
        let result = self.inner.cache.try_get_with(did.to_string(), lookup).await;
        if !led.load(Ordering::Relaxed) {
            self.count("singleflight_joined");
        }
        match result {
            Ok(cached) => cached.answer,
            Err(error) => Err(*error),
        }
    }

    /// Second level, then network; stores network answers in the second level.
    async fn lookup(&self, did: &str, skip_pg: bool) -> Result<Cached, ResolveError> {
        if !skip_pg && let Some(cached) = self.pg_read(did).await {
            return Ok(cached);
        }
        let (answer, document) = self.fetch_network(did).await?;
        let ttl = match answer {
            Ok(_) => self.inner.settings.positive_ttl,
            Err(_) => self.inner.settings.negative_ttl,
        };
        self.pg_write(did, &answer, document.as_ref(), ttl).await;
        Ok(Cached { answer, ttl })
    }

    /// One request through a fetcher, holding an in-flight permit. `Ok` carries the DID's
    /// answer (positive or negative) and the document bytes when there were any.
    async fn fetch_network(
        &self,
        did: &str,
    ) -> Result<(Result<Arc<ResolvedIdentity>, ResolveError>, Option<Bytes>), ResolveError> {
        let settings = &self.inner.settings;
        let url = document_url(&settings.plc_url, did, settings.allow_localhost_did_web)?;
        let fetcher = self.pick_fetcher()?;
        let fetched = {
            let _permit = self
                .inner
                .permits
                .acquire()
                .await
                .map_err(|_| ResolveError::Transient(Transient::Unavailable))?;
            let _in_flight = InFlight::enter(&self.inner);
            fetcher.send(Fetch { url }).await
        };
        let fetched = match fetched {
            Ok(Ok(fetched)) => fetched,
            Ok(Err(transient)) => {
                self.count(transient.label());
                return Err(ResolveError::Transient(transient));
            }
            Err(_) => {
                self.count(Transient::Unavailable.label());
                return Err(ResolveError::Transient(Transient::Unavailable));
            }
        };
        let (answer, document) = match fetched {
            Fetched::Document(body) => (interpret(did, &body, SystemTime::now()), Some(body)),
            Fetched::NotFound => (Err(ResolveError::NotFound), None),
            Fetched::Gone => (Err(ResolveError::Tombstoned), None),
            Fetched::TooLarge => (Err(ResolveError::Broken("did-doc-too-large")), None),
        };
        self.count(match &answer {
            Ok(_) => "resolved",
            Err(e) => e.reason(),
        });
        Ok((answer, document))
    }

    fn pick_fetcher(&self) -> Result<&InstrumentedAddr<Fetcher>, ResolveError> {
        let fetchers = &self.inner.fetchers;
        let n = self.inner.next_fetcher.fetch_add(1, Ordering::Relaxed);
        fetchers
            .get(n % fetchers.len().max(1))
            .ok_or(ResolveError::Transient(Transient::Unavailable))
    }

    /// The database, unless there is none or it failed less than `pg_retry_after` ago.
    fn second_level(&self) -> Option<&Db> {
        let db = self.inner.db.as_ref()?;
        let down_until = *self
            .inner
            .pg_down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match down_until {
            Some(until) if Instant::now() < until => None,
            _ => Some(db),
        }
    }

    /// Runs one bounded second-level operation; `None` (and the level skipped for a while)
    /// when it failed or timed out.
    async fn pg<T>(&self, op: impl Future<Output = Result<T, ()>>) -> Option<T> {
        let result = tokio::time::timeout(self.inner.settings.pg_timeout, op).await;
        let mut down_until = self
            .inner
            .pg_down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(Ok(value)) => {
                *down_until = None;
                Some(value)
            }
            _ => {
                *down_until = Some(Instant::now() + self.inner.settings.pg_retry_after);
                None
            }
        }
    }

    async fn pg_read(&self, did: &str) -> Option<Cached> {
        let Some(db) = self.second_level() else {
            if self.inner.db.is_some() {
                self.count("pg_skipped");
            }
            return None;
        };
        let row = self
            .pg(async {
                let client = db.client().await.map_err(drop)?;
                client
                    .query_opt(
                        "SELECT document::text, negative, \
                                EXTRACT(EPOCH FROM resolved_at)::float8, \
                                EXTRACT(EPOCH FROM (expires_at - now()))::float8 \
                         FROM did_cache WHERE did = $1 AND expires_at > now()",
                        &[&did],
                    )
                    .await
                    .map_err(drop)
            })
            .await;
        let Some(row) = row else {
            self.count("pg_error");
            return None;
        };
        let Some(row) = row else {
            self.count("pg_miss");
            return None;
        };
        let document: Option<String> = row.try_get(0).ok()?;
        let negative: bool = row.try_get(1).ok()?;
        let resolved_at: f64 = row.try_get(2).ok()?;
        let remaining: f64 = row.try_get(3).ok()?;
        let resolved_at = UNIX_EPOCH + Duration::try_from_secs_f64(resolved_at.max(0.0)).ok()?;
        let cap = if negative {
            self.inner.settings.negative_ttl
        } else {
            self.inner.settings.positive_ttl
        };
        let ttl = Duration::try_from_secs_f64(remaining.max(0.0))
            .ok()?
            .min(cap);
        let answer = if negative {
            Err(negative_from_marker(document.as_deref()))
        } else {
            // Parsed again by the one parser: a row is no more trusted than the network.
            let identity = interpret(did, document?.as_bytes(), resolved_at);
            if identity.is_err() {
                self.count("pg_invalid");
                return None;
            }
            identity
        };
        self.count("pg_hit");
        Some(Cached { answer, ttl })
    }

    async fn pg_write(
        &self,
        did: &str,
        answer: &Result<Arc<ResolvedIdentity>, ResolveError>,
        document: Option<&Bytes>,
        ttl: Duration,
    ) {
        let Some(db) = self.second_level() else {
            if self.inner.db.is_some() {
                self.count("pg_skipped");
            }
            return;
        };
        let (document, key, host, endpoint, handle, negative) = match answer {
            Ok(id) => (
                document.and_then(|d| std::str::from_utf8(d).ok().map(str::to_string)),
                Some(id.signing_key.to_multikey()),
                Some(id.pds.host.clone()),
                Some(id.pds.url()),
                id.handle.clone(),
                false,
            ),
            Err(e) => (Some(negative_marker(e)), None, None, None, None, true),
        };
        if !negative && document.is_none() {
            return;
        }
        let ttl_secs = ttl.as_secs_f64();
        let written = self
            .pg(async {
                let client = db.client().await.map_err(drop)?;
                client
                    .execute(
                        "INSERT INTO did_cache (did, document, signing_key, pds_host, \
                             pds_endpoint, handle, negative, resolved_at, expires_at) \
                         VALUES ($1, $2::text::jsonb, $3, $4, $5, $6, $7, now(), \
                             now() + make_interval(secs => $8)) \
                         ON CONFLICT (did) DO UPDATE SET document = EXCLUDED.document, \
                             signing_key = EXCLUDED.signing_key, pds_host = EXCLUDED.pds_host, \
                             pds_endpoint = EXCLUDED.pds_endpoint, handle = EXCLUDED.handle, \
                             negative = EXCLUDED.negative, resolved_at = EXCLUDED.resolved_at, \
                             expires_at = EXCLUDED.expires_at",
                        &[
                            &did, &document, &key, &host, &endpoint, &handle, &negative, &ttl_secs,
                        ],
                    )
                    .await
                    .map_err(drop)
            })
            .await;
        if written.is_none() {
            self.count("pg_error");
        }
    }
}

/// Counts a request in flight while alive (also when the caller's future is dropped).
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn enter(inner: &'a Inner) -> InFlight<'a> {
        let now = inner.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        inner.peak_in_flight.fetch_max(now, Ordering::AcqRel);
        inner.metrics.in_flight.inc();
        InFlight(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.in_flight.dec();
    }
}

// ---------------------------------------------------------------------------------------------
// Pure helpers

/// The URL of `did`'s document: `<plc_url>/<did>` for did:plc, `https://<host>/.well-known/
/// did.json` for did:web (`http://localhost[:port]` only when `allow_localhost`). Validates the
/// DID first: no URL is ever built from an invalid one.
pub fn document_url(
    plc_url: &str,
    did: &str,
    allow_localhost: bool,
) -> Result<String, ResolveError> {
    validate_account_did(did).map_err(|e| ResolveError::InvalidDid(e.detail()))?;
    if did.starts_with("did:plc:") {
        return Ok(format!("{plc_url}/{did}"));
    }
    let Some(host) = did.strip_prefix("did:web:") else {
        return Err(ResolveError::InvalidDid("unsupported DID method"));
    };
    let local = host == "localhost" || host.starts_with("localhost%3A");
    if local {
        if !allow_localhost {
            return Err(ResolveError::InvalidDid("did:web:localhost is not allowed"));
        }
        let host = host.replacen("%3A", ":", 1);
        return Ok(format!("http://{host}/.well-known/did.json"));
    }
    Ok(format!(
        "https://{}/.well-known/did.json",
        host.to_ascii_lowercase()
    ))
}

/// `--plc-url` as a base: http(s), no query or fragment, no trailing `/`.
fn normalize_plc_url(raw: &str) -> Result<String, ResolverStartError> {
    let bad = || ResolverStartError::BadPlcUrl(raw.to_string());
    let url = url::Url::parse(raw).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(bad());
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// A fetched document as an answer: usable identity, or why not.
fn interpret(
    did: &str,
    body: &[u8],
    resolved_at: SystemTime,
) -> Result<Arc<ResolvedIdentity>, ResolveError> {
    let identity = parse_did_document(did, body).map_err(|e| ResolveError::Broken(e.reason()))?;
    let signing_key = identity
        .signing_key
        .ok_or(ResolveError::Broken("no-signing-key"))?;
    let pds = identity.pds.ok_or(ResolveError::Broken("no-pds"))?;
    Ok(Arc::new(ResolvedIdentity {
        did: identity.did,
        handle: identity.handle,
        signing_key,
        pds,
        resolved_at,
    }))
}

/// How a negative answer is stored in `did_cache.document` (the table has no column for it).
fn negative_marker(error: &ResolveError) -> String {
    let reason = match error {
        ResolveError::Broken(reason) => reason,
        other => other.reason(),
    };
    serde_json::json!({ "negative": reason }).to_string()
}

fn negative_from_marker(document: Option<&str>) -> ResolveError {
    let reason = document
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .and_then(|v| {
            v.get("negative")
                .and_then(|r| r.as_str())
                .map(str::to_string)
        });
    match reason.as_deref() {
        Some("not_found") | None => ResolveError::NotFound,
        Some("tombstoned") => ResolveError::Tombstoned,
        Some(reason) => ResolveError::Broken(
            BROKEN_REASONS
                .iter()
                .find(|known| **known == reason)
                .copied()
                .unwrap_or("did-doc-invalid"),
        ),
    }
}

/// rustls needs a process-wide crypto provider before awc's first TLS connection (every awc
/// client of the relay calls this first; idempotent).
#[allow(deprecated)] // ring is the crate's provider; see `sim::install_crypto_provider`.
pub fn install_crypto_provider() {
    // An error means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLC: &str = "http://127.0.0.1:2582";
    const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";

    #[test]
    fn document_urls() {
        let cases: [(&str, bool, Result<&str, ()>); 10] = [
            (
                DID,
                false,
                Ok("http://127.0.0.1:2582/did:plc:ewvi7nxzyoun6zhxrhs64oiz"),
            ),
            (
                "did:web:example.com",
                false,
                Ok("https://example.com/.well-known/did.json"),
            ),
            (
                "did:web:Pds.Example.COM",
                false,
                Ok("https://pds.example.com/.well-known/did.json"),
            ),
            (
                "did:web:localhost%3A2583",
                true,
                Ok("http://localhost:2583/.well-known/did.json"),
            ),
            (
                "did:web:localhost",
                true,
                Ok("http://localhost/.well-known/did.json"),
            ),
            ("did:web:localhost%3A2583", false, Err(())),
            ("did:web:example.com%3A443", true, Err(())),
            ("did:web:example.com:path", true, Err(())),
            ("did:plc:EWVI7NXZYOUN6ZHXRHS64OIZ", false, Err(())),
            (
                "did:key:zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF",
                true,
                Err(()),
            ),
        ];
        for (did, localhost, expected) in cases {
            let got = document_url(PLC, did, localhost);
            match expected {
                Ok(url) => assert_eq!(got.as_deref(), Ok(url), "{did}"),
                Err(()) => assert!(
                    matches!(got, Err(ResolveError::InvalidDid(_))),
                    "{did}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn rejected_dids_never_become_urls() {
        for did in [
            "",
            "did:plc:",
            "did:plc:short",
            "did:plc:ewvi7nxzyoun6zhxrhs64oiz/../x",
            "did:plc:ewvi7nxzyoun6zhxrhs64oi?",
            "did:web:exa mple.com",
            "did:web:example.com%2Fpath",
            "did:web:127.0.0.1",
            "did:web:localhost%3A",
            "did:web:localhost%3Aabc",
            "https://example.com",
        ] {
            assert!(
                matches!(
                    document_url(PLC, did, true),
                    Err(ResolveError::InvalidDid(_))
                ),
                "{did}"
            );
        }
    }

    #[test]
    fn plc_urls_are_normalized_and_checked() {
        assert_eq!(
            normalize_plc_url("https://plc.directory/").ok().as_deref(),
            Some("https://plc.directory")
        );
        assert_eq!(
            normalize_plc_url("http://localhost:2582").ok().as_deref(),
            Some("http://localhost:2582")
        );
        for bad in [
            "ftp://plc",
            "plc.directory",
            "https://plc.directory/?x=1",
            "",
        ] {
            assert!(normalize_plc_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn negative_markers_round_trip() {
        for error in [
            ResolveError::NotFound,
            ResolveError::Tombstoned,
            ResolveError::Broken("no-pds"),
            ResolveError::Broken("did-doc-wrong-id"),
        ] {
            assert_eq!(negative_from_marker(Some(&negative_marker(&error))), error);
        }
        assert_eq!(
            negative_from_marker(Some(r#"{"negative":"something-new"}"#)),
            ResolveError::Broken("did-doc-invalid")
        );
        assert_eq!(negative_from_marker(None), ResolveError::NotFound);
    }

    #[test]
    fn documents_without_key_or_pds_are_broken() {
        let doc = serde_json::json!({ "id": DID, "alsoKnownAs": ["at://alice.test"] });
        assert_eq!(
            interpret(DID, doc.to_string().as_bytes(), SystemTime::now()),
            Err(ResolveError::Broken("no-signing-key"))
        );
        let wrong = serde_json::json!({ "id": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa" });
        assert_eq!(
            interpret(DID, wrong.to_string().as_bytes(), SystemTime::now()),
            Err(ResolveError::Broken("did-doc-wrong-id"))
        );
    }

    #[test]
    fn only_transport_failures_recycle_the_client() {
        assert!(Transient::Timeout.recycles_client());
        assert!(Transient::Connect.recycles_client());
        assert!(Transient::Body.recycles_client());
        assert!(!Transient::Status(503).recycles_client());
        assert!(!Transient::Unavailable.recycles_client());
        assert!(ResolveError::Transient(Transient::Status(503)).is_transient());
        assert!(!ResolveError::NotFound.is_transient());
    }

    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}

    #[actix_rt::test]
    async fn the_handle_and_its_futures_cross_threads() {
        let registry = Registry::new();
        let metrics = ActorMetrics::register(&registry).expect("metrics");
        let resolver =
            Resolver::start(ResolverSettings::default(), None, &metrics, &registry).expect("start");
        assert_send_sync(&resolver);
        assert_send(&resolver.resolve(DID));
        assert_send(&resolver.resolve_fresh(DID));
        assert_send(&resolver.purge(DID));
        assert_send(&resolver.check_host(DID, "localhost:1"));
    }
}
