//! The health probe against small HTTP servers on 127.0.0.1: a fast one, one that answers
//! 500, one that stalls past the probe's 1 s timeout, and a port where nothing listens.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use rookery::sim::probe::{Probe, ProbeSettings};

/// `/ok` answers 200 at once, `/fail` 500, `/stall` 200 after 5 s.
fn serve() -> SocketAddr {
    let server = HttpServer::new(|| {
        App::new()
            .route(
                "/ok",
                web::get().to(|| async { HttpResponse::Ok().body("ok") }),
            )
            .route(
                "/fail",
                web::get().to(|| async { HttpResponse::InternalServerError().finish() }),
            )
            .route(
                "/stall",
                web::get().to(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    HttpResponse::Ok().finish()
                }),
            )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    actix_rt::spawn(server.run());
    addr
}

fn fast(url: String) -> ProbeSettings {
    ProbeSettings {
        every: Duration::from_millis(20),
        ..ProbeSettings::new(url)
    }
}

#[actix_rt::test]
async fn a_fast_server_gives_small_sane_percentiles_and_no_failure() {
    let addr = serve();
    let probe = Probe::start(fast(format!("http://{addr}/ok")));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let live = probe.snapshot();
    let report = probe.stop().await;
    assert!(report.requests >= 10, "{report:?}");
    assert!(report.requests >= live.requests);
    assert_eq!(report.failures, 0, "{report:?}");
    assert!(report.p50_ms > 0.0, "{report:?}");
    assert!(report.p50_ms <= report.p99_ms && report.p99_ms <= report.max_ms);
    assert!(report.p99_ms < 200.0, "{report:?}");
}

#[actix_rt::test]
async fn every_500_and_every_refused_connection_is_a_failure() {
    let addr = serve();
    let probe = Probe::start(fast(format!("http://{addr}/fail")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = probe.stop().await;
    assert!(report.requests >= 3, "{report:?}");
    assert_eq!(report.failures, report.requests, "{report:?}");
    assert_eq!(report.bad_status, report.requests);
    assert_eq!(report.timeouts, 0);

    // A port nobody listens on (bound, then released).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let probe = Probe::start(fast(format!("http://{closed}/_health")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = probe.stop().await;
    assert!(report.requests >= 3, "{report:?}");
    assert_eq!(report.failures, report.requests, "{report:?}");
    assert_eq!((report.bad_status, report.timeouts), (0, 0));
}

#[actix_rt::test]
async fn a_server_that_stalls_past_one_second_times_out_and_shows_in_max() {
    let addr = serve();
    // The defaults: every 250 ms, 1 s timeout.
    let probe = Probe::start(ProbeSettings::new(format!("http://{addr}/stall")));
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let report = probe.stop().await;
    // Two timed out (at 1 s and 2 s); the third was abandoned by stop.
    assert_eq!(report.requests, 2, "{report:?}");
    assert_eq!(report.timeouts, 2, "{report:?}");
    assert_eq!(report.failures, 2);
    assert!(
        (990.0..=1000.0).contains(&report.max_ms),
        "timeouts count as the full timeout: {report:?}"
    );
}
