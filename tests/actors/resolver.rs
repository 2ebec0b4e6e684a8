//! The HostAuthorityResolver against a `SimPlc` over real HTTP on 127.0.0.1 and the test
//! Postgres: resolution, singleflight, caches and their TTLs, purge and forced (rate-limited)
//! re-resolution, host authority, transient errors, the `did_cache` second level, bounded
//! concurrency, did:web on localhost and invalid DIDs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpResponse, HttpServer, web};
use futures_util::future::join_all;
use prometheus::Registry;
use rookery::actors::obs::ActorMetrics;
use rookery::actors::resolver::{HostCheck, ResolveError, Resolver, ResolverSettings, Transient};
use rookery::atproto::did_doc::PdsEndpoint;
use rookery::atproto::keys::{Curve, PrivateKey, PublicKey};
use rookery::sim::{PlcEntry, SimPlc};
use rookery::store::migrations;
use rookery::store::postgres::{Db, DbSettings};
use rookery::testkit::postgres::test_cluster;

use crate::support::eventually;

const PDS: &str = "http://localhost:2583";

fn settings(plc: &SimPlc) -> ResolverSettings {
    ResolverSettings {
        plc_url: plc.url(),
        request_timeout: Duration::from_secs(5),
        allow_localhost_did_web: true,
        ..ResolverSettings::default()
    }
}

fn start(settings: ResolverSettings, db: Option<Db>) -> Resolver {
    let registry = Registry::new();
    let metrics = ActorMetrics::register(&registry).expect("actor metrics");
    Resolver::start(settings, db, &metrics, &registry).expect("resolver starts")
}

fn new_key() -> PublicKey {
    PrivateKey::generate(Curve::K256).public_key()
}

/// A fresh DID registered at `PDS`.
fn register(plc: &SimPlc) -> (String, PlcEntry) {
    let did = plc.new_did();
    let entry = PlcEntry {
        handle: format!("{}.sim.test", &did["did:plc:".len()..][..8]),
        signing_key: new_key(),
        pds_endpoint: PDS.to_string(),
        tombstoned: false,
    };
    plc.register(&did, entry.clone());
    (did, entry)
}

async fn migrated_db() -> Db {
    let database = test_cluster().fresh_database().await.expect("database");
    let db = Db::new(database.pg_config, DbSettings::default()).expect("pool");
    migrations::migrate(&db).await.expect("migrate");
    db
}

#[actix_rt::test]
async fn resolves_a_registered_did_and_then_answers_from_memory() {
    let plc = SimPlc::start().expect("plc");
    let resolver = start(settings(&plc), None);
    let (did, entry) = register(&plc);

    let identity = resolver.resolve(&did).await.expect("resolves");
    assert_eq!(identity.did, did);
    assert_eq!(identity.signing_key, entry.signing_key);
    assert_eq!(identity.pds, PdsEndpoint::parse(PDS).expect("endpoint"));
    assert_eq!(identity.pds.host, "localhost:2583");
    assert_eq!(identity.handle.as_deref(), Some(entry.handle.as_str()));
    assert_eq!(plc.requests_for(&did), 1);

    let again = resolver.resolve(&did).await.expect("cached");
    assert!(Arc::ptr_eq(&identity, &again));
    assert_eq!(plc.requests_for(&did), 1, "a cached DID makes no request");
    assert_eq!(resolver.metrics().outcome("hit"), 1);
    assert_eq!(resolver.metrics().outcome("resolved"), 1);
    assert_eq!(resolver.state().await.positive_entries, 1);
    plc.stop().await;
}

#[actix_rt::test]
async fn concurrent_lookups_of_one_did_make_one_request() {
    let plc = SimPlc::start().expect("plc");
    let resolver = start(settings(&plc), None);
    let (did, entry) = register(&plc);
    plc.set_response_delay(Duration::from_millis(200));

    let lookups = (0..100).map(|_| {
        let (resolver, did) = (resolver.clone(), did.clone());
        async move { resolver.resolve(&did).await }
    });
    let results = join_all(lookups).await;
    let first = results[0].clone().expect("resolves");
    for result in results {
        let identity = result.expect("every caller gets the identity");
        assert!(Arc::ptr_eq(&identity, &first));
    }
    assert_eq!(first.signing_key, entry.signing_key);
    assert_eq!(plc.requests_for(&did), 1, "singleflight");
    assert_eq!(resolver.metrics().outcome("singleflight_joined"), 99);
    plc.stop().await;
}

#[actix_rt::test]
async fn purge_and_fresh_lookups_see_a_rotated_key_and_fresh_is_rate_limited() {
    let plc = SimPlc::start().expect("plc");
    let resolver = start(settings(&plc), None);
    let (did, entry) = register(&plc);
    assert_eq!(
        resolver.resolve(&did).await.expect("resolves").signing_key,
        entry.signing_key
    );

    let rotated = new_key();
    plc.set_key(&did, rotated.clone()).expect("rotate");
    assert_eq!(
        resolver.resolve(&did).await.expect("cached").signing_key,
        entry.signing_key,
        "the cache does not know yet"
    );
    resolver.purge(&did).await;
    assert_eq!(
        resolver.resolve(&did).await.expect("resolves").signing_key,
        rotated
    );
    assert_eq!(plc.requests_for(&did), 2);

    let rotated_again = new_key();
    plc.set_key(&did, rotated_again.clone()).expect("rotate");
    assert_eq!(
        resolver
            .resolve_fresh(&did)
            .await
            .expect("fresh")
            .signing_key,
        rotated_again
    );
    assert_eq!(plc.requests_for(&did), 3);

    // A hostile host repeating bad signatures cannot force a lookup per event.
    plc.set_key(&did, new_key()).expect("rotate");
    for _ in 0..5 {
        assert_eq!(
            resolver
                .resolve_fresh(&did)
                .await
                .expect("cached")
                .signing_key,
            rotated_again
        );
    }
    assert_eq!(plc.requests_for(&did), 3);
    assert_eq!(resolver.metrics().outcome("fresh"), 1);
    assert_eq!(resolver.metrics().outcome("fresh_rate_limited"), 5);
    plc.stop().await;
}

#[actix_rt::test]
async fn fresh_lookups_are_allowed_again_after_the_interval() {
    let plc = SimPlc::start().expect("plc");
    let resolver = start(
        ResolverSettings {
            fresh_interval: Duration::from_millis(200),
            ..settings(&plc)
        },
        None,
    );
    let (did, _) = register(&plc);
    resolver.resolve_fresh(&did).await.expect("fresh");
    let rotated = new_key();
    plc.set_key(&did, rotated.clone()).expect("rotate");
    let picked_up = eventually(Duration::from_secs(3), || async {
        resolver
            .resolve_fresh(&did)
            .await
            .is_ok_and(|id| id.signing_key == rotated)
    })
    .await;
    assert!(picked_up);
    assert_eq!(plc.requests_for(&did), 2);
    plc.stop().await;
}

#[actix_rt::test]
async fn host_mismatch_re_resolves_once_then_refuses() {
    let plc = SimPlc::start().expect("plc");
    let resolver = start(settings(&plc), None);
    let (did, _) = register(&plc);
    resolver.resolve(&did).await.expect("resolves");

    // A migration the cache has not seen: the new host is accepted after one re-resolution.
    plc.set_pds(&did, "http://localhost:2584").expect("migrate");
    match resolver.check_host(&did, "localhost:2584").await {
        Ok(HostCheck::Authoritative(id)) => assert_eq!(id.pds.host, "localhost:2584"),
        other => panic!("expected authoritative, got {other:?}"),
    }
    assert_eq!(plc.requests_for(&did), 2);
    assert_eq!(resolver.metrics().outcome("host_mismatch"), 1);

    // The old host (same hostname, other port) is refused, without another request.
    match resolver.check_host(&did, "localhost:2583").await {
        Ok(HostCheck::NotAuthoritative(id)) => assert_eq!(id.pds.host, "localhost:2584"),
        other => panic!("expected not authoritative, got {other:?}"),
    }
    assert!(matches!(
        resolver.check_host(&did, "localhost:2584").await,
        Ok(HostCheck::Authoritative(_))
    ));
    assert_eq!(plc.requests_for(&did), 2);
    plc.stop().await;
}

#[actix_rt::test]
async fn not_found_and_tombstoned_are_cached_negatively() {
    let plc = SimPlc::start().expect("plc");
    let resolver = start(settings(&plc), None);
    let unknown = plc.new_did();
    assert_eq!(
        resolver.resolve(&unknown).await,
        Err(ResolveError::NotFound)
    );
    assert_eq!(
        resolver.resolve(&unknown).await,
        Err(ResolveError::NotFound)
    );
    assert_eq!(
        plc.not_found_requests(),
        1,
        "the second answer came from memory"
    );
    assert_eq!(resolver.metrics().outcome("negative_hit"), 1);

    let (gone, _) = register(&plc);
    plc.tombstone(&gone).expect("tombstone");
    assert_eq!(resolver.resolve(&gone).await, Err(ResolveError::Tombstoned));
    assert_eq!(resolver.resolve(&gone).await, Err(ResolveError::Tombstoned));
    assert_eq!(plc.requests_for(&gone), 1);
    let state = resolver.state().await;
    assert_eq!((state.positive_entries, state.negative_entries), (0, 2));
    plc.stop().await;
}

#[actix_rt::test]
async fn cached_answers_expire_after_their_ttl() {
    let plc = SimPlc::start().expect("plc");
    let resolver = start(
        ResolverSettings {
            positive_ttl: Duration::from_millis(300),
            negative_ttl: Duration::from_millis(150),
            ..settings(&plc)
        },
        None,
    );
    let unknown = plc.new_did();
    let (did, _) = register(&plc);
    assert_eq!(
        resolver.resolve(&unknown).await,
        Err(ResolveError::NotFound)
    );
    resolver.resolve(&did).await.expect("resolves");
    assert!(
        eventually(Duration::from_secs(3), || async {
            let _ = resolver.resolve(&unknown).await;
            plc.not_found_requests() >= 2
        })
        .await,
        "the negative entry expired"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            let _ = resolver.resolve(&did).await;
            plc.requests_for(&did) >= 2
        })
        .await,
        "the positive entry expired"
    );
    plc.stop().await;
}

#[actix_rt::test]
async fn an_unreachable_directory_is_a_transient_error_and_not_cached() {
    let plc = SimPlc::start().expect("plc");
    let resolver = start(settings(&plc), None);
    let (warm, _) = register(&plc);
    resolver.resolve(&warm).await.expect("resolves");
    let (did, _) = register(&plc);
    plc.stop().await;

    for _ in 0..2 {
        let error = resolver.resolve(&did).await.expect_err("directory is down");
        assert!(error.is_transient(), "{error:?}");
    }
    let metrics = resolver.metrics();
    let errors: u64 = [
        "error_connect",
        "error_transport",
        "error_timeout",
        "error_body",
    ]
    .iter()
    .map(|o| metrics.outcome(o))
    .sum();
    assert_eq!(errors, 2, "each call tried again: nothing was cached");
    assert!(metrics.outcome("client_recycled") >= 1);
    assert_eq!(resolver.state().await.negative_entries, 0);
    // What was resolved before the outage still answers.
    resolver.resolve(&warm).await.expect("cached");
}

#[actix_rt::test]
async fn did_cache_is_a_second_level_shared_across_restarts() {
    let plc = SimPlc::start().expect("plc");
    let db = migrated_db().await;
    let (did, entry) = register(&plc);
    let unknown = plc.new_did();
    {
        let first = start(settings(&plc), Some(db.clone()));
        first.resolve(&did).await.expect("resolves");
        assert_eq!(first.resolve(&unknown).await, Err(ResolveError::NotFound));
        assert_eq!(first.metrics().outcome("pg_miss"), 2);
    }
    let client = db.client().await.expect("client");
    let row = client
        .query_one(
            "SELECT signing_key, pds_host, handle, negative FROM did_cache WHERE did = $1",
            &[&did],
        )
        .await
        .expect("row");
    assert_eq!(
        row.get::<_, Option<String>>(0),
        Some(entry.signing_key.to_multikey())
    );
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("localhost:2583")
    );
    assert_eq!(row.get::<_, Option<String>>(2), Some(entry.handle.clone()));
    assert!(!row.get::<_, bool>(3));

    let second = start(settings(&plc), Some(db.clone()));
    let identity = second.resolve(&did).await.expect("from did_cache");
    assert_eq!(identity.signing_key, entry.signing_key);
    assert_eq!(identity.pds.host, "localhost:2583");
    assert_eq!(second.resolve(&unknown).await, Err(ResolveError::NotFound));
    assert_eq!(second.metrics().outcome("pg_hit"), 2);
    assert_eq!(
        plc.requests_for(&did),
        1,
        "no PLC request after the restart"
    );
    assert_eq!(plc.not_found_requests(), 1);

    // `#identity` purges the second level too.
    second.purge(&did).await;
    let third = start(settings(&plc), Some(db.clone()));
    third.resolve(&did).await.expect("resolves");
    assert_eq!(plc.requests_for(&did), 2);
    plc.stop().await;
}

#[actix_rt::test]
async fn resolution_works_while_postgres_is_unreachable() {
    let plc = SimPlc::start().expect("plc");
    let mut pg = tokio_postgres::Config::new();
    // Port 1 on loopback: refused at once.
    pg.host("127.0.0.1")
        .port(1)
        .user("rookery")
        .dbname("rookery");
    let db = Db::new(
        pg,
        DbSettings {
            connect_timeout: Duration::from_secs(1),
            ..DbSettings::default()
        },
    )
    .expect("pool");
    let resolver = start(settings(&plc), Some(db));
    let (a, entry) = register(&plc);
    let (b, _) = register(&plc);
    assert_eq!(
        resolver
            .resolve(&a)
            .await
            .expect("from the network")
            .signing_key,
        entry.signing_key
    );
    resolver.resolve(&b).await.expect("from the network");
    let metrics = resolver.metrics();
    assert_eq!(metrics.outcome("pg_error"), 1);
    // a's write, b's read and b's write: skipped for a while after the failure.
    assert_eq!(metrics.outcome("pg_skipped"), 3);
    assert_eq!(metrics.outcome("resolved"), 2);
    assert!(resolver.state().await.pg_skipped);
    plc.stop().await;
}

#[actix_rt::test]
async fn in_flight_requests_never_exceed_the_limit() {
    let plc = SimPlc::start().expect("plc");
    let resolver = start(
        ResolverSettings {
            max_in_flight: 4,
            fetchers: 2,
            ..settings(&plc)
        },
        None,
    );
    let dids: Vec<String> = (0..12).map(|_| register(&plc).0).collect();
    plc.set_response_delay(Duration::from_millis(100));
    let lookups = dids.iter().map(|did| {
        let resolver = resolver.clone();
        async move { resolver.resolve(did).await }
    });
    for result in join_all(lookups).await {
        result.expect("resolves");
    }
    let state = resolver.state().await;
    assert_eq!(state.max_in_flight, 4);
    assert_eq!(
        state.peak_in_flight, 4,
        "the limit was reached and never passed"
    );
    assert_eq!(state.in_flight, 0);
    assert_eq!(state.positive_entries, 12);
    assert_eq!(plc.requests(), 12);
    plc.stop().await;
}

#[actix_rt::test]
async fn invalid_dids_are_refused_without_a_request() {
    let plc = SimPlc::start().expect("plc");
    let strict = start(
        ResolverSettings {
            allow_localhost_did_web: false,
            ..settings(&plc)
        },
        None,
    );
    for did in [
        "did:plc:UPPERCASEUPPERCASEUPPERC",
        "did:plc:short",
        "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/../../admin",
        "did:key:zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF",
        "did:web:example.com%2Fpath",
        "did:web:localhost%3A5432",
        "not a did",
    ] {
        assert!(
            matches!(strict.resolve(did).await, Err(ResolveError::InvalidDid(_))),
            "{did}"
        );
        assert!(matches!(
            strict.resolve_fresh(did).await,
            Err(ResolveError::InvalidDid(_))
        ));
        strict.purge(did).await;
    }
    assert_eq!(plc.requests(), 0);
    assert_eq!(strict.metrics().outcome("invalid_did"), 21);
    plc.stop().await;
}

/// What a did:web test host answers: status and body.
type Answer = Arc<Mutex<(u16, String)>>;

/// A did:web host on 127.0.0.1: `GET /.well-known/did.json` answers what the returned slot
/// holds (filled once the port, and so the DID, is known).
fn did_web_host() -> (actix_web::dev::ServerHandle, u16, Answer) {
    let answer: Answer = Arc::new(Mutex::new((200, String::new())));
    let served = Arc::clone(&answer);
    let server = HttpServer::new(move || {
        let served = Arc::clone(&served);
        actix_web::App::new().route(
            "/.well-known/did.json",
            web::get().to(move || {
                let (status, body) = served.lock().map(|a| a.clone()).unwrap_or_default();
                async move {
                    let status = actix_web::http::StatusCode::from_u16(status)
                        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
                    HttpResponse::build(status)
                        .content_type("application/json")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .expect("bind");
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (handle, port, answer)
}

fn set_answer(answer: &Answer, status: u16, body: String) {
    *answer.lock().expect("answer slot") = (status, body);
}

fn web_entry(port: u16) -> PlcEntry {
    PlcEntry {
        handle: "web.sim.test".to_string(),
        signing_key: new_key(),
        pds_endpoint: format!("http://localhost:{port}"),
        tombstoned: false,
    }
}

#[actix_rt::test]
async fn did_web_on_localhost_resolves_over_http() {
    let plc = SimPlc::start().expect("plc");
    let resolver = start(settings(&plc), None);
    let (server, port, document) = did_web_host();
    let did = format!("did:web:localhost%3A{port}");
    let entry = web_entry(port);
    set_answer(&document, 200, entry.document(&did).to_string());

    let identity = resolver.resolve(&did).await.expect("did:web resolves");
    assert_eq!(identity.signing_key, entry.signing_key);
    assert_eq!(identity.pds.host, format!("localhost:{port}"));
    assert_eq!(identity.handle.as_deref(), Some("web.sim.test"));
    assert_eq!(plc.requests(), 0);

    // A document whose id names another DID is broken, and cached as such.
    set_answer(
        &document,
        200,
        entry.document("did:web:example.com").to_string(),
    );
    resolver.purge(&did).await;
    assert_eq!(
        resolver.resolve(&did).await,
        Err(ResolveError::Broken("did-doc-wrong-id"))
    );
    assert_eq!(resolver.state().await.negative_entries, 1);
    server.stop(false).await;
    plc.stop().await;
}

#[actix_rt::test]
async fn server_errors_are_transient_and_oversized_documents_broken() {
    let plc = SimPlc::start().expect("plc");
    let resolver = start(settings(&plc), None);
    let (server, port, answer) = did_web_host();
    let did = format!("did:web:localhost%3A{port}");
    let entry = web_entry(port);

    set_answer(&answer, 503, "busy".to_string());
    assert_eq!(
        resolver.resolve(&did).await,
        Err(ResolveError::Transient(Transient::Status(503)))
    );
    // Not cached: the next call asks again and gets the document.
    set_answer(&answer, 200, entry.document(&did).to_string());
    assert_eq!(
        resolver.resolve(&did).await.expect("resolves").signing_key,
        entry.signing_key
    );
    assert_eq!(resolver.metrics().outcome("error_status"), 1);
    assert_eq!(
        resolver.metrics().outcome("client_recycled"),
        0,
        "the connection was fine"
    );

    // A body over 64 KiB is refused while reading, whatever it contains.
    set_answer(
        &answer,
        200,
        format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024)),
    );
    resolver.purge(&did).await;
    assert_eq!(
        resolver.resolve(&did).await,
        Err(ResolveError::Broken("did-doc-too-large"))
    );
    server.stop(false).await;
    plc.stop().await;
}

#[actix_rt::test]
async fn a_slow_directory_times_out_and_the_client_is_recycled() {
    let plc = SimPlc::start().expect("plc");
    let resolver = start(
        ResolverSettings {
            request_timeout: Duration::from_millis(200),
            ..settings(&plc)
        },
        None,
    );
    let (did, entry) = register(&plc);
    plc.set_response_delay(Duration::from_millis(1_000));
    assert_eq!(
        resolver.resolve(&did).await,
        Err(ResolveError::Transient(Transient::Timeout))
    );
    assert_eq!(resolver.metrics().outcome("error_timeout"), 1);
    assert_eq!(resolver.metrics().outcome("client_recycled"), 1);
    plc.set_response_delay(Duration::ZERO);
    assert_eq!(
        resolver.resolve(&did).await.expect("resolves").signing_key,
        entry.signing_key
    );
    plc.stop().await;
}

#[actix_rt::test]
async fn a_thread_with_its_own_runtime_can_resolve() {
    // How a ValidatorShard thread uses the pool: its own runtime, the shared handle.
    let plc = SimPlc::start().expect("plc");
    let resolver = start(settings(&plc), None);
    let (did, entry) = register(&plc);
    let shard_resolver = resolver.clone();
    let shard_did = did.clone();
    let key = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            shard_resolver
                .resolve(&shard_did)
                .await
                .map(|id| id.signing_key.clone())
        })
    })
    .await
    .expect("shard thread");
    assert_eq!(key, Ok(entry.signing_key));
    resolver.resolve(&did).await.expect("now cached");
    assert_eq!(plc.requests_for(&did), 1);
    plc.stop().await;
}
