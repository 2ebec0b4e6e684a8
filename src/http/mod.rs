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
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Worker threads.
    pub workers: usize,
    /// How long graceful shutdown waits for open connections.
    pub shutdown_timeout: Duration,
    /// Where requests are counted, by route and status (none: not counted).
    pub metrics: Option<RequestMetrics>,
}

impl ListenerSettings {
    pub fn new(workers: usize, shutdown_timeout: Duration) -> ListenerSettings {
        ListenerSettings {
            workers,
            shutdown_timeout,
            metrics: None,
        }
    }

    /// Counts this listener's requests in `metrics`, labelled `listener`.
    pub fn with_metrics(
        mut self,
        metrics: &RequestMetrics,
        listener: &'static str,
    ) -> ListenerSettings {
        self.metrics = Some(RequestMetrics {
            listener,
            ..metrics.clone()
        });
        self
    }
}

/// HTTP requests by listener, route and status, and their handling time by route. The route
/// is the matched pattern (`/xrpc/com.atproto.sync.listHosts`, `/admin/pds/list`) or
/// `unmatched`, so the label values are the relay's routes, never what clients send.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    listener: &'static str,
    requests: prometheus::IntCounterVec,
    seconds: prometheus::HistogramVec,
}

impl RequestMetrics {
    pub fn register(registry: &prometheus::Registry) -> Result<RequestMetrics, prometheus::Error> {
        let m = RequestMetrics {
            listener: "",
            requests: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "rookery_http_requests_total",
                    "HTTP requests answered, by listener, route and status",
                ),
                &["listener", "route", "status"],
            )?,
            seconds: prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new(
                    "rookery_http_request_seconds",
                    "Seconds from request to response head, by listener and route",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["listener", "route"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.seconds.clone()))?;
        Ok(m)
    }

    /// Requests counted so far for this route and status on `listener` (tests).
    pub fn count(&self, listener: &str, route: &str, status: u16) -> u64 {
        self.requests
            .with_label_values(&[listener, route, &status.to_string()])
            .get()
    }
}

/// The listeners' outermost middleware: times and counts every request.
async fn count_request(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let metrics = req.app_data::<web::Data<RequestMetrics>>().cloned();
    let started = std::time::Instant::now();
    let res = next.call(req).await?;
    if let Some(m) = metrics {
        let route = res.request().match_pattern();
        let route = route.as_deref().unwrap_or("unmatched");
        m.requests
            .with_label_values(&[m.listener, route, res.status().as_str()])
            .inc();
        m.seconds
            .with_label_values(&[m.listener, route])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
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
        ListenerSettings::new(self.workers, self.shutdown_timeout)
    }

    /// The metrics listener's settings: one worker, since a scrape every few seconds needs
    /// no more.
    pub fn metrics_listener(&self) -> ListenerSettings {
        ListenerSettings::new(1, self.shutdown_timeout)
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
    let metrics = settings.metrics.clone();
    let server = HttpServer::new(move || {
        let app = App::new();
        let app = match &metrics {
            Some(m) => app.app_data(web::Data::new(m.clone())),
            None => app,
        };
        app.wrap(server_header())
            .wrap(actix_web::middleware::from_fn(count_request))
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
