//! The account store against a real Postgres: creation within and beyond the host's account
//! limit (deleted accounts not counted), the load query, LRU eviction and reload, migration,
//! and cached accounts working while Postgres is unreachable.

use rookery::actors::account_store::{AccountStore, AccountStoreSettings, StoreError};
use rookery::actors::shard_rules::{AccountChange, LocalStatus};
use rookery::atproto::cid::cid_for_dag_cbor;
use rookery::atproto::tid::Tid;
use rookery::atproto::validate::RepoState;
use rookery::store::migrations;
use rookery::store::postgres::{Db, DbSettings};
use rookery::testkit::postgres::test_cluster;

async fn fresh_db() -> Db {
    let database = test_cluster().fresh_database().await.expect("db");
    let db = Db::new(database.pg_config, DbSettings::default()).expect("pool");
    migrations::migrate(&db).await.expect("migrate");
    db
}

async fn add_host(db: &Db, id: i64, limit: i64) {
    db.client()
        .await
        .expect("client")
        .execute(
            "INSERT INTO hosts (id, hostname, account_limit) VALUES ($1, $2, $3)",
            &[&id, &format!("pds{id}.example.com"), &limit],
        )
        .await
        .expect("host");
}

fn settings(max_entries: usize) -> AccountStoreSettings {
    AccountStoreSettings {
        max_entries,
        max_bytes: 1 << 20,
    }
}

#[actix_rt::test]
async fn creation_respects_the_host_limit_and_does_not_count_deleted_accounts() {
    let db = fresh_db().await;
    add_host(&db, 1, 3).await;
    add_host(&db, 2, 3).await;
    let mut store = AccountStore::new(db.clone(), settings(100));

    for i in 0..3 {
        let r = store
            .create(&format!("did:plc:a{i}"), 1)
            .await
            .expect("create");
        assert_eq!(r.local_status, LocalStatus::Active, "within the limit");
        assert_eq!(r.host_id, 1);
        assert_eq!(r.upstream_status, "active");
        assert_eq!(r.sync, None);
    }
    let over = store.create("did:plc:a3", 1).await.expect("create");
    assert_eq!(
        over.local_status,
        LocalStatus::Throttled,
        "beyond the limit"
    );
    // Another host's limit is its own.
    let other = store.create("did:plc:b0", 2).await.expect("create");
    assert_eq!(other.local_status, LocalStatus::Active);

    // A deleted account frees its slot.
    db.client()
        .await
        .expect("client")
        .execute(
            "UPDATE accounts SET upstream_status = 'deleted' WHERE did = 'did:plc:a0'",
            &[],
        )
        .await
        .expect("delete");
    // Throttled and deactivated accounts still count: 2 active + 1 throttled = 3.
    let again = store.create("did:plc:a4", 1).await.expect("create");
    assert_eq!(again.local_status, LocalStatus::Throttled);
    db.client()
        .await
        .expect("client")
        .execute(
            "UPDATE accounts SET upstream_status = 'deleted' WHERE did IN ('did:plc:a1', 'did:plc:a3')",
            &[],
        )
        .await
        .expect("delete");
    let freed = store.create("did:plc:a5", 1).await.expect("create");
    assert_eq!(freed.local_status, LocalStatus::Active);

    // Creating an existing account loads it; the rows agree with the cache.
    let existing = store.create("did:plc:a3", 1).await.expect("exists");
    assert_eq!(existing.local_status, LocalStatus::Throttled);
    let s = store.state();
    assert_eq!((s.created, s.created_throttled), (7, 2), "{s:?}");
    let rows: Vec<(String, String)> = db
        .client()
        .await
        .expect("client")
        .query(
            "SELECT did, local_status FROM accounts WHERE host_id = 1 ORDER BY did",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows.len(), 6);
    assert!(rows.contains(&("did:plc:a4".into(), "throttled".into())));
    assert!(rows.contains(&("did:plc:a5".into(), "active".into())));

    match store.create("did:plc:nohost", 99).await {
        Err(e @ StoreError::UnknownHost(99)) => assert!(!e.is_transient()),
        other => panic!("unknown host: {other:?}"),
    }
}

#[actix_rt::test]
async fn concurrent_creates_on_one_host_never_exceed_the_limit() {
    let db = fresh_db().await;
    add_host(&db, 1, 5).await;
    let mut tasks = Vec::new();
    for shard in 0..4 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut store = AccountStore::new(db, settings(100));
            let mut active = 0;
            for i in 0..5 {
                let r = store
                    .create(&format!("did:plc:s{shard}x{i}"), 1)
                    .await
                    .expect("create");
                active += usize::from(r.local_status == LocalStatus::Active);
            }
            active
        }));
    }
    let mut active = 0;
    for t in tasks {
        active += t.await.expect("task");
    }
    assert_eq!(active, 5, "exactly the limit is active");
}

#[actix_rt::test]
async fn load_joins_sync_state_eviction_is_bounded_and_reloads_from_postgres() {
    let db = fresh_db().await;
    add_host(&db, 1, 1000).await;
    let mut store = AccountStore::new(db.clone(), settings(3));
    assert!(store.load("did:plc:none").await.expect("load").is_none());

    let uid = store.create("did:plc:a", 1).await.expect("create").uid;
    let state = RepoState {
        rev: Tid::parse("3jzfcijpj2z2a").expect("tid"),
        commit: cid_for_dag_cbor(b"commit"),
        data: cid_for_dag_cbor(b"data"),
    };
    let change = AccountChange {
        uid,
        sync: Some(state),
        upstream_status: Some("deactivated".into()),
    };
    store.apply("did:plc:a", &change);
    let cached = store.cached("did:plc:a").expect("cached");
    assert_eq!(cached.sync, Some(state));
    assert_eq!(cached.upstream_status, "deactivated");
    // What the write-behind would write.
    let w = change.to_write();
    let sync = w.sync.expect("sync");
    db.client()
        .await
        .expect("client")
        .execute(
            "INSERT INTO account_sync_state (uid, rev, commit_cid, data_cid) VALUES ($1, $2, $3, $4)",
            &[&uid, &sync.rev, &sync.commit_cid, &sync.data_cid],
        )
        .await
        .expect("sync row");
    db.client()
        .await
        .expect("client")
        .execute(
            "UPDATE accounts SET upstream_status = 'deactivated' WHERE uid = $1",
            &[&uid],
        )
        .await
        .expect("status");

    for i in 0..5 {
        store
            .create(&format!("did:plc:f{i}"), 1)
            .await
            .expect("create");
        let s = store.state();
        assert!(s.entries <= 3, "{s:?}");
    }
    assert!(store.cached("did:plc:a").is_none(), "evicted");
    assert!(store.state().evictions >= 3);

    let loads = store.state().loads;
    let reloaded = store
        .load("did:plc:a")
        .await
        .expect("load")
        .expect("exists")
        .clone();
    assert_eq!(store.state().loads, loads + 1);
    assert_eq!(reloaded.uid, uid);
    assert_eq!(reloaded.sync, Some(state), "sync state joined");
    assert_eq!(reloaded.upstream_status, "deactivated");
    assert_eq!(reloaded.local_status, LocalStatus::Active);
    // A second load is a cache hit.
    let hits = store.state().hits;
    store.load("did:plc:a").await.expect("load");
    assert_eq!(store.state().hits, hits + 1);
    assert_eq!(store.state().loads, loads + 1);
}

#[actix_rt::test]
async fn migration_moves_the_host_id() {
    let db = fresh_db().await;
    add_host(&db, 1, 10).await;
    add_host(&db, 2, 10).await;
    let mut store = AccountStore::new(db.clone(), settings(10));
    store.create("did:plc:m", 1).await.expect("create");
    store.move_to_host("did:plc:m", 2).await.expect("move");
    assert_eq!(store.cached("did:plc:m").expect("cached").host_id, 2);
    let host: i64 = db
        .client()
        .await
        .expect("client")
        .query_one("SELECT host_id FROM accounts WHERE did = 'did:plc:m'", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(host, 2);
    store.invalidate("did:plc:m");
    let reloaded = store
        .load("did:plc:m")
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(reloaded.host_id, 2);
}

#[actix_rt::test]
async fn cached_accounts_work_while_postgres_is_unreachable() {
    let db = fresh_db().await;
    add_host(&db, 1, 10).await;
    let mut store = AccountStore::new(db.clone(), settings(10));
    store.create("did:plc:known", 1).await.expect("create");
    // The pool is closed: every statement fails as Postgres being down would.
    db.close();
    let known = store
        .load("did:plc:known")
        .await
        .expect("cached account still loads");
    assert!(known.is_some());
    match store.load("did:plc:unknown").await {
        Err(e) => assert!(e.is_transient(), "{e:?} is transient"),
        Ok(r) => panic!("unknown account without Postgres: {r:?}"),
    }
    match store.create("did:plc:new", 1).await {
        Err(e) => assert!(e.is_transient(), "{e:?}"),
        Ok(r) => panic!("created without Postgres: {r:?}"),
    }
    // A move still reaches the cache, and reports that the row was not written.
    let err = store
        .move_to_host("did:plc:known", 2)
        .await
        .expect_err("no db");
    assert!(err.is_transient());
    assert_eq!(store.cached("did:plc:known").expect("cached").host_id, 2);
}
