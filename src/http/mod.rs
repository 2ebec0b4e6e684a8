//! HTTP surfaces: the public API (XRPC, health) and the metrics listener.
//!
//! Why two listeners: the public API faces the internet and may be busy; metrics are
//! scraped by the operator's Prometheus over a private address and must answer even when
//! the public side is saturated. Each runs its own actix-web server with its own workers.
//! Both disable actix's built-in signal handling: `main` owns SIGTERM/SIGINT and shuts
//! down every part (servers, then the embedded database) in order.
//!
//! Every response carries `Server: rookery/<version> (atproto-relay)`; the `atproto-relay`
//! marker is how relays recognise each other (see INDIGO-ADMIN.md).

pub mod admin;
pub mod health;
pub mod metrics;
pub mod pull_hosts;
pub mod request_crawl;
pub mod subscribe_repos;
pub mod sync;
pub mod xrpc;

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::DefaultHeaders;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

/// The `Server` header value on every response.
pub const SERVER_HEADER: &str = concat!("rookery/", env!("CARGO_PKG_VERSION"), " (atproto-relay)");

/// The middleware that adds [`SERVER_HEADER`].
pub fn server_header() -> DefaultHeaders {
    DefaultHeaders::new().add((actix_web::http::header::SERVER, SERVER_HEADER))
}

/// JSON 404 for paths no route matches, in the XRPC error shape: `MethodNotImplemented` under
/// `/xrpc/` (an XRPC method this relay does not serve), `NotFound` elsewhere.
///
/// Being the listeners' default service, this is the `/xrpc/` catch-all: it answers only
/// when no route matched, so route modules can be mounted in any order and none shadows
/// another (a catch-all route or an `/xrpc` scope would capture every later `/xrpc/` route).
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    if req.path().starts_with(xrpc::XRPC_PREFIX) {
        return xrpc::XrpcError::method_not_implemented(req.path()).to_response();
    }
    HttpResponse::NotFound().json(serde_json::json!({
        "error": "NotFound",
        "message": "no such endpoint",
    }))
}

/// Settings shared by both listeners.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSettings {
    /// Worker threads.
    pub workers: usize,
    /// How long graceful shutdown waits for open connections.
    pub shutdown_timeout: Duration,
}

/// Settings of the HTTP surfaces as a whole. They live here, beside the listeners that read
/// them; `config` fills them from the command line (this module never reads options itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    /// Public API address.
    pub bind: SocketAddr,
    /// Metrics address (its own listener, so scrapes answer while the public side is busy).
    pub metrics_bind: SocketAddr,
    /// Public API worker threads.
    pub workers: usize,
    /// How long graceful shutdown waits for open connections, on both listeners.
    pub shutdown_timeout: Duration,
}

impl HttpSettings {
    /// The public listener's settings.
    pub fn public_listener(&self) -> ListenerSettings {
        ListenerSettings {
            workers: self.workers,
            shutdown_timeout: self.shutdown_timeout,
        }
    }

    /// The metrics listener's settings: one worker, since a scrape every few seconds needs
    /// no more.
    pub fn metrics_listener(&self) -> ListenerSettings {
        ListenerSettings {
            workers: 1,
            shutdown_timeout: self.shutdown_timeout,
        }
    }
}

/// Binds the public API on `bind` and returns the (not yet polled) server and the bound
/// addresses. `configure` adds the routes; [`health::configure`] is always included.
/// Must be called inside an actix system; spawn or await the returned server.
pub fn start_public<F>(
    bind: SocketAddr,
    settings: ListenerSettings,
    configure: F,
) -> std::io::Result<(Server, Vec<SocketAddr>)>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    start_listener(bind, settings, move |cfg: &mut web::ServiceConfig| {
        health::configure(cfg);
        configure(cfg);
    })
}

/// One actix-web listener with rookery's common parts: the `Server` header, the JSON 404,
/// no signal handling of its own (`main` owns signals), and the given worker count.
pub(crate) fn start_listener<F>(
    bind: SocketAddr,
    settings: ListenerSettings,
    routes: F,
) -> std::io::Result<(Server, Vec<SocketAddr>)>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let server = HttpServer::new(move || {
        App::new()
            .wrap(server_header())
            .configure(routes.clone())
            .default_service(web::to(not_found))
    })
    .workers(settings.workers)
    .shutdown_timeout(settings.shutdown_timeout.as_secs().max(1))
    .disable_signals()
    .bind(bind)?;
    let addrs = server.addrs();
    Ok((server.run(), addrs))
}
