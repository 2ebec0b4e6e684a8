//! The crawl part of the admin API (INDIGO-ADMIN.md): the operator's requestCrawl, the public
//! requestCrawl switch, the new-hosts-per-day limit and domain bans, with the shapes the
//! reference relay's tools (goat, its dashboard) parse.
//!
//! Paths are relative to the `/admin` scope, which authenticates every request before these
//! handlers run (they do no auth of their own). Errors are `{"error": "<text>"}` as in the
//! reference, except `/pds/requestCrawl`, whose refusals are XRPC errors (`{"error": Name,
//! "message": ...}`, the public path's names and statuses). Successful POSTs answer
//! `{"success": "true"}` (a string, as in the reference), with rookery's extra fields.
//!
//! Where rookery differs (INDIGO-ADMIN.md, in italics there): the switch and the limit are
//! stored (`relay_settings`) and survive a restart; `banDomain` normalises the domain, answers
//! success for a domain already banned, and also bans and disconnects every known host under
//! it (through the HostSupervisor's `Ban`, so the connection ends at once). `unbanDomain`
//! only lifts the domain ban: hosts it banned stay banned until `/admin/pds/unblock`.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::{AdminError, read_json};
use crate::actors::host_supervisor::Ban;
use crate::http::request_crawl::hostname::{CrawlPath, normalize_domain};
use crate::http::request_crawl::{AdmissionState, Admitted};
use crate::http::xrpc::{QueryParams, parse_bounded_int};
use crate::store::crawl_policy;

/// Highest `setPerDayLimit` accepted.
pub const MAX_PER_DAY_LIMIT: i64 = 1_000_000;

/// Most hosts one `banDomain` bans (a second call bans the next ones).
pub const MAX_HOSTS_BANNED_PER_CALL: i64 = 10_000;

/// Adds the crawl admin routes (paths relative to the `/admin` scope, whose auth runs first;
/// `admin::configure`'s `extra`). Another HTTP method on one of them is a 405.
pub fn configure(cfg: &mut web::ServiceConfig, state: AdmissionState) {
    let data = web::Data::new(state);
    let routes: [(&'static str, &str, actix_web::Route); 8] = [
        ("POST", "/pds/requestCrawl", web::post().to(request_crawl)),
        ("GET", "/subs/getEnabled", web::get().to(get_enabled)),
        ("POST", "/subs/setEnabled", web::post().to(set_enabled)),
        ("GET", "/subs/perDayLimit", web::get().to(per_day_limit)),
        (
            "POST",
            "/subs/setPerDayLimit",
            web::post().to(set_per_day_limit),
        ),
        (
            "GET",
            "/subs/listDomainBans",
            web::get().to(list_domain_bans),
        ),
        ("POST", "/subs/banDomain", web::post().to(ban_domain)),
        ("POST", "/subs/unbanDomain", web::post().to(unban_domain)),
    ];
    for (allow, path, route) in routes {
        cfg.service(
            web::resource(path)
                .app_data(data.clone())
                .route(route)
                .default_service(web::to(move || async move {
                    let mut resp = actix_web::ResponseError::error_response(&AdminError::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        format!("method not allowed: use {allow}"),
                    ));
                    resp.headers_mut()
                        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
                    resp
                })),
        );
    }
}

/// `{"success": "true"}` with rookery's extra fields.
fn success_with(extra: serde_json::Value) -> HttpResponse {
    let mut body = json!({ "success": "true" });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
    }
    HttpResponse::Ok().json(body)
}

fn query(req: &HttpRequest) -> Result<QueryParams, AdminError> {
    QueryParams::parse(req.query_string()).map_err(|e| AdminError::bad_request(e.message))
}

/// `POST /pds/requestCrawl` `{hostname}`: admission without the public switch and the daily
/// limit; `localhost:PORT` and `http://` hosts allowed (and exempt from the public-address
/// checks). `result` says whether the host was `added` or `already_known`. Refusals are XRPC
/// errors, as on the public path.
async fn request_crawl(
    state: web::Data<AdmissionState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    match state
        .request_crawl_body(CrawlPath::Admin, &req, payload)
        .await
    {
        Ok(admitted) => {
            let result = match &admitted {
                Admitted::Added(_) => "added",
                Admitted::Known(_) => "already_known",
            };
            success_with(json!({ "hostname": admitted.view().hostname, "result": result }))
        }
        Err(refusal) => refusal.to_response(),
    }
}

/// `GET /subs/getEnabled` → `{"enabled": bool}`.
async fn get_enabled(state: web::Data<AdmissionState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "enabled": state.public_crawl_enabled() }))
}

/// A boolean as Go's `strconv.ParseBool` reads it (the reference relay's parser).
pub fn parse_bool(raw: &str) -> Option<bool> {
    match raw {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// `POST /subs/setEnabled?enabled=true|false`.
async fn set_enabled(
    state: web::Data<AdmissionState>,
    req: HttpRequest,
) -> Result<HttpResponse, AdminError> {
    let enabled = query(&req)?
        .required("enabled")
        .ok()
        .and_then(parse_bool)
        .ok_or_else(|| AdminError::bad_request("query parameter enabled must be true or false"))?;
    state.set_public_crawl_enabled(enabled).await?;
    Ok(success_with(json!({ "enabled": enabled })))
}

/// `GET /subs/perDayLimit` → `{"limit": n}`.
async fn per_day_limit(state: web::Data<AdmissionState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "limit": state.new_hosts_per_day() }))
}

/// `POST /subs/setPerDayLimit?limit=n` (0 to [`MAX_PER_DAY_LIMIT`]; 0 stops public
/// requestCrawl from adding hosts while it still reconnects known ones).
async fn set_per_day_limit(
    state: web::Data<AdmissionState>,
    req: HttpRequest,
) -> Result<HttpResponse, AdminError> {
    let limit = query(&req)?
        .required("limit")
        .ok()
        .and_then(parse_bounded_int)
        .filter(|n| (0..=MAX_PER_DAY_LIMIT).contains(n))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            AdminError::bad_request(format!(
                "query parameter limit must be a whole number from 0 to {MAX_PER_DAY_LIMIT}"
            ))
        })?;
    state.set_new_hosts_per_day(limit).await?;
    Ok(success_with(json!({ "limit": limit })))
}

/// `GET /subs/listDomainBans` → `{"banned_domains": [...]}` (name order).
async fn list_domain_bans(state: web::Data<AdmissionState>) -> Result<HttpResponse, AdminError> {
    let domains = crawl_policy::list_domain_bans(state.db()).await?;
    Ok(HttpResponse::Ok().json(json!({ "banned_domains": domains })))
}

#[derive(Deserialize)]
struct DomainInput {
    domain: String,
}

/// The normalised `domain` of a `{domain}` body.
async fn read_domain(payload: web::Payload) -> Result<String, AdminError> {
    let input: DomainInput = read_json(payload).await?;
    normalize_domain(&input.domain).map_err(|e| {
        AdminError::bad_request(format!(
            "invalid domain: {}",
            e.message().replace("hostname", "domain")
        ))
    })
}

/// `POST /subs/banDomain` `{domain}`: stores the ban (a duplicate is a success), then bans
/// and disconnects every known host equal to or under the domain.
async fn ban_domain(
    state: web::Data<AdmissionState>,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let domain = read_domain(payload).await?;
    let newly = crawl_policy::ban_domain(state.db(), &domain).await?;
    let hosts =
        crawl_policy::ban_hosts_under(state.db(), &domain, MAX_HOSTS_BANNED_PER_CALL).await?;
    for hostname in &hosts {
        // The row is banned already; this ends the connection and stops redials now.
        state
            .supervisor()
            .send(Ban {
                hostname: hostname.clone(),
            })
            .await
            .map_err(|e| AdminError::unavailable("the host supervisor", e))?;
    }
    tracing::warn!(%domain, newly, hosts_banned = hosts.len(), "domain banned by an operator");
    Ok(success_with(json!({
        "domain": domain,
        "already_banned": !newly,
        "hosts_banned": hosts.len(),
    })))
}

/// `POST /subs/unbanDomain` `{domain}`: lifts the domain ban (success also when there was
/// none; `removed` says which).
async fn unban_domain(
    state: web::Data<AdmissionState>,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let domain = read_domain(payload).await?;
    let removed = crawl_policy::unban_domain(state.db(), &domain).await?;
    tracing::info!(%domain, removed, "domain ban lifted by an operator");
    Ok(success_with(
        json!({ "domain": domain, "removed": removed }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_parse_as_the_reference_does() {
        for t in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["", "yes", "tRUE", " true", "2"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }
}
