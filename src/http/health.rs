//! Liveness: `GET /_health` and `GET /xrpc/_health` answer `{"status":"ok"}`.
//!
//! Why it checks nothing: liveness means "the process answers HTTP". Tying it to the
//! database or ingest made production relays get killed while healthy (LESSONS.md 18), so
//! these handlers touch no shared state and never wait on anything. Readiness and degraded
//! states are reported elsewhere (later issues).

use actix_web::{HttpResponse, web};

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
