//! Routing on the public listener: unknown XRPC methods, other modules' `/xrpc/` routes
//! mounted before and after the sync routes, wrong HTTP methods, and the `Server` header on
//! every kind of response (checked by `support` on each reply).

use actix_web::{HttpResponse, web};
use awc::http::Method;
use rookery::http::sync::METHODS;

use crate::support::{Relay, SEED};

#[actix_rt::test]
async fn unknown_xrpc_methods_are_404_method_not_implemented() {
    let relay = Relay::start(SEED).await;
    for path in [
        "/xrpc/com.example.nope",
        "/xrpc/com.atproto.sync.getBlocks?did=did:plc:active&cids=a",
        "/xrpc/com.atproto.sync.listReposByCollection?collection=app.bsky.feed.post",
        "/xrpc/com.atproto.sync.listhosts",
        "/xrpc/com.atproto.sync.listHosts/extra",
        "/xrpc/",
    ] {
        relay
            .get(path)
            .await
            .assert_error(404, "MethodNotImplemented", "not implemented");
    }
    let post = relay
        .request(Method::POST, "/xrpc/com.atproto.sync.notifyOfUpdate")
        .await;
    post.assert_error(
        404,
        "MethodNotImplemented",
        "com.atproto.sync.notifyOfUpdate",
    );
    // Outside /xrpc/ the plain JSON 404 stays.
    relay
        .get("/nope")
        .await
        .assert_error(404, "NotFound", "no such endpoint");
    relay
        .get("/xrpc")
        .await
        .assert_error(404, "NotFound", "no such endpoint");
    relay.stop().await;
}

async fn stub(name: &'static str) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "stub": name }))
}

#[actix_rt::test]
async fn routes_of_other_modules_are_not_shadowed_in_either_order() {
    let relay = Relay::start_with(
        SEED,
        |cfg| {
            cfg.route(
                "/xrpc/com.atproto.sync.requestCrawl",
                web::post().to(|| stub("requestCrawl")),
            );
        },
        |cfg| {
            cfg.route(
                "/xrpc/com.atproto.sync.subscribeRepos",
                web::get().to(|| stub("subscribeRepos")),
            );
        },
    )
    .await;
    let after = relay.get("/xrpc/com.atproto.sync.subscribeRepos").await;
    assert_eq!(after.status, 200);
    assert_eq!(after.json()["stub"], "subscribeRepos");
    let before = relay
        .request(Method::POST, "/xrpc/com.atproto.sync.requestCrawl")
        .await;
    assert_eq!(before.status, 200);
    assert_eq!(before.json()["stub"], "requestCrawl");
    // The health routes `start_public` always mounts, and the sync routes, still answer.
    let health = relay.get("/xrpc/_health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    assert_eq!(relay.get("/_health").await.status, 200);
    assert_eq!(
        relay.get("/xrpc/com.atproto.sync.listHosts").await.status,
        200
    );
    relay.get("/xrpc/com.example.unknown").await.assert_error(
        404,
        "MethodNotImplemented",
        "com.example.unknown",
    );
    relay.stop().await;
}

#[actix_rt::test]
async fn sync_queries_answer_get_only() {
    let relay = Relay::start(SEED).await;
    for method in METHODS {
        for verb in [Method::POST, Method::PUT, Method::DELETE] {
            let reply = relay
                .request(verb.clone(), &format!("/xrpc/{method}?did=did:plc:active"))
                .await;
            reply.assert_error(405, "InvalidRequest", "use GET");
            assert_eq!(reply.header("allow"), Some("GET"), "{verb} {method}");
        }
    }
    relay.stop().await;
}

#[actix_rt::test]
async fn every_sync_method_carries_the_server_header_on_success_and_error() {
    let relay = Relay::start(SEED).await;
    // `support` asserts the header on each of these replies; here each kind of outcome
    // (200, 302, 400, 403, 404, 405) is produced at least once.
    let mut statuses = std::collections::BTreeSet::new();
    for path in [
        "/xrpc/com.atproto.sync.listHosts",
        "/xrpc/com.atproto.sync.listHosts?limit=0",
        "/xrpc/com.atproto.sync.getHostStatus?hostname=pds.example.com",
        "/xrpc/com.atproto.sync.getHostStatus?hostname=nope.example.com",
        "/xrpc/com.atproto.sync.listRepos",
        "/xrpc/com.atproto.sync.getRepoStatus?did=did:plc:active",
        "/xrpc/com.atproto.sync.getLatestCommit?did=did:plc:takendown",
        "/xrpc/com.atproto.sync.getRepo?did=did:plc:active",
        "/xrpc/com.atproto.sync.getRepo",
    ] {
        statuses.insert(relay.get(path).await.status);
    }
    statuses.insert(
        relay
            .request(Method::POST, "/xrpc/com.atproto.sync.listRepos")
            .await
            .status,
    );
    assert_eq!(
        statuses.into_iter().collect::<Vec<_>>(),
        [200, 302, 400, 403, 404, 405]
    );
    relay.stop().await;
}

#[actix_rt::test]
async fn database_trouble_is_503_database_unavailable_and_health_stays_up() {
    let relay = Relay::start_without_database().await;
    for path in [
        "/xrpc/com.atproto.sync.listHosts",
        "/xrpc/com.atproto.sync.getHostStatus?hostname=pds.example.com",
        "/xrpc/com.atproto.sync.listRepos",
        "/xrpc/com.atproto.sync.getRepoStatus?did=did:plc:active",
        "/xrpc/com.atproto.sync.getLatestCommit?did=did:plc:active",
        "/xrpc/com.atproto.sync.getRepo?did=did:plc:active",
    ] {
        relay
            .get(path)
            .await
            .assert_error(503, "DatabaseUnavailable", "retry later");
    }
    // Parameters are checked first: a bad request is still a 400, not a database error.
    relay
        .get("/xrpc/com.atproto.sync.listHosts?limit=0")
        .await
        .assert_error(400, "InvalidRequest", "limit");
    assert_eq!(relay.get("/_health").await.status, 200);
    relay.stop().await;
}
