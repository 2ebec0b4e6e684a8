//! The control API as the wire shows it: the relay `Server` header, describeServer and
//! getRepoStatus, the PLC's answers, key rotation, migration, raw frames, and a host that
//! stops and comes back on the same port.

use std::time::Duration;

use awc::ws;
use rookery::atproto::did_doc::PdsEndpoint;
use rookery::atproto::frame::{Frame, IdentityEvent, decode_frame, encode_frame};
use rookery::atproto::validate::{
    CommitVerdict, Inversion, SyncVerdict, ValidationError, ValidationPolicy, validate_commit,
    validate_sync,
};
use rookery::sim::{AccountStatus, RELAY_SERVER_HEADER, SimNetwork, SimPdsConfig};
use rookery::testkit::repo::{Change, record_path};

use crate::client::{Incoming, WAIT, connect, get, now_micros, resolve};

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("JSON body")
}

#[actix_rt::test]
async fn relay_header_describe_server_and_repo_status() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let host = &net.hosts[0];

    let plain = connect(&host.subscribe_url()).await.unwrap();
    assert!(
        !plain
            .server_header
            .as_deref()
            .unwrap_or_default()
            .contains("atproto-relay")
    );
    host.set_relay_header(true);
    let relay = connect(&host.subscribe_url()).await.unwrap();
    assert_eq!(relay.server_header.as_deref(), Some(RELAY_SERVER_HEADER));
    host.set_relay_header(false);

    let base = host.endpoint();
    let (status, body) = get(&format!("{base}/xrpc/com.atproto.server.describeServer")).await;
    assert_eq!(status, 200);
    let described = json(&body);
    assert_eq!(described["did"], host.service_did());
    assert_eq!(described["availableUserDomains"][0], ".sim.test");

    let did = host.create_account().unwrap();
    let status_url = |did: &str| format!("{base}/xrpc/com.atproto.sync.getRepoStatus?did={did}");
    let (status, body) = get(&status_url(&did)).await;
    assert_eq!(status, 200);
    let repo_status = json(&body);
    assert_eq!(repo_status["did"], did.as_str());
    assert_eq!(repo_status["active"], true);
    assert!(repo_status.get("status").is_none());
    assert_eq!(
        repo_status["rev"],
        host.repo_state(&did).unwrap().rev.to_string()
    );

    host.deactivate(&did).unwrap();
    let repo_status = json(&get(&status_url(&did)).await.1);
    assert_eq!(repo_status["active"], false);
    assert_eq!(repo_status["status"], "deactivated");

    let (status, body) = get(&status_url("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")).await;
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error"], "RepoNotFound");
    let (status, _) = get(&format!("{base}/xrpc/com.atproto.sync.getRepoStatus")).await;
    assert_eq!(status, 400);
    let (status, _) = get(&format!(
        "{base}/xrpc/com.atproto.sync.subscribeRepos?cursor=-1"
    ))
    .await;
    assert_eq!(status, 400);
    net.stop().await;
}

#[actix_rt::test]
async fn plc_answers_404_for_unknown_and_410_for_tombstoned_dids_and_counts() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let did = net.hosts[0].create_account().unwrap();
    let before = net.plc.requests();
    resolve(&net.plc.url(), &did).await;
    assert_eq!(net.plc.requests_for(&did), 1);

    let (status, _) = get(&format!(
        "{}/did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
        net.plc.url()
    ))
    .await;
    assert_eq!(status, 404);
    assert_eq!(net.plc.not_found_requests(), 1);

    net.plc.tombstone(&did).unwrap();
    let (status, _) = get(&format!("{}/{did}", net.plc.url())).await;
    assert_eq!(status, 410);
    assert_eq!(net.plc.requests_for(&did), 2);
    assert_eq!(net.plc.requests(), before + 3);
    net.stop().await;
}

#[actix_rt::test]
async fn key_rotation_publishes_a_new_document_and_later_commits_need_the_new_key() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let host = &net.hosts[0];
    let did = host.create_account_with(3).unwrap();
    let old_key = resolve(&net.plc.url(), &did).await.signing_key.unwrap();
    let mut firehose = connect(&host.subscribe_url()).await.unwrap();

    let stored = host.repo_state(&did);
    let seq = host.rotate_key(&did, true).unwrap().unwrap();
    assert!(host.rotate_key(&did, false).unwrap().is_none());
    let new_key = resolve(&net.plc.url(), &did).await.signing_key.unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(Some(&new_key), host.signing_key(&did).as_ref());
    match decode_frame(&firehose.next_binary().await).unwrap() {
        Frame::Identity(identity) => assert_eq!(identity.seq as u64, seq),
        other => panic!("expected #identity, got {other:?}"),
    }

    host.commit(&did, &[Change::Update(record_path(0))])
        .unwrap();
    let Frame::Commit(commit) = decode_frame(&firehose.next_binary().await).unwrap() else {
        panic!("expected #commit");
    };
    let policy = ValidationPolicy::default();
    assert!(matches!(
        validate_commit(&commit, &new_key, stored.as_ref(), now_micros(), &policy),
        Ok(CommitVerdict::Accept {
            inversion: Inversion::Verified,
            ..
        })
    ));
    assert!(matches!(
        validate_commit(&commit, &old_key, stored.as_ref(), now_micros(), &policy),
        Err(ValidationError::Signature(_))
    ));
    net.stop().await;
}

#[actix_rt::test]
async fn migration_moves_the_endpoint_and_the_new_host_signs_with_the_new_key() {
    let net = SimNetwork::start(2, SimPdsConfig::default()).unwrap();
    let (old_host, new_host) = (&net.hosts[0], &net.hosts[1]);
    let did = old_host.create_account_with(5).unwrap();
    let before = resolve(&net.plc.url(), &did).await;
    let stored = old_host.repo_state(&did).unwrap();
    let mut old_stream = connect(&old_host.subscribe_url()).await.unwrap();
    let mut new_stream = connect(&new_host.subscribe_url()).await.unwrap();

    old_host.migrate(&did, new_host).unwrap();
    let after = resolve(&net.plc.url(), &did).await;
    assert_eq!(
        after.pds,
        Some(PdsEndpoint::parse(&new_host.endpoint()).unwrap())
    );
    assert_eq!(after.pds.as_ref().unwrap().host, new_host.hostname());
    assert_ne!(after.signing_key, before.signing_key);
    assert_eq!(after.handle, before.handle);

    let frames = new_stream.take(3).await;
    let decoded: Vec<Frame> = frames.iter().map(|f| decode_frame(f).unwrap()).collect();
    assert!(matches!(&decoded[0], Frame::Identity(i) if i.did == did));
    assert!(matches!(&decoded[1], Frame::Account(a) if a.did == did && a.active));
    let Frame::Commit(commit) = &decoded[2] else {
        panic!("expected #commit, got {:?}", decoded[2]);
    };
    let key = after.signing_key.unwrap();
    match validate_commit(
        commit,
        &key,
        Some(&stored),
        now_micros(),
        &ValidationPolicy::default(),
    ) {
        Ok(CommitVerdict::Accept { new_state, .. }) => assert!(new_state.rev > stored.rev),
        other => panic!("the new host's commit: {other:?}"),
    }
    match decode_frame(&old_stream.next_binary().await).unwrap() {
        Frame::Account(a) => {
            assert!(!a.active);
            assert_eq!(a.status.as_deref(), Some("deactivated"));
        }
        other => panic!("expected #account deactivated, got {other:?}"),
    }
    // The old host keeps the account, deactivated, without its repo.
    assert!(old_host.commit(&did, &[]).is_err());
    assert!(
        new_host
            .commit(&did, &[Change::Create(record_path(99))])
            .is_ok()
    );
    net.stop().await;
}

#[actix_rt::test]
async fn raw_frames_reach_the_client_byte_identical() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let host = &net.hosts[0];
    let mut firehose = connect(&host.subscribe_url()).await.unwrap();
    let scenario = encode_frame(&Frame::Identity(IdentityEvent {
        seq: 1000,
        did: "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into(),
        time: "2025-02-06T01:05:06.528Z".into(),
        handle: None,
    }))
    .unwrap();
    let garbage = b"\xa2\x62op\x01\x61t\x67#commit\xff not cbor".to_vec();
    host.push_raw(scenario.clone());
    host.push_raw(garbage.clone());
    assert_eq!(firehose.next_binary().await, scenario);
    assert_eq!(firehose.next_binary().await, garbage);
    // The host's own seq continues above the injected one.
    let did = host.create_account().unwrap();
    assert_eq!(host.head_seq(), 1003);
    let Frame::Identity(identity) = decode_frame(&firehose.next_binary().await).unwrap() else {
        panic!("expected #identity");
    };
    assert_eq!((identity.seq, identity.did), (1001, did));
    net.stop().await;
}

#[actix_rt::test]
async fn what_clients_send_is_ignored_and_pings_are_answered() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let host = &net.hosts[0];
    let mut firehose = connect(&host.subscribe_url()).await.unwrap();
    firehose.send(ws::Message::Text("hello".into())).await;
    firehose
        .send(ws::Message::Binary(vec![0xff; 100].into()))
        .await;
    firehose
        .send(ws::Message::Ping("are you there".into()))
        .await;
    match firehose.next_within(WAIT).await {
        Incoming::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    host.create_account().unwrap();
    assert_eq!(firehose.take(3).await.len(), 3);
    // A plain GET (no upgrade) is refused with a 4xx, not a crash.
    let (status, _) = get(&format!(
        "{}/xrpc/com.atproto.sync.subscribeRepos",
        host.endpoint()
    ))
    .await;
    assert!((400..500).contains(&status), "{status}");
    net.stop().await;
}

#[actix_rt::test]
async fn a_stopped_host_refuses_connections_and_returns_on_the_same_port() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let host = &net.hosts[0];
    let did = host.create_account().unwrap();
    let port = host.port();
    let mut connected = connect(&host.subscribe_url()).await.unwrap();

    host.stop().await;
    assert!(!host.is_running());
    assert!(matches!(
        connected.next_within(WAIT).await,
        Incoming::Ended | Incoming::Close(_)
    ));
    assert!(connect(&host.subscribe_url()).await.is_err());

    host.restart().unwrap();
    assert_eq!(host.port(), port);
    let mut back = connect(&host.subscribe_url()).await.unwrap();
    let seq = host
        .commit(&did, &[Change::Create(record_path(0))])
        .unwrap();
    let Frame::Commit(commit) = decode_frame(&back.next_binary().await).unwrap() else {
        panic!("expected #commit");
    };
    assert_eq!(commit.seq as u64, seq);

    // drop_connections ends the sessions but keeps the listener.
    host.drop_connections();
    assert!(matches!(
        back.next_within(WAIT).await,
        Incoming::Ended | Incoming::Close(_)
    ));
    let mut again = connect(&host.subscribe_url()).await.unwrap();
    assert!(matches!(
        again.next_within(Duration::from_millis(100)).await,
        Incoming::Silent
    ));
    net.stop().await;
}

#[actix_rt::test]
async fn deactivation_reactivation_and_deletion_are_announced() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let host = &net.hosts[0];
    let did = host.create_account_with(2).unwrap();
    let stored = host.repo_state(&did);
    let mut firehose = connect(&host.subscribe_url()).await.unwrap();
    let account = |frame: Frame| match frame {
        Frame::Account(a) => (a.active, a.status),
        other => panic!("expected #account, got {other:?}"),
    };

    host.deactivate(&did).unwrap();
    assert_eq!(
        account(decode_frame(&firehose.next_binary().await).unwrap()),
        (false, Some("deactivated".into()))
    );
    host.reactivate(&did).unwrap();
    assert_eq!(
        account(decode_frame(&firehose.next_binary().await).unwrap()),
        (true, None)
    );
    let Frame::Sync(sync) = decode_frame(&firehose.next_binary().await).unwrap() else {
        panic!("expected #sync after reactivation");
    };
    let key = resolve(&net.plc.url(), &did).await.signing_key.unwrap();
    assert!(matches!(
        validate_sync(
            &sync,
            &key,
            stored.as_ref(),
            now_micros(),
            &ValidationPolicy::default()
        ),
        Ok(SyncVerdict::Accept {
            rollback: false,
            ..
        })
    ));
    host.set_status(&did, true, Some(AccountStatus::Throttled))
        .unwrap();
    assert_eq!(
        account(decode_frame(&firehose.next_binary().await).unwrap()),
        (true, Some("throttled".into()))
    );
    host.delete(&did).unwrap();
    assert_eq!(
        account(decode_frame(&firehose.next_binary().await).unwrap()),
        (false, Some("deleted".into()))
    );
    net.stop().await;
}

#[actix_rt::test]
async fn a_slow_plc_answers_after_its_delay_and_counts_overlapping_lookups() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let did = net.hosts[0].create_account().unwrap();
    net.plc.set_response_delay(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let url = net.plc.url();
    let (a, b) = futures_util::join!(resolve(&url, &did), resolve(&url, &did));
    let elapsed = started.elapsed();
    assert_eq!(a, b);
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(600),
        "not concurrent: {elapsed:?}"
    );
    assert_eq!(net.plc.requests_for(&did), 2);
    net.stop().await;
}
