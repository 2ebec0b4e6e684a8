//! The crawl admin settings: the reference relay's shapes, bad values refused, and values
//! stored so that a new admission state (a restarted relay) sees them and they win over the
//! command-line defaults.

use std::sync::Arc;

use prometheus::Registry;
use rookery::http::request_crawl::{AdmissionState, CrawlMetrics, CrawlSettings};

use crate::support::{CrawlRelay, TestDns, crawl_settings};

async fn reload(relay: &CrawlRelay, defaults: CrawlSettings) -> AdmissionState {
    let db = rookery::store::postgres::Db::new(
        relay.pg_config.clone(),
        rookery::store::postgres::DbSettings::default(),
    )
    .expect("pool");
    AdmissionState::load(
        db,
        relay.pipeline().supervisor.clone(),
        Arc::new(TestDns::default()),
        defaults,
        CrawlMetrics::register(&Registry::new()).expect("metrics"),
    )
    .await
    .expect("load")
}

#[actix_rt::test]
async fn settings_round_trip_and_persist_over_the_flag_defaults() {
    let relay = CrawlRelay::start_with(
        "",
        CrawlSettings {
            public_crawl: false,
            new_hosts_per_day: 3,
            ..crawl_settings()
        },
    )
    .await;
    // Nothing stored: the flags' defaults.
    assert_eq!(
        relay.get("/admin/subs/getEnabled").await.json(),
        serde_json::json!({ "enabled": false })
    );
    assert_eq!(
        relay.get("/admin/subs/perDayLimit").await.json(),
        serde_json::json!({ "limit": 3 })
    );

    let body = relay
        .post("/admin/subs/setEnabled?enabled=true", "")
        .await
        .assert_success();
    assert_eq!(body["enabled"], true);
    let body = relay
        .post("/admin/subs/setPerDayLimit?limit=7", "")
        .await
        .assert_success();
    assert_eq!(body["limit"], 7);
    assert_eq!(
        relay.get("/admin/subs/getEnabled").await.json(),
        serde_json::json!({ "enabled": true })
    );
    assert_eq!(
        relay.get("/admin/subs/perDayLimit").await.json(),
        serde_json::json!({ "limit": 7 })
    );
    // Go's ParseBool spellings, as the reference relay reads them.
    relay
        .post("/admin/subs/setEnabled?enabled=F", "")
        .await
        .assert_success();
    assert!(!relay.admission.public_crawl_enabled());
    relay
        .post("/admin/subs/setEnabled?enabled=1", "")
        .await
        .assert_success();

    // A restarted relay (new state, same database) with other flags sees the stored values.
    let again = reload(&relay, crawl_settings()).await;
    assert!(again.public_crawl_enabled());
    assert_eq!(again.new_hosts_per_day(), 7);
    relay
        .post("/admin/subs/setEnabled?enabled=false", "")
        .await
        .assert_success();
    relay
        .post("/admin/subs/setPerDayLimit?limit=0", "")
        .await
        .assert_success();
    let again = reload(&relay, crawl_settings()).await;
    assert!(!again.public_crawl_enabled());
    assert_eq!(again.new_hosts_per_day(), 0);

    // Bad values change nothing and are admin errors.
    for path in [
        "/admin/subs/setEnabled",
        "/admin/subs/setEnabled?enabled=",
        "/admin/subs/setEnabled?enabled=yes",
        "/admin/subs/setEnabled?enabled=true&enabled=false",
        "/admin/subs/setPerDayLimit",
        "/admin/subs/setPerDayLimit?limit=-1",
        "/admin/subs/setPerDayLimit?limit=1000001",
        "/admin/subs/setPerDayLimit?limit=ten",
        "/admin/subs/setPerDayLimit?limit=%zz",
    ] {
        relay.post(path, "").await.assert_admin_error(400);
    }
    assert_eq!(
        relay.get("/admin/subs/perDayLimit").await.json(),
        serde_json::json!({ "limit": 0 })
    );
    // Wrong methods.
    let reply = relay.get("/admin/subs/setEnabled?enabled=true").await;
    reply.assert_admin_error(405);
    assert_eq!(reply.header("allow"), Some("POST"));
    relay
        .post("/admin/subs/getEnabled", "")
        .await
        .assert_admin_error(405);
    relay.stop().await;
}

#[actix_rt::test]
async fn a_hand_written_setting_of_the_wrong_shape_falls_back_to_the_default() {
    let relay = CrawlRelay::start(
        "INSERT INTO relay_settings (key, value) VALUES \
         ('public_crawl_enabled', '\"yes\"'), ('new_hosts_per_day', '-4');",
    )
    .await;
    assert!(relay.admission.public_crawl_enabled());
    assert_eq!(relay.admission.new_hosts_per_day(), 50);
    relay.stop().await;
}
