//! `com.atproto.sync.getRepo`: a 302 to the account's PDS (`https://`, or `http://` for a
//! `no_ssl` host), each refusal, and a client that follows the redirect reaching the PDS's
//! own `getRepo` with the same parameters.

use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

use crate::support::{Relay, SEED, sql};

const GET_REPO: &str = "/xrpc/com.atproto.sync.getRepo";

#[actix_rt::test]
async fn get_repo_redirects_to_the_accounts_pds() {
    let relay = Relay::start(SEED).await;
    let reply = relay.get(&format!("{GET_REPO}?did=did:plc:active")).await;
    assert_eq!(reply.status, 302);
    assert_eq!(
        reply.header("location"),
        Some("https://pds.example.com/xrpc/com.atproto.sync.getRepo?did=did%3Aplc%3Aactive")
    );
    assert!(reply.body.is_empty());

    let since = relay
        .get(&format!(
            "{GET_REPO}?did=did:plc:active&since=3jzfcijpj2z2a"
        ))
        .await;
    assert_eq!(since.status, 302);
    assert_eq!(
        since.header("location"),
        Some(
            "https://pds.example.com/xrpc/com.atproto.sync.getRepo?did=did%3Aplc%3Aactive&since=3jzfcijpj2z2a"
        )
    );

    // A no_ssl host (admin-added, e.g. a local PDS) is reached over http://, with its port.
    let local = relay
        .get(&format!("{GET_REPO}?did=did:web:dev.example.com"))
        .await;
    assert_eq!(local.status, 302);
    assert_eq!(
        local.header("location"),
        Some("http://localhost:2583/xrpc/com.atproto.sync.getRepo?did=did%3Aweb%3Adev.example.com")
    );

    // The relay needs no commit of its own to send a client to the PDS.
    let nocommit = relay.get(&format!("{GET_REPO}?did=did:plc:nocommit")).await;
    assert_eq!(nocommit.status, 302);

    // The redirect follows the account to its new host after a migration.
    sql(
        &relay.db,
        "UPDATE accounts SET host_id = 2 WHERE did = 'did:plc:active'",
    )
    .await;
    let moved = relay.get(&format!("{GET_REPO}?did=did:plc:active")).await;
    assert_eq!(
        moved.header("location"),
        Some("https://old.example.com/xrpc/com.atproto.sync.getRepo?did=did%3Aplc%3Aactive")
    );
    relay.stop().await;
}

#[actix_rt::test]
async fn get_repo_refuses_inactive_unknown_and_malformed_requests() {
    let relay = Relay::start(SEED).await;
    for (did, status, name, mentions) in [
        ("did:plc:unknown", 404, "RepoNotFound", "repo"),
        ("did:plc:takendown", 403, "RepoTakendown", "taken down"),
        ("did:plc:suspended", 403, "RepoSuspended", "suspended"),
        ("did:plc:deactivated", 403, "RepoDeactivated", "deactivated"),
        ("did:plc:deleted", 404, "RepoNotFound", "deleted"),
        ("did:plc:throttled", 403, "RepoInactive", "throttled"),
        ("did:plc:inactive", 403, "RepoInactive", "not active"),
    ] {
        let reply = relay.get(&format!("{GET_REPO}?did={did}")).await;
        assert_eq!(reply.header("location"), None, "{did}");
        reply.assert_error(status, name, mentions);
    }
    for bad in [
        "",
        "3jzfcijpj2z2",
        "3JZFCIJPJ2Z2A",
        "zzzzzzzzzzzzz",
        "3jzfcijpj2z2a1",
    ] {
        relay
            .get(&format!("{GET_REPO}?did=did:plc:active&since={bad}"))
            .await
            .assert_error(400, "InvalidRequest", "since");
    }
    relay
        .get(&format!(
            "{GET_REPO}?did=did:plc:active&since=3jzfcijpj2z2a&since=3jzfcijpj2z2a"
        ))
        .await
        .assert_error(400, "InvalidRequest", "since");
    // A takedown is checked before the parameters' use: no redirect leaks the host.
    relay
        .get(&format!(
            "{GET_REPO}?did=did:plc:takendown&since=3jzfcijpj2z2a"
        ))
        .await
        .assert_error(403, "RepoTakendown", "taken down");
    relay.stop().await;
}

/// What the stand-in PDS saw.
#[derive(Default)]
struct Seen {
    queries: Mutex<Vec<(String, String)>>,
}

async fn pds_get_repo(seen: web::Data<Arc<Seen>>, req: HttpRequest) -> HttpResponse {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    seen.queries.lock().unwrap().extend(pairs.iter().cloned());
    HttpResponse::Ok()
        .content_type("application/vnd.ipld.car")
        .body(&b"car bytes"[..])
}

#[actix_rt::test]
async fn following_the_redirect_reaches_the_pds_get_repo_with_the_same_parameters() {
    let seen = Arc::new(Seen::default());
    let data = web::Data::new(Arc::clone(&seen));
    let pds = HttpServer::new(move || {
        App::new().app_data(data.clone()).route(
            "/xrpc/com.atproto.sync.getRepo",
            web::get().to(pds_get_repo),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let pds_addr = pds.addrs()[0];
    let pds = pds.run();
    let pds_handle = pds.handle();
    actix_rt::spawn(pds);

    let relay = Relay::start(&format!(
        "INSERT INTO hosts (hostname, no_ssl) VALUES ('{pds_addr}', true);
         INSERT INTO accounts (did, host_id) VALUES ('did:plc:ewvi7nxzyoun6zhxrhs64oiz', 1);"
    ))
    .await;
    let client = awc::Client::builder()
        .timeout(crate::support::WAIT)
        .finish();
    let mut response = client
        .get(relay.url(&format!(
            "{GET_REPO}?did=did:plc:ewvi7nxzyoun6zhxrhs64oiz&since=3jzfcijpj2z2a"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/vnd.ipld.car"
    );
    assert_eq!(&response.body().await.unwrap()[..], b"car bytes");
    assert_eq!(
        *seen.queries.lock().unwrap(),
        [
            (
                "did".to_string(),
                "did:plc:ewvi7nxzyoun6zhxrhs64oiz".to_string()
            ),
            ("since".to_string(), "3jzfcijpj2z2a".to_string()),
        ]
    );
    relay.stop().await;
    pds_handle.stop(false).await;
}
