//! Liveness: `GET /_health` and `GET /xrpc/_health` answer `{"status":"ok"}`.
//!
//! Why it checks nothing: liveness means "the process answers HTTP". Tying it to the
//! database or ingest made production relays get killed while healthy (LESSONS.md 18), so
//! these handlers touch no shared state and never wait on anything.
//!
//! Readiness: `GET /_readyz` reads two flags and nothing else: 503 `{"status":"starting"}`
//! until the pipeline runs, then 200 `{"status":"ready"}`, or 200 `{"status":"degraded",
//! "reasons":["postgres-writes"]}` while the write-behind cannot reach Postgres (ingest goes
//! on, so the relay stays in service; the body says what an operator should look at).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::{HttpResponse, web};

/// What `/_readyz` reports. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    /// Raised by the write-behind while Postgres writes fail.
    postgres_degraded: Arc<AtomicBool>,
}

impl Readiness {
    /// Follows `postgres_degraded` (the ingest path's flag).
    pub fn new(postgres_degraded: Arc<AtomicBool>) -> Readiness {
        Readiness {
            ready: Arc::default(),
            postgres_degraded,
        }
    }

    /// The event log is open, the pipeline runs and the listeners are bound.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn is_degraded(&self) -> bool {
        self.postgres_degraded.load(Ordering::Acquire)
    }
}

async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    if !readiness.is_ready() {
        return HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "starting" }));
    }
    if readiness.is_degraded() {
        return HttpResponse::Ok().json(serde_json::json!({
            "status": "degraded",
            "reasons": ["postgres-writes"],
        }));
    }
    HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
}

/// Adds `/_readyz` over `readiness`.
pub fn configure_readiness(cfg: &mut web::ServiceConfig, readiness: Readiness) {
    cfg.app_data(web::Data::new(readiness))
        .route("/_readyz", web::get().to(readyz));
}

/// The liveness handler.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Adds the health routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/_health", web::get().to(health))
        .route("/xrpc/_health", web::get().to(health));
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{App, test};

    #[actix_web::test]
    async fn readiness_says_starting_then_ready_then_degraded() {
        let degraded = Arc::new(AtomicBool::new(false));
        let readiness = Readiness::new(Arc::clone(&degraded));
        let r = readiness.clone();
        let app = test::init_service(App::new().configure(move |cfg| {
            configure_readiness(cfg, r.clone());
        }))
        .await;
        let get = || test::TestRequest::get().uri("/_readyz").to_request();
        let resp = test::call_service(&app, get()).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(
            &test::read_body(resp).await[..],
            br#"{"status":"starting"}"#
        );
        readiness.set_ready();
        let resp = test::call_service(&app, get()).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(&test::read_body(resp).await[..], br#"{"status":"ready"}"#);
        degraded.store(true, Ordering::Release);
        let resp = test::call_service(&app, get()).await;
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = serde_json::from_slice(&test::read_body(resp).await).unwrap();
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["reasons"][0], "postgres-writes");
    }

    #[actix_web::test]
    async fn health_answers_ok_json_with_server_header() {
        let app = test::init_service(
            App::new()
                .wrap(crate::http::server_header())
                .configure(configure)
                .default_service(web::to(crate::http::not_found)),
        )
        .await;
        for path in ["/_health", "/xrpc/_health"] {
            let resp =
                test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
            assert_eq!(resp.status(), 200, "{path}");
            let headers = resp.headers().clone();
            assert_eq!(headers.get("content-type").unwrap(), "application/json");
            assert!(
                headers
                    .get("server")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .contains("(atproto-relay)")
            );
            let body = test::read_body(resp).await;
            assert_eq!(&body[..], br#"{"status":"ok"}"#);
        }
        let resp =
            test::call_service(&app, test::TestRequest::get().uri("/nope").to_request()).await;
        assert_eq!(resp.status(), 404);
        assert!(resp.headers().get("server").is_some());
    }
}
