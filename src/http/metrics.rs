//! The metrics listener: `GET /metrics` in the Prometheus text format.
//!
//! Why one explicit `Registry` instead of prometheus' global default: every part of the
//! relay receives the registry it registers into, so tests can build isolated instances and
//! nothing registers by side effect. This module registers the process-level series
//! (build info, start time); actors add theirs later.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::dev::Server;
use actix_web::{HttpResponse, web};
use prometheus::{Encoder, Gauge, IntGaugeVec, Opts, Registry, TextEncoder};

use super::ListenerSettings;

/// The relay's metric registry plus the process-level series.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `rookery_build_info{version}` = 1.
    pub build_info: IntGaugeVec,
    /// `rookery_process_start_time_seconds`: unix time the process started.
    pub start_time: Gauge,
}

impl Metrics {
    /// A fresh registry with the process-level series registered.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("rookery_build_info", "Build information; always 1."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info.clone()))?;
        let start_time = Gauge::new(
            "rookery_process_start_time_seconds",
            "Unix time at which the process started.",
        )?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        start_time.set(now);
        registry.register(Box::new(start_time.clone()))?;
        Ok(Metrics {
            registry,
            build_info,
            start_time,
        })
    }

    /// The registry other parts register their metrics into.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders every registered metric in the text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        render(&self.registry)
    }
}

/// Renders a registry in the text exposition format.
pub fn render(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut buffer = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buffer)?;
    Ok(String::from_utf8_lossy(&buffer).into_owned())
}

async fn metrics_handler(registry: web::Data<Registry>) -> HttpResponse {
    match render(&registry) {
        Ok(text) => HttpResponse::Ok()
            .content_type(TextEncoder::new().format_type())
            .body(text),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            HttpResponse::InternalServerError().body("metrics encoding failed")
        }
    }
}

/// Adds `GET /metrics` serving `registry`.
pub fn configure(registry: Registry) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(registry.clone()))
            .route("/metrics", web::get().to(metrics_handler));
    }
}

/// Binds the metrics listener; returns the (not yet polled) server and bound addresses.
pub fn start_metrics(
    bind: SocketAddr,
    registry: Registry,
    settings: ListenerSettings,
) -> std::io::Result<(Server, Vec<SocketAddr>)> {
    super::start_listener(bind, settings, configure(registry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as actix_test;

    #[test]
    fn renders_build_info_and_start_time() {
        let metrics = Metrics::new().unwrap();
        let text = metrics.render().unwrap();
        assert!(text.contains(&format!(
            "rookery_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("rookery_process_start_time_seconds "));
    }

    #[actix_web::test]
    async fn metrics_route_serves_text_format() {
        let metrics = Metrics::new().unwrap();
        let app = actix_test::init_service(
            actix_web::App::new().configure(configure(metrics.registry().clone())),
        )
        .await;
        let resp = actix_test::call_service(
            &app,
            actix_test::TestRequest::get().uri("/metrics").to_request(),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()
                .get("content-type")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let body = actix_test::read_body(resp).await;
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .contains("rookery_build_info")
        );
    }
}
