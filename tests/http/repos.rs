//! `com.atproto.sync.listRepos`, `getRepoStatus` and `getLatestCommit`: the shapes, the
//! account's published `active`/`status` (the firehose's rules), each error and each bad
//! parameter.

use crate::support::{Relay, SEED, seeded_commit};

const LIST: &str = "/xrpc/com.atproto.sync.listRepos";
const STATUS: &str = "/xrpc/com.atproto.sync.getRepoStatus";
const LATEST: &str = "/xrpc/com.atproto.sync.getLatestCommit";

#[actix_rt::test]
async fn list_repos_lists_accounts_with_a_commit_and_their_published_status() {
    let relay = Relay::start(SEED).await;
    let reply = relay.get(LIST).await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert!(body.get("cursor").is_none(), "{body}");
    let repos = body["repos"].as_array().unwrap();
    let dids: Vec<&str> = repos.iter().map(|r| r["did"].as_str().unwrap()).collect();
    assert_eq!(
        dids,
        [
            "did:plc:active",
            "did:plc:takendown",
            "did:plc:deactivated",
            "did:plc:suspended",
            "did:plc:deleted",
            "did:plc:throttled",
            "did:plc:desynchronized",
            "did:plc:inactive",
            "did:web:dev.example.com",
        ],
        "uid order; the account without a commit is left out"
    );
    let (rev, cid) = seeded_commit(1);
    assert_eq!(
        repos[0],
        serde_json::json!({"did": "did:plc:active", "head": cid, "rev": rev, "active": true})
    );
    let (rev, cid) = seeded_commit(3);
    assert_eq!(
        repos[1],
        serde_json::json!({
            "did": "did:plc:takendown", "head": cid, "rev": rev,
            "active": false, "status": "takendown",
        })
    );
    let status_of = |did: &str| {
        let repo = repos.iter().find(|r| r["did"] == did).unwrap();
        (repo["active"].as_bool().unwrap(), repo["status"].clone())
    };
    assert_eq!(
        status_of("did:plc:deactivated"),
        (false, "deactivated".into())
    );
    assert_eq!(status_of("did:plc:throttled"), (false, "throttled".into()));
    assert_eq!(
        status_of("did:web:dev.example.com"),
        (true, serde_json::Value::Null)
    );
    relay.stop().await;
}

#[actix_rt::test]
async fn list_repos_limit_defaults_to_500_and_allows_1_to_1000() {
    let relay = Relay::start(
        "INSERT INTO hosts (hostname) VALUES ('pds.example.com');
         INSERT INTO accounts (did, host_id) SELECT 'did:plc:a' || g, 1 FROM generate_series(1, 1001) g;
         INSERT INTO account_sync_state (uid, rev, commit_cid, data_cid)
         SELECT uid, '3kaaaaaaaaaaa', 'bafyc' || uid, 'bafyd' || uid FROM accounts;",
    )
    .await;
    let count = |body: &serde_json::Value| body["repos"].as_array().unwrap().len();
    let default = relay.get(LIST).await.json();
    assert_eq!(count(&default), 500);
    assert!(default["cursor"].is_string());
    assert_eq!(
        count(&relay.get(&format!("{LIST}?limit=1")).await.json()),
        1
    );
    let max = relay.get(&format!("{LIST}?limit=1000")).await.json();
    assert_eq!(count(&max), 1000);
    assert!(max["cursor"].is_string());
    for bad in ["0", "1001", "-5", "ten", "", "1000000000000000000000"] {
        relay
            .get(&format!("{LIST}?limit={bad}"))
            .await
            .assert_error(400, "InvalidRequest", "limit");
    }
    for bad in ["-1", "x", "1.0"] {
        relay
            .get(&format!("{LIST}?cursor={bad}"))
            .await
            .assert_error(400, "InvalidRequest", "cursor");
    }
    relay.stop().await;
}

#[actix_rt::test]
async fn get_repo_status_gives_active_status_and_rev_only_when_active() {
    let relay = Relay::start(SEED).await;
    let (rev, _) = seeded_commit(1);
    let active = relay.get(&format!("{STATUS}?did=did:plc:active")).await;
    assert_eq!(active.status, 200);
    assert_eq!(
        active.json(),
        serde_json::json!({"did": "did:plc:active", "active": true, "rev": rev})
    );
    let encoded = relay
        .get(&format!("{STATUS}?did=did%3Aplc%3Aactive"))
        .await
        .json();
    assert_eq!(encoded["did"], "did:plc:active");
    let nocommit = relay
        .get(&format!("{STATUS}?did=did:plc:nocommit"))
        .await
        .json();
    assert_eq!(
        nocommit,
        serde_json::json!({"did": "did:plc:nocommit", "active": true})
    );
    for (did, status) in [
        ("did:plc:takendown", "takendown"),
        ("did:plc:deactivated", "deactivated"),
        ("did:plc:suspended", "suspended"),
        ("did:plc:deleted", "deleted"),
        ("did:plc:throttled", "throttled"),
        ("did:plc:desynchronized", "desynchronized"),
    ] {
        let body = relay.get(&format!("{STATUS}?did={did}")).await.json();
        assert_eq!(
            body,
            serde_json::json!({"did": did, "active": false, "status": status}),
            "{did}"
        );
    }
    relay
        .get(&format!("{STATUS}?did=did:plc:unknown"))
        .await
        .assert_error(404, "RepoNotFound", "repo");
    relay.stop().await;
}

#[actix_rt::test]
async fn get_latest_commit_answers_active_accounts_and_names_each_refusal() {
    let relay = Relay::start(SEED).await;
    let (rev, cid) = seeded_commit(1);
    let reply = relay.get(&format!("{LATEST}?did=did:plc:active")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), serde_json::json!({"cid": cid, "rev": rev}));
    for (did, status, name, mentions) in [
        ("did:plc:nocommit", 404, "RepoNotSynchronized", "commit"),
        ("did:plc:unknown", 404, "RepoNotFound", "repo"),
        ("did:plc:takendown", 403, "RepoTakendown", "taken down"),
        ("did:plc:suspended", 403, "RepoSuspended", "suspended"),
        ("did:plc:deactivated", 403, "RepoDeactivated", "deactivated"),
        ("did:plc:deleted", 404, "RepoNotFound", "deleted"),
        ("did:plc:throttled", 403, "RepoInactive", "throttled"),
        (
            "did:plc:desynchronized",
            403,
            "RepoInactive",
            "desynchronized",
        ),
        ("did:plc:inactive", 403, "RepoInactive", "not active"),
    ] {
        relay
            .get(&format!("{LATEST}?did={did}"))
            .await
            .assert_error(status, name, mentions);
    }
    relay.stop().await;
}

#[actix_rt::test]
async fn did_parameters_are_required_and_checked() {
    let relay = Relay::start(SEED).await;
    for path in [STATUS, LATEST, "/xrpc/com.atproto.sync.getRepo"] {
        relay
            .get(path)
            .await
            .assert_error(400, "InvalidRequest", "did is required");
        relay
            .get(&format!("{path}?did="))
            .await
            .assert_error(400, "InvalidRequest", "did");
        for bad in [
            "plc:abc",
            "did:PLC:abc",
            "did:plc:abc%3A",
            "did:plc:a%20b",
            "did%3Aplc",
            "did:plc:%F0%9F%A6%80",
        ] {
            relay.get(&format!("{path}?did={bad}")).await.assert_error(
                400,
                "InvalidRequest",
                "did",
            );
        }
        let long = format!("did:plc:{}", "a".repeat(2048));
        relay
            .get(&format!("{path}?did={long}"))
            .await
            .assert_error(400, "InvalidRequest", "did");
        relay
            .get(&format!("{path}?did=did:plc:active&did=did:plc:active"))
            .await
            .assert_error(400, "InvalidRequest", "did");
        // Unknown parameters are ignored, as XRPC servers do.
        let ok = relay
            .get(&format!("{path}?did=did:plc:active&extra=1"))
            .await;
        assert!(matches!(ok.status, 200 | 302), "{path}: {}", ok.status);
    }
    relay.stop().await;
}
