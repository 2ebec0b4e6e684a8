//! Schema migrations and the pooled Postgres access, against a real (test) cluster.

use std::time::Duration;

use rookery::store::migrations::{self, MIGRATIONS};
use rookery::store::postgres::{Db, DbError, DbSettings};
use rookery::testkit::postgres::test_cluster;

fn schema_file_count() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/schema"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sql"))
        .count()
}

async fn fresh_db(settings: DbSettings) -> Db {
    let database = test_cluster()
        .fresh_database()
        .await
        .expect("fresh database");
    Db::new(database.pg_config, settings).expect("pool")
}

#[tokio::test]
async fn migrations_apply_once_and_rerun_as_a_no_op() {
    let db = fresh_db(DbSettings::default()).await;
    let files = schema_file_count();
    assert!(files >= 1);

    let first = migrations::migrate(&db).await.expect("first run");
    assert_eq!(first.applied.len(), files);
    assert_eq!(first.already_applied, 0);

    let second = migrations::migrate(&db).await.expect("second run");
    assert!(second.applied.is_empty(), "{second:?}");
    assert_eq!(second.already_applied, files);

    let client = db.client().await.unwrap();
    let rows = client
        .query(
            "SELECT version, name FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), files, "one row per schema file");
    for (row, migration) in rows.iter().zip(MIGRATIONS) {
        assert_eq!(row.get::<_, i32>(0), migration.version);
        assert_eq!(row.get::<_, String>(1), migration.name);
    }
    let has_time: bool = client
        .query_one(
            "SELECT bool_and(applied_at IS NOT NULL AND applied_at <= now()) FROM schema_migrations",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(has_time);
}

#[tokio::test]
async fn concurrent_migrations_do_not_race() {
    let database = test_cluster().fresh_database().await.unwrap();
    let a = Db::new(database.pg_config.clone(), DbSettings::default()).unwrap();
    let b = Db::new(database.pg_config.clone(), DbSettings::default()).unwrap();
    let (ra, rb) = tokio::join!(migrations::migrate(&a), migrations::migrate(&b));
    let (ra, rb) = (ra.expect("a"), rb.expect("b"));
    // Every version was applied by exactly one of the two.
    let mut all: Vec<i32> = ra.applied.iter().chain(&rb.applied).copied().collect();
    all.sort();
    let expected: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(all, expected);
}

#[tokio::test]
async fn the_schema_has_what_the_relay_needs() {
    let db = fresh_db(DbSettings::default()).await;
    migrations::migrate(&db).await.unwrap();
    let client = db.client().await.unwrap();
    let expected: &[(&str, &[&str])] = &[
        (
            "hosts",
            &[
                "id",
                "hostname",
                "status",
                "last_seq",
                "account_count",
                "account_limit",
                "consecutive_failures",
                "trusted",
                "no_ssl",
                "admin_added",
                "ssrf_exempt",
                "created_at",
                "updated_at",
                "last_connected_at",
            ],
        ),
        (
            "accounts",
            &[
                "uid",
                "did",
                "host_id",
                "local_status",
                "upstream_status",
                "created_at",
                "updated_at",
                "throttled_before_takedown",
                "takedown_seq",
            ],
        ),
        (
            "account_sync_state",
            &["uid", "rev", "commit_cid", "data_cid", "updated_at"],
        ),
        ("domain_bans", &["domain", "created_at"]),
        (
            "did_cache",
            &[
                "did",
                "document",
                "signing_key",
                "pds_host",
                "handle",
                "resolved_at",
                "expires_at",
                "negative",
            ],
        ),
        ("relay_settings", &["key", "value", "updated_at"]),
    ];
    for (table, columns) in expected {
        let rows = client
            .query(
                "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1",
                &[table],
            )
            .await
            .unwrap();
        let present: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        for column in *columns {
            assert!(
                present.iter().any(|p| p == column),
                "{table}.{column} missing: {present:?}"
            );
        }
    }

    // Constraints hold: status values are checked, hostnames and DIDs are unique.
    client
        .execute(
            "INSERT INTO hosts (hostname) VALUES ('pds.example.com')",
            &[],
        )
        .await
        .unwrap();
    let err: DbError = client
        .execute(
            "INSERT INTO hosts (hostname) VALUES ('pds.example.com')",
            &[],
        )
        .await
        .unwrap_err()
        .into();
    assert!(err.is_unique_violation(), "{err}");
    assert_eq!(err.reason(), "query");
    let err: DbError = client
        .execute(
            "INSERT INTO hosts (hostname, status) VALUES ('other.example.com', 'bogus')",
            &[],
        )
        .await
        .unwrap_err()
        .into();
    assert!(matches!(err, DbError::Query(_)), "{err:?}");
    client
        .execute(
            "INSERT INTO accounts (did, host_id) SELECT 'did:plc:abc', id FROM hosts WHERE hostname = 'pds.example.com'",
            &[],
        )
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT local_status, upstream_status FROM accounts WHERE did = 'did:plc:abc'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "active");
    assert_eq!(row.get::<_, String>(1), "active");
}

#[tokio::test]
async fn statement_timeouts_become_a_typed_error() {
    let db = fresh_db(DbSettings {
        pool_size: 2,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_millis(200),
    })
    .await;
    db.ping().await.expect("ping");
    let client = db.client().await.unwrap();
    let err: DbError = client
        .simple_query("SELECT pg_sleep(3)")
        .await
        .unwrap_err()
        .into();
    assert!(matches!(err, DbError::Timeout), "{err:?}");
    assert_eq!(err.reason(), "timeout");
    assert!(err.is_transient());
    // The connection stays usable after a cancelled statement.
    client.simple_query("SELECT 1").await.expect("still usable");
    let err: DbError = client.simple_query("SELEC 1").await.unwrap_err().into();
    assert!(matches!(err, DbError::Query(_)), "{err:?}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn an_unreachable_database_is_a_connect_error_not_a_hang() {
    let temp = tempfile::tempdir().unwrap();
    let mut pg = tokio_postgres::Config::new();
    pg.host_path(temp.path())
        .port(5432)
        .user("postgres")
        .dbname("postgres");
    let db = Db::new(
        pg,
        DbSettings {
            pool_size: 1,
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(1),
        },
    )
    .unwrap();
    let err = db.ping().await.unwrap_err();
    assert!(matches!(err, DbError::Connect(_)), "{err:?}");
    assert_eq!(err.reason(), "connect");
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_full_pool_times_out_with_a_typed_error() {
    let db = fresh_db(DbSettings {
        pool_size: 1,
        connect_timeout: Duration::from_millis(300),
        statement_timeout: Duration::from_secs(5),
    })
    .await;
    let held = db.client().await.unwrap();
    let err = db.client().await.unwrap_err();
    assert!(matches!(err, DbError::PoolTimeout), "{err:?}");
    drop(held);
    let _slot = db.client().await.expect("slot free again");
}
