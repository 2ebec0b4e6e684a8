//! `GET /xrpc/com.atproto.sync.subscribeRepos`: checks that can still be answered in HTTP,
//! then the websocket upgrade and one `ConsumerSession` per connection.
//!
//! Answered before the upgrade, as XRPC JSON errors (PROTOCOL.md §1): a non-GET method →
//! 405; a malformed `cursor` → 400 `InvalidRequest`; no `Upgrade: websocket` → 426; the
//! relay full (`--max-consumers`) or shutting down → 503; too many consumers from one address
//! (`--max-consumers-per-ip`) → 429. Both refusals carry `Retry-After`. The address counted
//! is the TCP peer's, not a forwarded header a client could forge.
//!
//! The route knows the firehose only through [`ConsumerSessions`] (admission, then starting a
//! ConsumerSession on the upgraded socket), which `actors::firehose` implements; [`routes`]
//! mounts it for a running [`Firehose`].

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use crate::actors::firehose::{ConsumerSessions, Firehose, Refusal};

/// The route.
pub const PATH: &str = "/xrpc/com.atproto.sync.subscribeRepos";

/// Seconds a refused client is asked to wait.
const RETRY_AFTER_SECS: &str = "5";

/// Route configuration for [`crate::http::start_public`]: mounts `subscribeRepos` in front of
/// `firehose`.
pub fn routes(firehose: &Firehose) -> impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static {
    let sessions = firehose.sessions();
    move |cfg: &mut web::ServiceConfig| configure(cfg, Arc::clone(&sessions))
}

/// Mounts the route with the firehose behind it.
pub fn configure(cfg: &mut web::ServiceConfig, sessions: Arc<dyn ConsumerSessions>) {
    cfg.service(
        web::resource(PATH)
            .app_data(web::Data::from(sessions))
            .route(web::get().to(subscribe_repos))
            .default_service(web::to(method_not_allowed)),
    );
}

fn xrpc_error(status: StatusCode, error: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": error, "message": message }))
}

async fn method_not_allowed() -> HttpResponse {
    let mut response = xrpc_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "subscribeRepos is a GET websocket endpoint",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET"));
    response
}

/// The `cursor` parameter: absent, or a non-negative integer (the first one if repeated).
pub fn parse_cursor(query: &str) -> Result<Option<u64>, &'static str> {
    match url::form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == "cursor") {
        None => Ok(None),
        Some((_, value)) => value
            .parse::<u64>()
            .map(Some)
            .map_err(|_| "cursor must be a non-negative integer"),
    }
}

/// True when the request asks for a websocket upgrade.
fn wants_websocket(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
}

fn refused(status: StatusCode, error: &str, message: &str) -> HttpResponse {
    let mut response = xrpc_error(status, error, message);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    response
}

async fn subscribe_repos(
    req: HttpRequest,
    body: web::Payload,
    sessions: web::Data<dyn ConsumerSessions>,
) -> Result<HttpResponse, actix_web::Error> {
    let cursor = match parse_cursor(req.query_string()) {
        Ok(cursor) => cursor,
        Err(message) => {
            sessions.count_rejected("bad_cursor");
            return Ok(xrpc_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                message,
            ));
        }
    };
    if !wants_websocket(&req) {
        sessions.count_rejected("no_upgrade");
        return Ok(xrpc_error(
            StatusCode::UPGRADE_REQUIRED,
            "UpgradeRequired",
            "subscribeRepos is a websocket endpoint: send Upgrade: websocket",
        ));
    }
    if sessions.shutting_down() {
        sessions.count_rejected("shutting_down");
        return Ok(refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the relay is shutting down",
        ));
    }
    let Some(remote) = req.peer_addr() else {
        sessions.count_rejected("no_peer_address");
        return Ok(xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "no peer address",
        ));
    };
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let start = match sessions.admit(remote, &user_agent, cursor) {
        Ok(start) => start,
        Err(refusal) => {
            sessions.count_rejected(refusal.reason());
            return Ok(match refusal {
                Refusal::Full => refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the relay serves as many consumers as it can; retry later",
                ),
                Refusal::IpFull => refused(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RateLimitExceeded",
                    "too many consumers from this address",
                ),
            });
        }
    };
    start(&req, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor(""), Ok(None));
        assert_eq!(parse_cursor("other=1"), Ok(None));
        assert_eq!(parse_cursor("cursor=0"), Ok(Some(0)));
        assert_eq!(parse_cursor("cursor=42&x=y"), Ok(Some(42)));
        assert_eq!(parse_cursor("cursor=7&cursor=9"), Ok(Some(7)));
        for bad in [
            "cursor=",
            "cursor=-1",
            "cursor=abc",
            "cursor=1.5",
            "cursor=%20",
            "cursor=99999999999999999999999",
        ] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }
}
