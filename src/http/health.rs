//! Liveness: `GET /_health` and `GET /xrpc/_health` answer `{"status":"ok"}`.
//!
//! Why it checks nothing: liveness means "the process answers HTTP". Tying it to the
//! database or ingest made production relays get killed while healthy (LESSONS.md 18), so
//! these handlers touch no shared state and never wait on anything.
//!
//! Readiness: `GET /_readyz` reads flags and counters that the pipeline publishes, never a
//! mailbox or Postgres: 503 `{"status":"starting"}` until the pipeline runs and the listeners
//! are bound, 503 `{"status":"stopping"}` once a shutdown began (load balancers drain the
//! relay), and in between 200 with `status` `ready` or `degraded` (the relay stays in service; the
//! body says what to look at), `reasons`, `postgres` (`ok` / `degraded`: the write-behind
//! cannot write), `seq` (the durable head), `hosts` (`known`, `connected`) and
//! `events_flowing` (the head moved within the last five minutes). Reasons:
//! `postgres-writes`; `no-hosts-connected` (hosts are known but no Subscriber runs);
//! `no-events` (Subscribers run but nothing became durable for five minutes: a relay whose
//! readers silently died must not look healthy, LESSONS.md 23).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpResponse, web};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::actors::host_supervisor::HostCounts;

/// How long the head may stand still, with hosts connected, before `no-events`.
pub const QUIET_LIMIT: Duration = Duration::from_secs(5 * 60);

/// What `/_readyz` reports. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    /// Raised by the write-behind while Postgres writes fail.
    postgres_degraded: Arc<AtomicBool>,
    head: Option<watch::Receiver<u64>>,
    hosts: Option<HostCounts>,
    /// The head last seen and when it was first seen.
    last_move: Arc<Mutex<Option<(u64, Instant)>>>,
}

impl Readiness {
    /// Follows `postgres_degraded` (the ingest path's flag).
    pub fn new(postgres_degraded: Arc<AtomicBool>) -> Readiness {
        Readiness {
            postgres_degraded,
            ..Readiness::default()
        }
    }

    /// Also reports the durable head and the host counts.
    pub fn with_ingest(mut self, head: watch::Receiver<u64>, hosts: HostCounts) -> Readiness {
        self.head = Some(head);
        self.hosts = Some(hosts);
        self
    }

    /// The event log is open, the pipeline runs and the listeners are bound.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A shutdown began: not ready any more, for good.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn is_degraded(&self) -> bool {
        self.postgres_degraded.load(Ordering::Acquire)
    }

    /// Whether `head` moved within [`QUIET_LIMIT`] (as far as readiness requests saw).
    fn events_flowing(&self, head: u64) -> bool {
        let now = Instant::now();
        let mut last = self.last_move.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some((seen, since)) if seen == head => now.duration_since(since) < QUIET_LIMIT,
            _ => {
                *last = Some((head, now));
                true
            }
        }
    }

    /// The readiness answer: status code and JSON body.
    pub fn report(&self) -> (u16, serde_json::Value) {
        if self.stopping.load(Ordering::Acquire) {
            return (503, serde_json::json!({ "status": "stopping" }));
        }
        if !self.is_ready() {
            return (503, serde_json::json!({ "status": "starting" }));
        }
        let mut reasons = Vec::new();
        let degraded = self.is_degraded();
        if degraded {
            reasons.push("postgres-writes");
        }
        let seq = self.head.as_ref().map(|h| *h.borrow());
        let (known, connected) = self
            .hosts
            .as_ref()
            .map_or((0, 0), |h| (h.known(), h.connected()));
        if known > 0 && connected == 0 {
            reasons.push("no-hosts-connected");
        }
        let flowing = seq.is_none_or(|head| self.events_flowing(head));
        if connected > 0 && !flowing {
            reasons.push("no-events");
        }
        let status = if reasons.is_empty() {
            "ready"
        } else {
            "degraded"
        };
        (
            200,
            serde_json::json!({
                "status": status,
                "reasons": reasons,
                "postgres": if degraded { "degraded" } else { "ok" },
                "seq": seq,
                "hosts": { "known": known, "connected": connected },
                "events_flowing": flowing,
            }),
        )
    }
}

async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    let (status, body) = readiness.report();
    let code = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(code).json(body)
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
        let body: serde_json::Value = serde_json::from_slice(&test::read_body(resp).await).unwrap();
        assert_eq!(body["status"], "ready");
        assert_eq!(body["postgres"], "ok");
        degraded.store(true, Ordering::Release);
        let resp = test::call_service(&app, get()).await;
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = serde_json::from_slice(&test::read_body(resp).await).unwrap();
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["reasons"][0], "postgres-writes");
        assert_eq!(body["postgres"], "degraded");
        readiness.set_stopping();
        let resp = test::call_service(&app, get()).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(
            &test::read_body(resp).await[..],
            br#"{"status":"stopping"}"#
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_stands_still_with_hosts_connected_is_reported() {
        let (head_tx, head) = watch::channel(10u64);
        let hosts = HostCounts::default();
        let readiness = Readiness::new(Arc::default()).with_ingest(head, hosts.clone());
        readiness.set_ready();
        // No hosts known: nothing to complain about, whatever the head does.
        assert_eq!(readiness.report().1["status"], "ready");
        hosts.set(3, 0);
        let (_, body) = readiness.report();
        assert_eq!(body["reasons"], serde_json::json!(["no-hosts-connected"]));
        hosts.set(3, 3);
        assert_eq!(readiness.report().1["status"], "ready");
        tokio::time::advance(QUIET_LIMIT - Duration::from_secs(1)).await;
        assert_eq!(readiness.report().1["events_flowing"], true);
        tokio::time::advance(Duration::from_secs(2)).await;
        let (code, body) = readiness.report();
        assert_eq!(code, 200, "still in service");
        assert_eq!(body["reasons"], serde_json::json!(["no-events"]));
        assert_eq!(body["seq"], 10);
        head_tx.send_replace(11);
        let (_, body) = readiness.report();
        assert_eq!(body["status"], "ready");
        assert_eq!(body["hosts"]["connected"], 3);
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
