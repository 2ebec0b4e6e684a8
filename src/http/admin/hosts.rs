//! Upstream hosts: `/admin/subs/getUpstreamConns`, `/admin/subs/killUpstream`,
//! `/admin/pds/list`, `/admin/pds/block`, `/admin/pds/unblock`, `/admin/pds/changeLimits`.
//!
//! Connection state comes from the HostSupervisor (the only owner of connections); stored
//! columns (created at, counts, the alert flag) from `hosts` in one bounded query. Where
//! rookery differs from the reference (INDIGO-ADMIN.md notes): an unknown host is 404 on
//! block, unblock and changeLimits (the reference answers 500 on block), and unblock dials the
//! host at once.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::{AdminApi, AdminError, host_param, read_json, success};
use crate::actors::host_supervisor::{
    Ban, HostView, KillConnection, ListConnections, Phase, Unban,
};
use crate::actors::supervision::HostStatus;
use crate::http::xrpc::QueryParams;

/// Most hosts `/admin/pds/list` returns (the reference's bound).
pub const LIST_LIMIT: i64 = 10_000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/subs/getUpstreamConns", web::get().to(upstream_conns))
        .route("/subs/killUpstream", web::post().to(kill_upstream))
        .route("/pds/list", web::get().to(list))
        .route("/pds/block", web::post().to(block))
        .route("/pds/unblock", web::post().to(unblock))
        .route("/pds/changeLimits", web::post().to(change_limits));
}

async fn hosts(api: &AdminApi) -> Result<Vec<HostView>, AdminError> {
    api.supervisor
        .send(ListConnections)
        .await
        .map_err(|e| AdminError::unavailable("the host supervisor", e))
}

/// A host has a subscription while it is connected or waiting to redial (not banned, idle
/// after `FutureCursor` or offline).
fn subscribed(view: &HostView) -> bool {
    view.phase != Phase::Stopped
}

/// Hostnames with a subscription, redialling ones included (`[]` when none: the reference
/// answers `null`, which tools treat the same).
async fn upstream_conns(api: web::Data<AdminApi>) -> Result<HttpResponse, AdminError> {
    let names: Vec<String> = hosts(&api)
        .await?
        .into_iter()
        .filter(subscribed)
        .map(|v| v.hostname)
        .collect();
    Ok(HttpResponse::Ok().json(names))
}

/// Ends the host's connection (it redials after the minimal backoff); with `block=true` the
/// host is banned too. 400 when it has no open connection (as the reference).
async fn kill_upstream(
    api: web::Data<AdminApi>,
    req: HttpRequest,
) -> Result<HttpResponse, AdminError> {
    let host = host_param(req.query_string())?;
    let block = QueryParams::parse(req.query_string())
        .ok()
        .and_then(|p| {
            p.single("block")
                .ok()
                .flatten()
                .map(|v| v.eq_ignore_ascii_case("true"))
        })
        .unwrap_or(false);
    let killed = api
        .supervisor
        .send(KillConnection {
            hostname: host.clone(),
        })
        .await
        .map_err(|e| AdminError::unavailable("the host supervisor", e))?;
    if !killed {
        return Err(AdminError::bad_request(
            "no active connection to given host",
        ));
    }
    if block {
        ban(&api, &host).await?;
    }
    tracing::warn!(%host, block, "upstream connection killed by an operator");
    Ok(success())
}

async fn ban(api: &AdminApi, host: &str) -> Result<(), AdminError> {
    let known = api
        .supervisor
        .send(Ban {
            hostname: host.to_string(),
        })
        .await
        .map_err(|e| AdminError::unavailable("the host supervisor", e))?;
    if known {
        Ok(())
    } else {
        Err(AdminError::not_found(format!("unknown host: {host}")))
    }
}

/// Bans the host and ends its connection.
async fn block(api: web::Data<AdminApi>, req: HttpRequest) -> Result<HttpResponse, AdminError> {
    let host = host_param(req.query_string())?;
    ban(&api, &host).await?;
    Ok(success())
}

/// Lifts a ban and dials the host at once. A known host that is not banned is left as it is.
async fn unblock(api: web::Data<AdminApi>, req: HttpRequest) -> Result<HttpResponse, AdminError> {
    let host = host_param(req.query_string())?;
    let known = hosts(&api).await?.into_iter().find(|v| v.hostname == host);
    match known {
        None => Err(AdminError::not_found(format!("unknown host: {host}"))),
        Some(view) if view.status != HostStatus::Banned => Ok(success()),
        Some(_) => {
            let lifted = api
                .supervisor
                .send(Unban {
                    hostname: host.clone(),
                })
                .await
                .map_err(|e| AdminError::unavailable("the host supervisor", e))?;
            if lifted {
                tracing::warn!(%host, "host unbanned by an operator");
                Ok(success())
            } else {
                Err(AdminError::new(
                    actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                    "the unban could not be stored; retry later",
                ))
            }
        }
    }
}

/// `changeLimits` input: at least one of the optional fields.
#[derive(Debug, Deserialize)]
struct LimitsChange {
    host: String,
    repo_limit: Option<i64>,
    account_limit_alerts_silenced: Option<bool>,
}

/// Most accounts a host may be given (keeps the derived rate limits in range).
const MAX_REPO_LIMIT: i64 = 1_000_000_000;

async fn change_limits(
    api: web::Data<AdminApi>,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let change: LimitsChange = read_json(payload).await?;
    let host = host_param(&format!(
        "host={}",
        url::form_urlencoded::byte_serialize(change.host.as_bytes()).collect::<String>()
    ))?;
    if change.repo_limit.is_none() && change.account_limit_alerts_silenced.is_none() {
        return Err(AdminError::bad_request(
            "missing repo_limit or account_limit_alerts_silenced",
        ));
    }
    if let Some(limit) = change.repo_limit
        && !(0..=MAX_REPO_LIMIT).contains(&limit)
    {
        return Err(AdminError::bad_request(format!(
            "repo_limit must be between 0 and {MAX_REPO_LIMIT}"
        )));
    }
    if !hosts(&api).await?.iter().any(|v| v.hostname == host) {
        return Err(AdminError::not_found(format!("unknown hostname: {host}")));
    }
    if let Some(silenced) = change.account_limit_alerts_silenced {
        let client = api.db.client().await?;
        client
            .execute(
                "UPDATE hosts SET account_limit_alerts_silenced = $2, updated_at = now() \
                 WHERE hostname = $1",
                &[&host, &silenced],
            )
            .await?;
    }
    // The new limit goes through the account admin: it sends `ChangeLimits` (stored, live
    // rate limits), then promotes throttled accounts within the new headroom.
    let mut promoted = 0;
    if let Some(limit) = change.repo_limit {
        match api.accounts.change_account_limit(&host, limit).await {
            Ok(done) => promoted = done.promoted.len(),
            Err(e) if e.is_not_found() => {
                return Err(AdminError::not_found(format!("unknown hostname: {host}")));
            }
            Err(e) => {
                tracing::warn!(%host, error = %e, reason = e.reason(), "changeLimits failed");
                return Err(AdminError::new(
                    actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                    "the new limit could not be applied; retry later",
                ));
            }
        }
    }
    tracing::info!(
        %host,
        repo_limit = ?change.repo_limit,
        alerts_silenced = ?change.account_limit_alerts_silenced,
        promoted,
        "host limits changed by an operator"
    );
    Ok(success())
}

/// `{Max, Window}` of the reference's host list (`Window` in seconds).
#[derive(Debug, Serialize)]
struct RateLimit {
    #[serde(rename = "Max")]
    max: f64,
    #[serde(rename = "Window")]
    window: f64,
}

/// One host of `/admin/pds/list`: the reference's PascalCase keys, then rookery's own.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListedHost {
    #[serde(rename = "ID")]
    id: i64,
    created_at: String,
    host: String,
    #[serde(rename = "SSL")]
    ssl: bool,
    cursor: i64,
    registered: bool,
    blocked: bool,
    crawl_rate_limit: f64,
    repo_count: i64,
    repo_limit: i64,
    has_active_connection: bool,
    events_seen_since_startup: u64,
    per_second_event_rate: RateLimit,
    per_hour_event_rate: RateLimit,
    per_day_event_rate: RateLimit,
    user_count: i64,
    account_limit_alerts_silenced: bool,
    // rookery's additions
    status: &'static str,
    failures: u32,
    inversion_warn_only: bool,
}

const LIST_SQL: &str = "\
SELECT id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
hostname, no_ssl, last_seq, account_count, account_limit, account_limit_alerts_silenced \
FROM hosts ORDER BY id LIMIT $1";

async fn list(api: web::Data<AdminApi>) -> Result<HttpResponse, AdminError> {
    let views: HashMap<i64, HostView> = hosts(&api).await?.into_iter().map(|v| (v.id, v)).collect();
    let client = api.db.client().await?;
    let rows = client.query(LIST_SQL, &[&LIST_LIMIT]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0)?;
        // A row the supervisor has not loaded yet (inserted a moment ago) shows as stopped.
        let Some(view) = views.get(&id) else { continue };
        let connected = view.phase == Phase::Connected;
        let rate = |max: u64, window: f64| RateLimit {
            max: if connected { max as f64 } else { -1.0 },
            window,
        };
        let account_count: i64 = row.try_get(5)?;
        out.push(ListedHost {
            id,
            created_at: row.try_get(1)?,
            host: row.try_get(2)?,
            ssl: !row.try_get::<_, bool>(3)?,
            cursor: view.cursor.max(row.try_get(4)?),
            registered: view.status == HostStatus::Active,
            blocked: view.status == HostStatus::Banned,
            crawl_rate_limit: 0.0,
            repo_count: account_count,
            repo_limit: view.account_limit,
            has_active_connection: connected,
            events_seen_since_startup: view.events_seen,
            per_second_event_rate: rate(view.limits.per_second, 1.0),
            per_hour_event_rate: rate(view.limits.per_hour, 3_600.0),
            per_day_event_rate: rate(view.limits.per_day, 86_400.0),
            user_count: account_count,
            account_limit_alerts_silenced: row.try_get(7)?,
            status: view.status.as_str(),
            failures: view.failures,
            inversion_warn_only: view.inversion_warn_only,
        });
    }
    Ok(HttpResponse::Ok().json(out))
}
