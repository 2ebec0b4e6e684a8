//! A relay already running (`rookery-fleet bench --relay-url`), whatever its implementation:
//! the benches point the same fleet, checker and probe at it instead of spawning
//! `rookery serve`, so another relay's figures and rookery's come from the same work.
//!
//! Nothing of its process is known: figures that need it (RSS, CPU) are `None`, and it is
//! never restarted. Its firehose is read over plain `ws://` (an `http://` URL); the fleet's
//! hosts are added through the reference relay's admin requestCrawl (with an admin URL and
//! password, then their account limit raised with `changeLimits`, as `prepare_database`
//! does for a spawned relay) or else the public `com.atproto.sync.requestCrawl`. Hosts
//! connected come from a `--connected-path` when given, else from the fleet's own view
//! ([`Fleet::connected`]).
//!
//! The relay must resolve the fleet's `did:plc`s at the fleet's PLC directory (started on a
//! fixed port for that), and for `wss` trust the fleet's CA file; the fleet's DIDs repeat
//! from run to run, so each run wants a relay with an empty state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{BenchError, HOST_ACCOUNT_LIMIT, PROGRESS_PERIOD, REQUEST_TIMEOUT, Transport};
use crate::sim::fleet::Fleet;
use crate::sim::probe::{DEFAULT_HEALTH_PATH, Probe, ProbeSettings};

/// Host submissions in flight at once.
const ADD_CONCURRENCY: usize = 32;
/// Timeout of one submission (the relay may ask the host's describeServer first).
const ADD_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries of one requestCrawl the relay answers 503 or 429 (busy checking other hosts: rookery
/// checks 16 new hosts at once).
const ADD_ATTEMPTS: u32 = 20;
/// Longest wait before another try, whatever the `Retry-After`.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(1);
/// Largest answer body read.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Where the relay is and how to drive it.
#[derive(Debug, Clone)]
pub struct ExternalRelaySettings {
    /// The public base URL, e.g. `http://127.0.0.1:2470`.
    pub url: url::Url,
    /// The admin base URL and password; `None`: hosts go through public requestCrawl.
    pub admin: Option<(url::Url, String)>,
    /// What the probe asks on `url`.
    pub health_path: String,
    /// `PATH#/json/pointer` on `url` whose number is the hosts connected; `None`: the
    /// fleet's own view.
    pub connected_path: Option<String>,
}

impl ExternalRelaySettings {
    pub fn new(url: url::Url) -> ExternalRelaySettings {
        ExternalRelaySettings {
            url,
            admin: None,
            health_path: DEFAULT_HEALTH_PATH.to_string(),
            connected_path: None,
        }
    }
}

/// What adding the fleet's hosts came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostsAdded {
    pub added: u64,
    /// Refusals and errors by name (an XRPC error, `HTTP <status>`, or the transport's).
    pub failed: BTreeMap<String, u64>,
    /// Added hosts whose account limit could not be raised.
    pub limits_failed: u64,
}

impl HostsAdded {
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// The relay at [`ExternalRelaySettings::url`].
pub struct ExternalRelay {
    settings: ExternalRelaySettings,
    addr: SocketAddr,
    client: awc::Client,
}

impl ExternalRelay {
    /// Resolves the URL's host and port (the firehose's consumers connect there).
    pub fn new(settings: ExternalRelaySettings) -> Result<ExternalRelay, BenchError> {
        let url = &settings.url;
        if url.scheme() != "http" {
            return Err(BenchError::Relay(format!(
                "--relay-url {url}: only http:// (the firehose over plain ws://) is supported"
            )));
        }
        let addr = url
            .socket_addrs(|| None)
            .ok()
            .and_then(|addrs| addrs.into_iter().next())
            .ok_or_else(|| BenchError::Relay(format!("--relay-url {url}: no address")))?;
        Ok(ExternalRelay {
            settings,
            addr,
            client: awc::Client::builder().timeout(REQUEST_TIMEOUT).finish(),
        })
    }

    pub fn url(&self) -> &url::Url {
        &self.settings.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn join(base: &url::Url, path: &str) -> String {
        format!("{}{path}", base.as_str().trim_end_matches('/'))
    }

    fn health_url(&self) -> String {
        ExternalRelay::join(&self.settings.url, &self.settings.health_path)
    }

    pub async fn answers_health(&self) -> bool {
        matches!(self.client.get(self.health_url()).send().await, Ok(r) if r.status().is_success())
    }

    pub fn probe(&self) -> Probe {
        Probe::start(ProbeSettings::new(self.health_url()))
    }

    /// Hosts connected: the number at `--connected-path`, else the fleet's view.
    pub async fn connected(&self, fleet: &Fleet) -> Option<u64> {
        let Some(path) = &self.settings.connected_path else {
            return Some(fleet.connected() as u64);
        };
        let (path, pointer) = path.split_once('#').unwrap_or((path, ""));
        let url = ExternalRelay::join(&self.settings.url, path);
        let mut response = self.client.get(url).send().await.ok()?;
        let body = response.body().limit(MAX_BODY_BYTES).await.ok()?;
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        value.pointer(pointer)?.as_u64()
    }

    /// Submits every hostname (`localhost:PORT`; `https://localhost:PORT` over wss), at most
    /// [`ADD_CONCURRENCY`] at once, printing progress; failures are counted, not fatal. A 503
    /// or 429 is tried again after its `Retry-After` (at most [`MAX_RETRY_WAIT`]), up to
    /// [`ADD_ATTEMPTS`] times.
    pub async fn add_hosts(
        &self,
        hostnames: &[String],
        transport: Transport,
        deadline: Instant,
    ) -> HostsAdded {
        let client = awc::Client::builder().timeout(ADD_TIMEOUT).finish();
        let via = match &self.settings.admin {
            Some((admin, _)) => format!("{admin} (admin requestCrawl)"),
            None => format!("{} (public requestCrawl)", self.settings.url),
        };
        eprintln!("adding {} hosts to the relay at {via}", hostnames.len());
        let mut outcome = HostsAdded::default();
        let begun = Instant::now();
        let mut next_progress = begun + PROGRESS_PERIOD;
        let mut answers = futures_util::stream::iter(hostnames)
            .map(|hostname| self.add_host(&client, hostname, transport))
            .buffer_unordered(ADD_CONCURRENCY);
        while let Some(answer) = answers.next().await {
            match answer {
                Ok(limits_raised) => {
                    outcome.added += 1;
                    outcome.limits_failed += u64::from(!limits_raised);
                }
                Err(reason) => *outcome.failed.entry(reason).or_default() += 1,
            }
            if Instant::now() >= next_progress {
                next_progress = Instant::now() + PROGRESS_PERIOD;
                eprintln!(
                    "{:>6.1} s  hosts added {}/{}, failed {}",
                    begun.elapsed().as_secs_f64(),
                    outcome.added,
                    hostnames.len(),
                    outcome.failed_total(),
                );
            }
            if Instant::now() >= deadline {
                *outcome.failed.entry("RunTimeout".to_string()).or_default() +=
                    (hostnames.len() as u64).saturating_sub(outcome.added + outcome.failed_total());
                break;
            }
        }
        eprintln!(
            "hosts added {} of {} in {:.1} s; failed {} {:?}",
            outcome.added,
            hostnames.len(),
            begun.elapsed().as_secs_f64(),
            outcome.failed_total(),
            outcome.failed,
        );
        outcome
    }

    /// One host: requestCrawl, then (admin) its account limit raised. `Ok(false)`: added,
    /// but the limit was not raised.
    async fn add_host(
        &self,
        client: &awc::Client,
        hostname: &str,
        transport: Transport,
    ) -> Result<bool, String> {
        let submitted = match transport {
            // The admin path of rookery (and a bare `localhost:PORT` anywhere) means plain.
            Transport::Ws => hostname.to_string(),
            Transport::Wss => format!("https://{hostname}"),
        };
        let body = serde_json::json!({ "hostname": submitted });
        let admin = self.settings.admin.as_ref();
        let url = match admin {
            Some((admin, _)) => ExternalRelay::join(admin, "/admin/pds/requestCrawl"),
            None => ExternalRelay::join(&self.settings.url, "/xrpc/com.atproto.sync.requestCrawl"),
        };
        let mut attempt = 1;
        loop {
            let mut request = client.post(&url);
            if let Some((_, password)) = admin {
                request = request.basic_auth("admin", password);
            }
            match post(request, &body).await {
                Ok(()) => break,
                Err(Failure {
                    retry_after: Some(wait),
                    ..
                }) if attempt < ADD_ATTEMPTS => {
                    attempt += 1;
                    actix_rt::time::sleep(wait).await;
                }
                Err(failure) => return Err(failure.name),
            }
        }
        let Some((admin, password)) = admin else {
            return Ok(true);
        };
        // A new host's default account limit would throttle the fleet's large hosts.
        let url = ExternalRelay::join(admin, "/admin/pds/changeLimits");
        let limits = serde_json::json!({ "host": hostname, "repo_limit": HOST_ACCOUNT_LIMIT });
        Ok(
            post(client.post(url).basic_auth("admin", password), &limits)
                .await
                .is_ok(),
        )
    }
}

/// Why a POST failed.
struct Failure {
    /// The XRPC error of the answer, `HTTP <status>`, or the transport's error.
    name: String,
    /// For a 503 or 429: how long to wait before trying again.
    retry_after: Option<Duration>,
}

async fn post(request: awc::ClientRequest, body: &serde_json::Value) -> Result<(), Failure> {
    let failed = |name: &str| Failure {
        name: name.to_string(),
        retry_after: None,
    };
    let mut response = request.send_json(body).await.map_err(|e| match e {
        awc::error::SendRequestError::Timeout => failed("Timeout"),
        awc::error::SendRequestError::Connect(_) => failed("ConnectError"),
        _ => failed("RequestError"),
    })?;
    if response.status().is_success() {
        return Ok(());
    }
    let status = response.status().as_u16();
    let retry_after = matches!(status, 429 | 503).then(|| {
        response
            .headers()
            .get(awc::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map_or(Duration::from_millis(500), Duration::from_secs)
            .clamp(Duration::from_millis(100), MAX_RETRY_WAIT)
    });
    let answer = response
        .body()
        .limit(MAX_BODY_BYTES)
        .await
        .unwrap_or_default();
    let name = serde_json::from_slice::<serde_json::Value>(&answer)
        .ok()
        .and_then(|j| j.get("error")?.as_str().map(str::to_string))
        // Names only: a body's free text would make a failure per host.
        .filter(|e| e.len() <= 64 && e.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or_else(|| format!("HTTP {status}"));
    Err(Failure { name, retry_after })
}
