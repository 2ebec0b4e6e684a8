//! `com.atproto.sync.listHosts` and `getHostStatus`: shapes, the `limit` bounds, cursors and
//! every bad parameter.

use crate::support::{Relay, SEED};

const LIST: &str = "/xrpc/com.atproto.sync.listHosts";
const STATUS: &str = "/xrpc/com.atproto.sync.getHostStatus";

#[actix_rt::test]
async fn list_hosts_shows_every_host_oldest_first_with_seq_and_status() {
    let relay = Relay::start(SEED).await;
    let reply = relay.get(LIST).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(
        body,
        serde_json::json!({
            "hosts": [
                // Accounts that are not deleted: pds.example.com's `did:plc:deleted` is not
                // counted (PROTOCOL.md §7).
                {"hostname": "pds.example.com", "seq": 42, "accountCount": 5, "status": "active"},
                {"hostname": "old.example.com", "seq": 7, "accountCount": 3, "status": "offline"},
                {"hostname": "localhost:2583", "seq": 0, "accountCount": 1, "status": "active"},
                {"hostname": "banned.example.com", "seq": 3, "accountCount": 0, "status": "banned"},
            ]
        }),
        "one page, so no cursor"
    );
    relay.stop().await;
}

#[actix_rt::test]
async fn list_hosts_pages_follow_the_cursor_and_the_last_page_has_none() {
    let relay = Relay::start(SEED).await;
    let first = relay.get(&format!("{LIST}?limit=3")).await.json();
    let names: Vec<&str> = first["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["pds.example.com", "old.example.com", "localhost:2583"]
    );
    let cursor = first["cursor"].as_str().expect("a cursor: a host follows");
    let second = relay
        .get(&format!("{LIST}?limit=3&cursor={cursor}"))
        .await
        .json();
    assert_eq!(second["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(second["hosts"][0]["hostname"], "banned.example.com");
    assert!(second.get("cursor").is_none(), "{second}");

    // Exactly `limit` rows left: still no cursor (no empty trailing page).
    let exact = relay.get(&format!("{LIST}?limit=4")).await.json();
    assert_eq!(exact["hosts"].as_array().unwrap().len(), 4);
    assert!(exact.get("cursor").is_none(), "{exact}");

    // A cursor past the end: an empty list, not an error.
    let past = relay.get(&format!("{LIST}?cursor=999999")).await;
    assert_eq!(past.status, 200);
    assert_eq!(past.json(), serde_json::json!({"hosts": []}));
    // An empty cursor is the first page.
    let empty = relay.get(&format!("{LIST}?cursor=&limit=1")).await.json();
    assert_eq!(empty["hosts"][0]["hostname"], "pds.example.com");
    relay.stop().await;
}

#[actix_rt::test]
async fn list_hosts_limit_defaults_to_200_and_allows_1_to_1000() {
    let relay = Relay::start(
        "INSERT INTO hosts (hostname) SELECT 'h' || g || '.example.com' FROM generate_series(1, 1001) g;",
    )
    .await;
    let count = |body: &serde_json::Value| body["hosts"].as_array().unwrap().len();
    let default = relay.get(LIST).await.json();
    assert_eq!(count(&default), 200);
    assert!(default["cursor"].is_string());
    let one = relay.get(&format!("{LIST}?limit=1")).await.json();
    assert_eq!(count(&one), 1);
    let max = relay.get(&format!("{LIST}?limit=1000")).await.json();
    assert_eq!(count(&max), 1000);
    assert!(max["cursor"].is_string(), "host 1001 follows");
    for bad in [
        "0",
        "1001",
        "-1",
        "abc",
        "",
        "1.5",
        "99999999999999999999999999",
    ] {
        relay
            .get(&format!("{LIST}?limit={bad}"))
            .await
            .assert_error(400, "InvalidRequest", "limit");
    }
    relay
        .get(&format!("{LIST}?limit=5&limit=6"))
        .await
        .assert_error(400, "InvalidRequest", "limit");
    relay.stop().await;
}

#[actix_rt::test]
async fn list_hosts_refuses_cursors_it_did_not_issue() {
    let relay = Relay::start(SEED).await;
    for bad in ["-1", "abc", "1e3", "0x10", "%20", "99999999999999999999"] {
        relay
            .get(&format!("{LIST}?cursor={bad}"))
            .await
            .assert_error(400, "InvalidRequest", "cursor");
    }
    relay
        .get(&format!("{LIST}?cursor=1&cursor=2"))
        .await
        .assert_error(400, "InvalidRequest", "cursor");
    relay.stop().await;
}

#[actix_rt::test]
async fn get_host_status_answers_known_hosts_case_insensitively() {
    let relay = Relay::start(SEED).await;
    let reply = relay
        .get(&format!("{STATUS}?hostname=pds.example.com"))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        serde_json::json!({"hostname": "pds.example.com", "seq": 42, "accountCount": 5, "status": "active"})
    );
    let upper = relay
        .get(&format!("{STATUS}?hostname=PDS.Example.COM"))
        .await
        .json();
    assert_eq!(upper["hostname"], "pds.example.com");
    let with_port = relay
        .get(&format!("{STATUS}?hostname=localhost%3A2583"))
        .await
        .json();
    assert_eq!(with_port["hostname"], "localhost:2583");
    let banned = relay
        .get(&format!("{STATUS}?hostname=banned.example.com"))
        .await
        .json();
    assert_eq!(banned["status"], "banned");
    relay
        .get(&format!("{STATUS}?hostname=unknown.example.com"))
        .await
        .assert_error(404, "HostNotFound", "host");
    relay.stop().await;
}

/// `accountCount` follows the accounts table as the relay writes it: a new account counts, a
/// deleted one stops counting (and counts again if its PDS reactivates it), a migrated one
/// moves to its new host.
#[actix_rt::test]
async fn account_count_follows_creation_deletion_and_migration() {
    let relay = Relay::start(SEED).await;
    let count = |host: &'static str| {
        let relay = &relay;
        async move {
            relay.get(&format!("{STATUS}?hostname={host}")).await.json()["accountCount"]
                .as_i64()
                .expect("accountCount")
        }
    };
    assert_eq!(
        (
            count("pds.example.com").await,
            count("old.example.com").await
        ),
        (5, 3)
    );
    crate::support::sql(
        &relay.db,
        "INSERT INTO accounts (did, host_id) VALUES ('did:plc:new', 1);",
    )
    .await;
    assert_eq!(count("pds.example.com").await, 6);
    // The write-behind's status statement marks an account deleted (and back).
    crate::support::sql(
        &relay.db,
        "UPDATE accounts SET upstream_status = 'deleted' WHERE did = 'did:plc:active';",
    )
    .await;
    assert_eq!(count("pds.example.com").await, 5);
    crate::support::sql(
        &relay.db,
        "UPDATE accounts SET upstream_status = 'active' WHERE did = 'did:plc:deleted';
         UPDATE accounts SET upstream_status = 'deactivated' WHERE did = 'did:plc:new';",
    )
    .await;
    assert_eq!(
        count("pds.example.com").await,
        6,
        "deactivated still counts"
    );
    // Migration: the account store moves the row to its new host.
    crate::support::sql(
        &relay.db,
        "UPDATE accounts SET host_id = 2 WHERE did = 'did:plc:new';
         UPDATE accounts SET host_id = 2 WHERE did = 'did:plc:active';",
    )
    .await;
    assert_eq!(
        (
            count("pds.example.com").await,
            count("old.example.com").await
        ),
        (5, 4),
        "a deleted account moving counts on neither host"
    );
    relay.stop().await;
}

#[actix_rt::test]
async fn get_host_status_refuses_anything_but_a_bare_hostname() {
    let relay = Relay::start(SEED).await;
    relay
        .get(STATUS)
        .await
        .assert_error(400, "InvalidRequest", "hostname is required");
    relay
        .get(&format!("{STATUS}?hostname="))
        .await
        .assert_error(400, "InvalidRequest", "hostname");
    for bad in [
        "https%3A%2F%2Fpds.example.com",
        "pds.example.com%2Fxrpc",
        "user%40pds.example.com",
        "pds.example.com%3A0",
        "pds.example.com%3A99999",
        "pds..example.com",
        "-pds.example.com",
        "p%C3%A9s.example.com",
    ] {
        relay
            .get(&format!("{STATUS}?hostname={bad}"))
            .await
            .assert_error(400, "InvalidRequest", "hostname");
    }
    let long = format!("{}com", "a.".repeat(200));
    relay
        .get(&format!("{STATUS}?hostname={long}"))
        .await
        .assert_error(400, "InvalidRequest", "hostname");
    relay
        .get(&format!(
            "{STATUS}?hostname=a.example.com&hostname=b.example.com"
        ))
        .await
        .assert_error(400, "InvalidRequest", "hostname");
    relay.stop().await;
}
