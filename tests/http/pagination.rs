//! Walking `listHosts` and `listRepos` over 1,200 hosts and 1,200 accounts: every row exactly
//! once, in order, including rows inserted while the walk is under way, and rows changed
//! between pages showing their new state without moving.

use std::collections::BTreeSet;

use crate::support::{Relay, sql};

const SEED: &str = "
INSERT INTO hosts (hostname, last_seq, status)
SELECT 'pds' || g || '.example.com', g, (ARRAY['active','idle','offline','throttled','banned'])[1 + g % 5]
FROM generate_series(1, 1200) g;
INSERT INTO accounts (did, host_id, upstream_status)
SELECT 'did:plc:walk' || lpad(g::text, 5, '0'), 1 + g % 1200, CASE WHEN g % 10 = 0 THEN 'deactivated' ELSE 'active' END
FROM generate_series(1, 1200) g;
INSERT INTO account_sync_state (uid, rev, commit_cid, data_cid)
SELECT uid, '3kaaaaaaaaaaa', 'bafycommit' || uid, 'bafydata' || uid FROM accounts;
";

/// Walks `path` with `limit`, calling `between` after each page with the page number; returns
/// every item's `key` in order and the number of pages.
async fn walk<F, Fut>(
    relay: &Relay,
    path: &str,
    list: &str,
    key: &str,
    limit: usize,
    mut between: F,
) -> (Vec<String>, usize)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}?limit={limit}&cursor={c}"),
            None => format!("{path}?limit={limit}"),
        };
        let reply = relay.get(&url).await;
        assert_eq!(reply.status, 200, "{url}");
        let body = reply.json();
        let items = body[list].as_array().expect("list");
        assert!(items.len() <= limit);
        pages += 1;
        seen.extend(
            items
                .iter()
                .map(|item| item[key].as_str().expect("key").to_string()),
        );
        match body.get("cursor") {
            Some(next) => {
                assert_eq!(items.len(), limit, "a cursor only after a full page");
                cursor = Some(next.as_str().expect("string cursor").to_string());
            }
            None => break,
        }
        between(pages).await;
        assert!(pages < 10_000, "the walk does not end");
    }
    (seen, pages)
}

fn assert_no_repeats(seen: &[String]) -> BTreeSet<String> {
    let set: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(set.len(), seen.len(), "a row came twice");
    set
}

#[actix_rt::test]
async fn list_hosts_walks_1200_hosts_without_gaps_or_repeats_while_hosts_are_added() {
    let relay = Relay::start(SEED).await;
    let db = relay.db.clone();
    let (seen, pages) = walk(&relay, "/xrpc/com.atproto.sync.listHosts", "hosts", "hostname", 97, |page| {
        let db = db.clone();
        async move {
            if page % 3 == 0 {
                // New hosts arrive (requestCrawl) and an early one changes status.
                sql(
                    &db,
                    &format!(
                        "INSERT INTO hosts (hostname) SELECT 'new{page}-' || g || '.example.com' FROM generate_series(1, 5) g;
                         UPDATE hosts SET status = 'banned' WHERE hostname = 'pds1.example.com';"
                    ),
                )
                .await;
            }
        }
    })
    .await;
    let set = assert_no_repeats(&seen);
    let client = relay.db.client().await.unwrap();
    let rows = client
        .query("SELECT hostname FROM hosts ORDER BY id", &[])
        .await
        .unwrap();
    let all: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(all.len() > 1200, "hosts were added during the walk");
    assert_eq!(
        seen, all,
        "every host once, in first-seen order, none skipped"
    );
    assert_eq!(set.len(), all.len());
    assert!(pages >= 1200 / 97);
    relay.stop().await;
}

#[actix_rt::test]
async fn list_repos_walks_1200_accounts_without_gaps_or_repeats_while_accounts_are_added() {
    let relay = Relay::start(SEED).await;
    let db = relay.db.clone();
    let (seen, _) = walk(&relay, "/xrpc/com.atproto.sync.listRepos", "repos", "did", 101, |page| {
        let db = db.clone();
        async move {
            if page % 4 == 1 {
                // New accounts with a first commit arrive; one without a commit yet too.
                sql(
                    &db,
                    &format!(
                        "WITH new AS (
                             INSERT INTO accounts (did, host_id)
                             SELECT 'did:plc:new' || {page} || 'x' || g, 1 FROM generate_series(1, 3) g
                             RETURNING uid)
                         INSERT INTO account_sync_state (uid, rev, commit_cid, data_cid)
                         SELECT uid, '3kaaaaaaaaaab', 'bafynew' || uid, 'bafynewdata' || uid FROM new;
                         INSERT INTO accounts (did, host_id) VALUES ('did:plc:bare{page}', 1);"
                    ),
                )
                .await;
            }
        }
    })
    .await;
    assert_no_repeats(&seen);
    let client = relay.db.client().await.unwrap();
    let rows = client
        .query(
            "SELECT a.did FROM accounts a JOIN account_sync_state s USING (uid) ORDER BY a.uid",
            &[],
        )
        .await
        .unwrap();
    let with_commit: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(
        with_commit.len() > 1200,
        "accounts were added during the walk"
    );
    assert_eq!(
        seen, with_commit,
        "every account with a commit once, in uid order"
    );
    assert!(!seen.iter().any(|d| d.starts_with("did:plc:bare")));
    relay.stop().await;
}

#[actix_rt::test]
async fn walks_with_every_limit_shape_cover_the_same_rows() {
    let relay = Relay::start(SEED).await;
    let mut walks = Vec::new();
    for limit in [1000, 600, 7] {
        let (seen, pages) = walk(
            &relay,
            "/xrpc/com.atproto.sync.listRepos",
            "repos",
            "did",
            limit,
            |_| async {},
        )
        .await;
        assert_eq!(pages, 1200usize.div_ceil(limit));
        assert_no_repeats(&seen);
        walks.push(seen);
    }
    // Single-row pages move one row at a time.
    let first = relay
        .get("/xrpc/com.atproto.sync.listRepos?limit=1")
        .await
        .json();
    let cursor = first["cursor"].as_str().unwrap().to_string();
    let second = relay
        .get(&format!(
            "/xrpc/com.atproto.sync.listRepos?limit=1&cursor={cursor}"
        ))
        .await
        .json();
    assert_eq!(first["repos"][0]["did"], "did:plc:walk00001");
    assert_eq!(second["repos"][0]["did"], "did:plc:walk00002");
    assert_eq!(walks[0].len(), 1200);
    assert_eq!(walks[0], walks[1]);
    assert_eq!(walks[0], walks[2]);
    // Deactivated accounts are listed with their status, not hidden.
    let page = relay
        .get("/xrpc/com.atproto.sync.listRepos?limit=10")
        .await
        .json();
    let tenth = &page["repos"][9];
    assert_eq!(tenth["did"], "did:plc:walk00010");
    assert_eq!(tenth["active"], false);
    assert_eq!(tenth["status"], "deactivated");
    relay.stop().await;
}
