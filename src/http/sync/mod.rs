//! The sync XRPC queries a relay serves (PROTOCOL.md §3): `com.atproto.sync.listHosts`,
//! `getHostStatus`, `listRepos`, `getRepoStatus`, `getLatestCommit` and `getRepo`.
//!
//! Why straight to Postgres: these are reads of state the ingest actors already write behind
//! (`hosts`, `accounts`, `account_sync_state`), so each request is one bounded statement
//! ([`queries`]) and no actor mailbox is involved: a burst of API traffic cannot delay ingest,
//! and a busy pipeline cannot delay the API. Give [`SyncApi`] a pool of its own (a few
//! connections, a short statement timeout), so API load cannot take the write-behind's
//! connections either. The price is that answers lag the pipeline by the write-behind
//! interval (a few seconds), which the lexicon allows (`seq` "may lag").
//!
//! What an account looks like comes from the actors' own rules: `active` and `status` are
//! `shard_rules::is_active` / `published_status` of the stored local and upstream statuses, the
//! same values the relay puts in its `#account` events, so the API and the firehose never
//! disagree.
//!
//! Every parameter is checked before any query ([`params`]); a bad one is a 400
//! `InvalidRequest` naming it. Paths under `/xrpc/` that no module serves get 404
//! `MethodNotImplemented` from the listeners' default service (`http::not_found`), so this
//! module registers no catch-all and other modules' `/xrpc/` routes (subscribeRepos,
//! requestCrawl) can be mounted before or after it.
//!
//! Decisions where the references differ (README "Sync XRPC endpoints" lists them all):
//! - `listHosts` lists every known host, banned ones included, with its status and its
//!   `accountCount` (accounts that are not deleted: `hosts.account_count`, which a trigger
//!   keeps, so no request counts rows); `getHostStatus` gives the same fields.
//! - `listRepos` lists every account with a known commit, inactive ones with `active: false`
//!   and their status (the lexicon's shape; indigo lists only active ones).
//! - `getRepoStatus` gives `rev` only when the account is active (the lexicon's wording).
//! - Inactive accounts in `getLatestCommit`/`getRepo`: 403 `RepoTakendown`, `RepoSuspended`,
//!   `RepoDeactivated` (the lexicon's names), 404 `RepoNotFound` for a deleted one, and 403
//!   `RepoInactive` (indigo's name) for any other status (throttled, desynchronized, no
//!   reason). `getLatestCommit` of an active account with no known commit is 404
//!   `RepoNotSynchronized`, as in indigo.
//! - `getRepo` checks the account (indigo redirects without looking) and redirects to its
//!   host as the relay knows it (`hosts.hostname`; `http://` for a `no_ssl` host).

pub mod params;
pub mod queries;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use crate::actors::shard_rules::{LocalStatus, is_active, published_status};
use crate::actors::supervision::HostStatus;
use crate::http::xrpc::{QueryParams, XrpcError, query_only};
use crate::store::postgres::Db;

use self::queries::{AccountRow, HostRow};

/// What the sync endpoints need. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SyncApi {
    /// Best a pool of its own (see the module doc): its size bounds the concurrent API
    /// queries, its statement timeout how long one may run.
    pub db: Db,
}

impl SyncApi {
    pub fn new(db: Db) -> SyncApi {
        SyncApi { db }
    }
}

/// The NSIDs [`configure`] serves (the tests go through each).
pub const METHODS: [&str; 6] = [
    "com.atproto.sync.listHosts",
    "com.atproto.sync.getHostStatus",
    "com.atproto.sync.listRepos",
    "com.atproto.sync.getRepoStatus",
    "com.atproto.sync.getLatestCommit",
    "com.atproto.sync.getRepo",
];

/// Adds the six sync queries (GET only; another HTTP method is a 405 in the XRPC error shape).
pub fn configure(cfg: &mut web::ServiceConfig, state: SyncApi) {
    let data = web::Data::new(state);
    let routes: [(&str, actix_web::Route); 6] = [
        ("com.atproto.sync.listHosts", web::get().to(list_hosts)),
        (
            "com.atproto.sync.getHostStatus",
            web::get().to(get_host_status),
        ),
        ("com.atproto.sync.listRepos", web::get().to(list_repos)),
        (
            "com.atproto.sync.getRepoStatus",
            web::get().to(get_repo_status),
        ),
        (
            "com.atproto.sync.getLatestCommit",
            web::get().to(get_latest_commit),
        ),
        ("com.atproto.sync.getRepo", web::get().to(get_repo)),
    ];
    for (method, route) in routes {
        cfg.service(
            web::resource(format!("/xrpc/{method}"))
                .app_data(data.clone())
                .route(route)
                .default_service(web::to(query_only)),
        );
    }
}

type XrpcResult = Result<HttpResponse, XrpcError>;

fn query(req: &HttpRequest) -> Result<QueryParams, XrpcError> {
    QueryParams::parse(req.query_string())
}

// ------------------------------------------------------------------------------------------
// Hosts

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct HostView {
    hostname: String,
    seq: i64,
    account_count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
}

impl From<HostRow> for HostView {
    fn from(row: HostRow) -> HostView {
        let status = match row.status.parse::<HostStatus>() {
            Ok(s) => Some(s.as_str()),
            Err(e) => {
                // The schema's CHECK rules this out; say so rather than publish it.
                tracing::warn!(hostname = %row.hostname, error = %e, "host row with an unknown status");
                None
            }
        };
        HostView {
            hostname: row.hostname,
            seq: row.last_seq,
            account_count: row.account_count,
            status,
        }
    }
}

#[derive(Serialize, Debug)]
struct ListHostsOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    hosts: Vec<HostView>,
}

async fn list_hosts(api: web::Data<SyncApi>, req: HttpRequest) -> XrpcResult {
    let q = query(&req)?;
    let limit = params::limit(&q, params::LIST_HOSTS_LIMIT)?;
    let after = params::cursor(&q)?;
    // One row more than asked: whether it exists says whether another page follows.
    let mut rows = queries::list_hosts(&api.db, after, limit + 1).await?;
    let cursor = next_page(&mut rows, limit, |h| h.id);
    Ok(HttpResponse::Ok().json(ListHostsOutput {
        cursor,
        hosts: rows.into_iter().map(HostView::from).collect(),
    }))
}

async fn get_host_status(api: web::Data<SyncApi>, req: HttpRequest) -> XrpcResult {
    let q = query(&req)?;
    let hostname = params::hostname(&q)?;
    match queries::host(&api.db, &hostname).await? {
        Some(row) => Ok(HttpResponse::Ok().json(HostView::from(row))),
        None => Err(XrpcError::new(
            StatusCode::NOT_FOUND,
            "HostNotFound",
            "this relay does not know that host",
        )),
    }
}

/// Truncates a `limit + 1` page to `limit` rows and returns the cursor of its last row when
/// the extra row shows that more follow.
fn next_page<T>(rows: &mut Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> Option<String> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() <= limit {
        return None;
    }
    rows.truncate(limit);
    rows.last().map(|row| params::cursor_string(id(row)))
}

// ------------------------------------------------------------------------------------------
// Repos

/// `active` and `status` of an account as the relay publishes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedStatus {
    pub active: bool,
    pub status: Option<String>,
}

impl PublishedStatus {
    /// From the stored columns, through the actors' rules.
    pub fn from_columns(local: &str, upstream: &str) -> Result<PublishedStatus, XrpcError> {
        let Some(local) = LocalStatus::parse(local) else {
            // The schema's CHECK rules this out.
            tracing::warn!(local_status = %local, "account row with an unknown local status");
            return Err(XrpcError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "internal error",
            ));
        };
        Ok(PublishedStatus {
            active: is_active(local, upstream),
            status: published_status(local, upstream).map(str::to_string),
        })
    }

    /// The error `getLatestCommit` and `getRepo` give for an account that is not active.
    pub fn inactive_error(&self) -> Option<XrpcError> {
        if self.active {
            return None;
        }
        let forbidden = |name, message: &str| XrpcError::new(StatusCode::FORBIDDEN, name, message);
        Some(match self.status.as_deref() {
            Some("takendown") => forbidden("RepoTakendown", "repo has been taken down"),
            Some("suspended") => forbidden("RepoSuspended", "repo has been suspended"),
            Some("deactivated") => forbidden("RepoDeactivated", "repo has been deactivated"),
            Some("deleted") => XrpcError::new(
                StatusCode::NOT_FOUND,
                "RepoNotFound",
                "repo has been deleted",
            ),
            Some(other) => XrpcError::new(
                StatusCode::FORBIDDEN,
                "RepoInactive",
                format!("repo is not active: {}", printable_status(other)),
            ),
            None => forbidden("RepoInactive", "repo is not active"),
        })
    }
}

/// A bounded, printable form of an upstream status (an open set written by the PDS).
fn printable_status(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

fn repo_not_found() -> XrpcError {
    XrpcError::new(
        StatusCode::NOT_FOUND,
        "RepoNotFound",
        "this relay does not know that repo",
    )
}

#[derive(Serialize, Debug)]
struct RepoView {
    did: String,
    head: String,
    rev: String,
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
}

#[derive(Serialize, Debug)]
struct ListReposOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    repos: Vec<RepoView>,
}

async fn list_repos(api: web::Data<SyncApi>, req: HttpRequest) -> XrpcResult {
    let q = query(&req)?;
    let limit = params::limit(&q, params::LIST_REPOS_LIMIT)?;
    let after = params::cursor(&q)?;
    let mut rows = queries::list_repos(&api.db, after, limit + 1).await?;
    let cursor = next_page(&mut rows, limit, |r| r.uid);
    let repos = rows
        .into_iter()
        .map(|row| {
            let published = PublishedStatus::from_columns(&row.local_status, &row.upstream_status)?;
            Ok(RepoView {
                did: row.did,
                head: row.commit_cid,
                rev: row.rev,
                active: published.active,
                status: published.status,
            })
        })
        .collect::<Result<Vec<_>, XrpcError>>()?;
    Ok(HttpResponse::Ok().json(ListReposOutput { cursor, repos }))
}

#[derive(Serialize, Debug)]
struct RepoStatusOutput<'a> {
    did: &'a str,
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rev: Option<String>,
}

async fn account(api: &SyncApi, did: &str) -> Result<(AccountRow, PublishedStatus), XrpcError> {
    let row = queries::account(&api.db, did)
        .await?
        .ok_or_else(repo_not_found)?;
    let published = PublishedStatus::from_columns(&row.local_status, &row.upstream_status)?;
    Ok((row, published))
}

async fn get_repo_status(api: web::Data<SyncApi>, req: HttpRequest) -> XrpcResult {
    let q = query(&req)?;
    let did = params::did(&q)?;
    let (row, published) = account(&api, did).await?;
    let rev = if published.active { row.rev } else { None };
    Ok(HttpResponse::Ok().json(RepoStatusOutput {
        did,
        active: published.active,
        status: published.status,
        rev,
    }))
}

#[derive(Serialize, Debug)]
struct LatestCommitOutput {
    cid: String,
    rev: String,
}

async fn get_latest_commit(api: web::Data<SyncApi>, req: HttpRequest) -> XrpcResult {
    let q = query(&req)?;
    let did = params::did(&q)?;
    let (row, published) = account(&api, did).await?;
    if let Some(err) = published.inactive_error() {
        return Err(err);
    }
    match (row.commit_cid, row.rev) {
        (Some(cid), Some(rev)) => Ok(HttpResponse::Ok().json(LatestCommitOutput { cid, rev })),
        _ => Err(XrpcError::new(
            StatusCode::NOT_FOUND,
            "RepoNotSynchronized",
            "this relay has not seen a commit of that repo yet",
        )),
    }
}

/// A non-archival relay serves `getRepo` with a 302 to the account's PDS.
async fn get_repo(api: web::Data<SyncApi>, req: HttpRequest) -> XrpcResult {
    let q = query(&req)?;
    let did = params::did(&q)?;
    let since = params::since(&q)?;
    let (row, published) = account(&api, did).await?;
    if let Some(err) = published.inactive_error() {
        return Err(err);
    }
    let location = pds_get_repo_url(&row.hostname, row.no_ssl, did, since)?;
    Ok(HttpResponse::Found()
        .insert_header((header::LOCATION, location))
        .finish())
}

/// `https://<host>/xrpc/com.atproto.sync.getRepo?did=...[&since=...]` (`http://` for a
/// `no_ssl` host), built from the checked parameters only. A stored hostname that would not
/// come out as the URL's authority (it never should) is an internal error, not a redirect
/// somewhere else.
pub fn pds_get_repo_url(
    hostname: &str,
    no_ssl: bool,
    did: &str,
    since: Option<&str>,
) -> Result<String, XrpcError> {
    let scheme = if no_ssl { "http" } else { "https" };
    let bad_host = || {
        tracing::warn!(%hostname, "account's host has a hostname that is not a URL authority");
        XrpcError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "the repo's host is misconfigured on this relay",
        )
    };
    let mut url = url::Url::parse(&format!(
        "{scheme}://{hostname}/xrpc/com.atproto.sync.getRepo"
    ))
    .map_err(|_| bad_host())?;
    // The URL drops a port equal to the scheme's default; compare with it put back.
    let authority = match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) if hostname.contains(':') => format!("{host}:{port}"),
        (Some(host), _) => host.to_string(),
        (None, _) => return Err(bad_host()),
    };
    if !authority.eq_ignore_ascii_case(hostname) {
        return Err(bad_host());
    }
    {
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("did", did);
        if let Some(since) = since {
            pairs.append_pair("since", since);
        }
    }
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_status_follows_the_shard_rules() {
        let p = |l, u| PublishedStatus::from_columns(l, u).unwrap();
        assert_eq!(
            p("active", "active"),
            PublishedStatus {
                active: true,
                status: None
            }
        );
        assert_eq!(
            p("takendown", "active").status.as_deref(),
            Some("takendown")
        );
        assert_eq!(
            p("throttled", "active").status.as_deref(),
            Some("throttled")
        );
        assert_eq!(
            p("active", "deactivated").status.as_deref(),
            Some("deactivated")
        );
        assert!(PublishedStatus::from_columns("weird", "active").is_err());
    }

    #[test]
    fn inactive_accounts_map_to_the_lexicon_errors() {
        let err = |l, u| {
            PublishedStatus::from_columns(l, u)
                .unwrap()
                .inactive_error()
                .map(|e| (e.status.as_u16(), e.name))
        };
        assert_eq!(err("active", "active"), None);
        assert_eq!(err("takendown", "active"), Some((403, "RepoTakendown")));
        assert_eq!(err("takendown", "deleted"), Some((403, "RepoTakendown")));
        assert_eq!(err("active", "suspended"), Some((403, "RepoSuspended")));
        assert_eq!(err("active", "deactivated"), Some((403, "RepoDeactivated")));
        assert_eq!(err("active", "deleted"), Some((404, "RepoNotFound")));
        assert_eq!(err("throttled", "active"), Some((403, "RepoInactive")));
        assert_eq!(err("active", "desynchronized"), Some((403, "RepoInactive")));
        assert_eq!(err("active", "inactive"), Some((403, "RepoInactive")));
    }

    #[test]
    fn get_repo_urls_keep_the_host_and_encode_the_query() {
        assert_eq!(
            pds_get_repo_url("pds.example.com", false, "did:plc:abc", None).unwrap(),
            "https://pds.example.com/xrpc/com.atproto.sync.getRepo?did=did%3Aplc%3Aabc"
        );
        assert_eq!(
            pds_get_repo_url("localhost:2583", true, "did:web:a.b", Some("3jzfcijpj2z2a")).unwrap(),
            "http://localhost:2583/xrpc/com.atproto.sync.getRepo?did=did%3Aweb%3Aa.b&since=3jzfcijpj2z2a"
        );
        assert_eq!(
            pds_get_repo_url("pds.example.com:443", false, "did:plc:abc", None).unwrap(),
            "https://pds.example.com/xrpc/com.atproto.sync.getRepo?did=did%3Aplc%3Aabc"
        );
        for bad in [
            "evil.com/x",
            "a@evil.com",
            "evil.com#",
            "",
            "evil.com?x",
            "x:1@evil.com",
        ] {
            assert!(
                pds_get_repo_url(bad, false, "did:plc:abc", None).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn next_page_sets_a_cursor_only_when_more_rows_follow() {
        let mut rows = vec![1, 2, 3];
        assert_eq!(next_page(&mut rows, 3, |r| *r), None);
        assert_eq!(rows, [1, 2, 3]);
        let mut rows = vec![1, 2, 3, 4];
        assert_eq!(next_page(&mut rows, 3, |r| *r).as_deref(), Some("3"));
        assert_eq!(rows, [1, 2, 3]);
        let mut rows: Vec<i64> = vec![];
        assert_eq!(next_page(&mut rows, 1, |r| *r), None);
    }
}
