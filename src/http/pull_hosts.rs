//! `rookery pull-hosts`: copies another relay's host list into this relay. Every host the
//! source relay's `com.atproto.sync.listHosts` lists, except those it reports `banned`, is
//! submitted to this relay's `POST /admin/pds/requestCrawl`, so each one goes through the
//! same admission as any other (hostname rules, domain bans, public-address checks,
//! describeServer, relay detection), minus the public daily limit.
//!
//! Why through the admin API and not straight into the host table: a host list from another
//! relay is untrusted input like any requestCrawl (lesson 3), and the running relay's
//! HostSupervisor must learn of each host to dial it.
//!
//! Bounds: pages of [`PullHostsSettings::page_limit`] hosts, at most
//! [`PullHostsSettings::max_pages`] pages, stopping at a cursor seen before (a source whose
//! cursor loops would otherwise never end); each page body at most
//! [`PullHostsSettings::max_page_bytes`]; [`PullHostsSettings::concurrency`] submissions in
//! flight; every request has a timeout. Progress is reported every
//! [`PullHostsSettings::progress_every`], checked as submissions complete.
//!
//! Failure: the source or the relay not answering (connection refused, a listHosts page that
//! is not a 200 JSON page, the relay refusing the admin password or having no such route)
//! ends the run with a [`PullFailure`]; a refused host is an ordinary outcome, counted by its
//! error name.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;

use crate::http::SERVER_HEADER;

/// The admin password, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminPassword(String);

impl AdminPassword {
    pub fn new(password: impl Into<String>) -> AdminPassword {
        AdminPassword(password.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminPassword(REDACTED)")
    }
}

/// What to pull, from where, how fast.
#[derive(Clone, Debug)]
pub struct PullHostsSettings {
    /// The source relay's base URL.
    pub from: url::Url,
    /// This relay's base URL (its public listener, where `/admin` is mounted).
    pub relay: url::Url,
    pub password: AdminPassword,
    /// Submissions in flight at once.
    pub concurrency: usize,
    /// `limit` of each listHosts page.
    pub page_limit: u32,
    /// Most pages read.
    pub max_pages: usize,
    /// Largest listHosts page body.
    pub max_page_bytes: usize,
    /// Timeout of one request (a requestCrawl may wait for a DNS lookup and a describeServer).
    pub request_timeout: Duration,
    /// How often progress is reported.
    pub progress_every: Duration,
}

impl PullHostsSettings {
    /// The defaults for everything but the two URLs and the password.
    pub fn new(from: url::Url, relay: url::Url, password: AdminPassword) -> PullHostsSettings {
        PullHostsSettings {
            from,
            relay,
            password,
            concurrency: 4,
            page_limit: 1000,
            max_pages: 1000,
            max_page_bytes: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            progress_every: Duration::from_secs(5),
        }
    }
}

/// Counts of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullSummary {
    pub pages: u64,
    /// Hosts the source listed.
    pub listed: u64,
    /// Listed as `banned` by the source: not submitted.
    pub skipped_banned: u64,
    pub added: u64,
    pub already_known: u64,
    /// Refused by this relay, by XRPC error name (`HTTP <status>` when the answer had none).
    pub refused: BTreeMap<String, u64>,
    /// Why the walk stopped before the source's last page, if it did.
    pub stopped_early: Option<&'static str>,
}

impl PullSummary {
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    /// One line for progress reports.
    pub fn progress_line(&self) -> String {
        format!(
            "pull-hosts: {} pages, {} hosts listed, {} added, {} already known, {} refused, {} skipped (banned at the source)",
            self.pages,
            self.listed,
            self.added,
            self.already_known,
            self.refused_total(),
            self.skipped_banned
        )
    }
}

impl std::fmt::Display for PullSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "pages read:        {}", self.pages)?;
        writeln!(f, "hosts listed:      {}", self.listed)?;
        writeln!(f, "skipped (banned):  {}", self.skipped_banned)?;
        writeln!(f, "added:             {}", self.added)?;
        writeln!(f, "already known:     {}", self.already_known)?;
        writeln!(f, "refused:           {}", self.refused_total())?;
        for (reason, n) in &self.refused {
            writeln!(f, "  {reason}: {n}")?;
        }
        if let Some(why) = self.stopped_early {
            writeln!(f, "stopped early:     {why}")?;
        }
        Ok(())
    }
}

/// Which side failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedSide {
    Source,
    Relay,
}

/// A run that could not go on, with what it did so far.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", match .side { FailedSide::Source => "the source relay could not be read", FailedSide::Relay => "this relay could not be reached" })]
pub struct PullFailure {
    pub side: FailedSide,
    pub reason: String,
    pub summary: PullSummary,
}

#[derive(Deserialize)]
struct HostsPage {
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    hosts: Vec<ListedHost>,
}

#[derive(Deserialize)]
struct ListedHost {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

/// What this relay answered for one host.
enum Submitted {
    Added,
    Known,
    Refused(String),
}

fn base(url: &url::Url) -> String {
    url.as_str().trim_end_matches('/').to_string()
}

/// Runs the whole pull; `progress` gets the counts every `progress_every`.
pub async fn pull_hosts(
    settings: &PullHostsSettings,
    progress: &mut dyn FnMut(&PullSummary),
) -> Result<PullSummary, PullFailure> {
    crate::actors::resolver::install_crypto_provider();
    let client = awc::Client::builder()
        .timeout(settings.request_timeout)
        .disable_redirects()
        .add_default_header((awc::http::header::USER_AGENT, SERVER_HEADER))
        .finish();
    let mut summary = PullSummary::default();
    let mut seen_cursors: HashSet<String> = HashSet::new();
    let mut cursor: Option<String> = None;
    let mut last_report = Instant::now();
    loop {
        if summary.pages as usize >= settings.max_pages {
            summary.stopped_early = Some("page cap reached");
            break;
        }
        let page = match fetch_page(&client, settings, cursor.as_deref()).await {
            Ok(page) => page,
            Err(reason) => {
                return Err(PullFailure {
                    side: FailedSide::Source,
                    reason,
                    summary,
                });
            }
        };
        summary.pages += 1;
        let mut to_submit = Vec::with_capacity(page.hosts.len());
        for host in page.hosts {
            let Some(hostname) = host.hostname.filter(|h| !h.is_empty()) else {
                continue;
            };
            summary.listed += 1;
            if host.status.as_deref() == Some("banned") {
                summary.skipped_banned += 1;
            } else {
                to_submit.push(hostname);
            }
        }
        let mut answers = futures_util::stream::iter(to_submit)
            .map(|hostname| submit(&client, settings, hostname))
            .buffer_unordered(settings.concurrency.max(1));
        while let Some(answer) = answers.next().await {
            match answer {
                Ok(Submitted::Added) => summary.added += 1,
                Ok(Submitted::Known) => summary.already_known += 1,
                Ok(Submitted::Refused(reason)) => *summary.refused.entry(reason).or_default() += 1,
                Err(reason) => {
                    return Err(PullFailure {
                        side: FailedSide::Relay,
                        reason,
                        summary,
                    });
                }
            }
            if last_report.elapsed() >= settings.progress_every {
                progress(&summary);
                last_report = Instant::now();
            }
        }
        match page.cursor.filter(|c| !c.is_empty()) {
            None => break,
            Some(next) => {
                if !seen_cursors.insert(next.clone()) {
                    summary.stopped_early = Some("the source repeated a cursor");
                    break;
                }
                cursor = Some(next);
            }
        }
    }
    Ok(summary)
}

async fn fetch_page(
    client: &awc::Client,
    settings: &PullHostsSettings,
    cursor: Option<&str>,
) -> Result<HostsPage, String> {
    let mut url = url::Url::parse(&format!(
        "{}/xrpc/com.atproto.sync.listHosts",
        base(&settings.from)
    ))
    .map_err(|e| format!("bad source URL: {e}"))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("limit", &settings.page_limit.to_string());
        if let Some(c) = cursor {
            q.append_pair("cursor", c);
        }
    }
    let mut response = client
        .get(url.as_str())
        .insert_header((awc::http::header::ACCEPT, "application/json"))
        .send()
        .await
        .map_err(|e| format!("listHosts request to {url} failed: {e}"))?;
    let status = response.status();
    let body = response
        .body()
        .limit(settings.max_page_bytes)
        .await
        .map_err(|e| format!("listHosts page unreadable: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "listHosts answered {}: {}",
            status.as_u16(),
            snippet(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("listHosts page is not a host list: {e}"))
}

async fn submit(
    client: &awc::Client,
    settings: &PullHostsSettings,
    hostname: String,
) -> Result<Submitted, String> {
    let url = format!("{}/admin/pds/requestCrawl", base(&settings.relay));
    let sent = client
        .post(&url)
        .basic_auth("admin", settings.password.expose())
        .send_json(&serde_json::json!({ "hostname": hostname }))
        .await;
    let mut response = match sent {
        Ok(r) => r,
        // A slow host (DNS, describeServer) is that host's problem, not the relay's.
        Err(awc::error::SendRequestError::Timeout) => {
            return Ok(Submitted::Refused("RequestTimeout".to_string()));
        }
        Err(e) => return Err(format!("requestCrawl to {url} failed: {e}")),
    };
    let status = response.status().as_u16();
    let body = response.body().limit(64 * 1024).await.unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    match status {
        200 => {
            let result = json
                .as_ref()
                .and_then(|j| j.get("result"))
                .and_then(|r| r.as_str());
            Ok(if result == Some("already_known") {
                Submitted::Known
            } else {
                Submitted::Added
            })
        }
        401 | 403 => Err(format!(
            "the relay refused the admin credentials ({status}): {}",
            snippet(&body)
        )),
        404 | 405 => Err(format!(
            "the relay has no admin requestCrawl at {url} ({status})"
        )),
        _ => {
            let name = json
                .as_ref()
                .and_then(|j| j.get("error"))
                .and_then(|e| e.as_str())
                .filter(|e| e.len() <= 64 && e.bytes().all(|b| b.is_ascii_alphanumeric()))
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}"));
            Ok(Submitted::Refused(name))
        }
    }
}

/// A short printable excerpt of a body for error messages.
fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
