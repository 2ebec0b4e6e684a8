//! The admin API at the reference relay's paths and shapes (INDIGO-ADMIN.md), so operator
//! tools written for it (`goat relay admin`, dashboards, scripts) work unchanged.
//!
//! Everything under `/admin/` goes through [`auth::require_admin`] first: no password
//! configured → 503, wrong or missing credentials → 401, and every request that passes is
//! logged with the credential's index, the method, path and outcome. Handlers then log what
//! they changed. Request bodies are JSON of at most [`MAX_BODY`] bytes, read by
//! [`read_json`]; query parameters are checked before any actor or query is touched.
//!
//! Errors are `{"error": "<text>"}` (the reference has no `message` key there) with the
//! status INDIGO-ADMIN.md gives; successful POSTs answer `{"success":"true"}` (a string, as
//! the reference does).
//!
//! Route modules: [`hosts`] (upstream connections, bans, limits, the host list),
//! [`consumers`] (the firehose's consumer list) and [`crawl`] (the operator's requestCrawl,
//! the public requestCrawl switch, the daily limit, domain bans; mounted through
//! [`configure`]'s `extra` with requestCrawl admission's state).

pub mod auth;
pub mod consumers;
pub mod crawl;
pub mod hosts;
pub mod repos;

use std::sync::Arc;

use actix::MailboxError;
use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, ResponseError, web};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::actors::account_admin::AccountAdmin;
use crate::actors::firehose::Firehose;
use crate::actors::host_supervisor::HostSupervisor;
use crate::actors::obs::InstrumentedAddr;
use crate::store::postgres::{Db, DbError};

pub use auth::{AdminAuth, AdminCaller};

/// Largest admin request body (every input is a small JSON object).
pub const MAX_BODY: usize = 4 * 1024;

/// What the admin routes act on. Cheap to clone.
#[derive(Clone)]
pub struct AdminApi {
    pub auth: AdminAuth,
    pub supervisor: InstrumentedAddr<HostSupervisor>,
    /// Takedowns and account-limit changes with their promotions (`Pipeline::accounts`).
    pub accounts: AccountAdmin,
    pub firehose: Arc<Firehose>,
    /// The API's own pool (reads of `hosts`; a few operator writes).
    pub db: Db,
}

/// Mounts `/admin/...` with its authentication. `extra` adds more admin routes (paths
/// relative to `/admin`) behind the same check.
pub fn configure<F>(cfg: &mut web::ServiceConfig, api: AdminApi, extra: F)
where
    F: FnOnce(&mut web::ServiceConfig),
{
    let auth = web::Data::new(api.auth.clone());
    let api = web::Data::new(api);
    cfg.service(
        web::scope("/admin")
            .app_data(auth)
            .app_data(api)
            .wrap(from_fn(auth::require_admin))
            .configure(hosts::configure)
            .configure(consumers::configure)
            .configure(repos::configure)
            .configure(extra),
    );
}

/// An admin error: a status and a human-readable text, `{"error": text}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct AdminError {
    pub status: StatusCode,
    pub message: String,
}

impl AdminError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> AdminError {
        AdminError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::NOT_FOUND, message)
    }

    /// An actor did not answer (shutting down or stopped).
    pub fn unavailable(what: &str, e: MailboxError) -> AdminError {
        tracing::warn!(error = %e, what, "admin request: actor did not answer");
        AdminError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} is not answering; retry later"),
        )
    }
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(serde_json::json!({ "error": self.message }))
    }
}

impl From<DbError> for AdminError {
    fn from(e: DbError) -> AdminError {
        // Sampled: while Postgres is down every request fails the same way.
        static FAILED: crate::actors::obs::LogSample = crate::actors::obs::LogSample::new();
        if let Some(seen) = FAILED.hit() {
            tracing::warn!(reason = e.reason(), error = %e, seen, "admin query failed in postgres");
        }
        let status = if e.is_transient() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        AdminError::new(status, "the relay's database failed; retry later")
    }
}

impl From<tokio_postgres::Error> for AdminError {
    fn from(e: tokio_postgres::Error) -> AdminError {
        DbError::from(e).into()
    }
}

/// `{"success":"true"}`.
pub fn success() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "success": "true" }))
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes: 413 beyond, 400 when it does not parse
/// as `T` (the message says why, without echoing the body).
pub async fn read_json<T: DeserializeOwned>(mut payload: web::Payload) -> Result<T, AdminError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| AdminError::bad_request(format!("reading body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(AdminError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {MAX_BODY} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| AdminError::bad_request(format!("invalid JSON body: {e}")))
}

/// Longest hostname accepted in a query (253 for the name, a port, some slack).
const MAX_HOST_PARAM: usize = 270;

/// The `host` query parameter as the host table spells it: trimmed, lower case, without a
/// trailing dot. Required; 400 when missing, empty, repeated or unreasonable.
pub fn host_param(query: &str) -> Result<String, AdminError> {
    let params = crate::http::xrpc::QueryParams::parse(query)
        .map_err(|e| AdminError::bad_request(e.message))?;
    let raw = params
        .single("host")
        .map_err(|e| AdminError::bad_request(e.message))?
        .unwrap_or_default()
        .trim();
    let host = raw.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty()
        || host.len() > MAX_HOST_PARAM
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
    {
        return Err(AdminError::bad_request("must pass a valid host"));
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_param_normalises_and_refuses() {
        assert_eq!(
            host_param("host=PDS.Example.com.").as_deref(),
            Ok("pds.example.com")
        );
        assert_eq!(
            host_param("host=localhost%3A2583").as_deref(),
            Ok("localhost:2583")
        );
        for bad in [
            "",
            "host=",
            "host=%20",
            "host=a/b",
            "host=a&host=b",
            "host=%FF",
        ] {
            assert!(host_param(bad).is_err(), "{bad}");
        }
        assert!(host_param(&format!("host={}", "a".repeat(300))).is_err());
    }
}
