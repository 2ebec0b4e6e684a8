//! Account takedowns: `/admin/repo/takeDown`, `/admin/repo/reverseTakedown`,
//! `/admin/repo/takedowns`.
//!
//! Both actions go through the sequenced path (`actors::account_admin`): the stored status
//! changes, the account's shard learns it in order with its frames, the account's stored
//! events are masked (or unmasked) in the log and the ring, and the relay emits its own
//! `#account`. rookery also stops replaying a taken-down account's events (the reference
//! does not). The takedown list's cursor is a string and is omitted on the last page: the
//! reference sends a number, but goat reads a string (INDIGO-ADMIN.md).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::{AdminApi, AdminError, read_json, success};
use crate::actors::account_admin::AccountAdminError;
use crate::atproto::syntax::is_valid_did;
use crate::http::xrpc::{QueryParams, parse_bounded_int};

/// DIDs per `/admin/repo/takedowns` page (the reference's page size).
pub const TAKEDOWNS_PAGE: usize = 500;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/repo/takeDown", web::post().to(take_down))
        .route("/repo/reverseTakedown", web::post().to(reverse_takedown))
        .route("/repo/takedowns", web::get().to(takedowns));
}

#[derive(Debug, Deserialize)]
struct DidBody {
    did: String,
}

/// The DID of a takedown request: JSON `{did}` (what goat sends).
async fn did_of(payload: web::Payload) -> Result<String, AdminError> {
    let body: DidBody = read_json(payload).await?;
    let did = body.did.trim().to_string();
    if !is_valid_did(&did) {
        return Err(AdminError::bad_request("did is not a valid DID"));
    }
    Ok(did)
}

fn failed(action: &str, did: &str, e: AccountAdminError) -> AdminError {
    if e.is_not_found() {
        return AdminError::not_found(format!("unknown account: {did}"));
    }
    tracing::warn!(%did, error = %e, reason = e.reason(), action, "account admin action failed");
    AdminError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the {action} could not be completed ({}); retry later",
            e.reason()
        ),
    )
}

async fn take_down(
    api: web::Data<AdminApi>,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let did = did_of(payload).await?;
    let done = api
        .accounts
        .take_down(&did)
        .await
        .map_err(|e| failed("takedown", &did, e))?;
    tracing::warn!(%did, seq = ?done.seq, repeated = done.repeated, masked = done.masked_records, "account taken down by an operator");
    Ok(success())
}

async fn reverse_takedown(
    api: web::Data<AdminApi>,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let did = did_of(payload).await?;
    let done = api
        .accounts
        .reverse_takedown(&did)
        .await
        .map_err(|e| failed("reversal", &did, e))?;
    tracing::warn!(%did, seq = ?done.seq, local_status = ?done.local_status, unmasked = done.unmasked_records, "takedown reversed by an operator");
    Ok(success())
}

#[derive(Debug, Serialize)]
struct TakedownPage {
    dids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

async fn takedowns(api: web::Data<AdminApi>, req: HttpRequest) -> Result<HttpResponse, AdminError> {
    let params =
        QueryParams::parse(req.query_string()).map_err(|e| AdminError::bad_request(e.message))?;
    let after = match params
        .single("cursor")
        .map_err(|e| AdminError::bad_request(e.message))?
    {
        None | Some("") => None,
        Some(raw) => Some(
            parse_bounded_int(raw)
                .filter(|c| *c >= 0)
                .ok_or_else(|| AdminError::bad_request("invalid cursor param"))?,
        ),
    };
    let (dids, next) = api
        .accounts
        .takedowns(after, TAKEDOWNS_PAGE)
        .await
        .map_err(|e| failed("takedown list", "-", e))?;
    Ok(HttpResponse::Ok().json(TakedownPage {
        dids,
        cursor: next.map(|c| c.to_string()),
    }))
}
