//! A host serving TLS ([`SimPdsConfig::tls`]): `subscribeRepos` over `wss://` and the XRPC
//! queries over `https://` to a client that trusts the simulator's CA (its own config, and
//! the relay's `UpstreamTls` built from the CA's PEM, as `--upstream-ca-file` builds it);
//! a client that does not trust the CA fails the handshake.

use rookery::actors::upstream_tls::UpstreamTls;
use rookery::atproto::did_doc::{PdsEndpoint, PdsScheme};
use rookery::atproto::frame::{Frame, decode_frame};
use rookery::sim::{SimNetwork, SimPdsConfig, SimTls};

use crate::client::{WAIT, connect, connect_with, resolve, tls_client};

fn tls_network() -> (SimNetwork, SimTls) {
    let tls = SimTls::generate().expect("certificates");
    let config = SimPdsConfig {
        tls: Some(tls.clone()),
        ..SimPdsConfig::default()
    };
    (SimNetwork::start(1, config).expect("network"), tls)
}

#[actix_rt::test]
async fn a_tls_host_serves_subscribe_repos_over_wss_to_a_client_that_trusts_its_ca() {
    let (net, tls) = tls_network();
    let host = &net.hosts[0];
    assert!(host.is_tls());
    assert_eq!(host.endpoint(), format!("https://{}", host.hostname()));
    assert!(host.subscribe_url().starts_with("wss://localhost:"));

    let client = tls_client(tls.client_config());
    let mut firehose = connect_with(&client, &host.subscribe_url())
        .await
        .expect("a wss upgrade with the CA trusted");
    let did = host.create_account().unwrap();
    let frames = firehose.take(3).await;
    let kinds: Vec<&str> = frames
        .iter()
        .map(|f| decode_frame(f).expect("decodes").kind())
        .collect();
    assert_eq!(kinds, ["identity", "account", "sync"]);
    assert!(matches!(decode_frame(&frames[0]).unwrap(), Frame::Identity(i) if i.did == did));

    // The PLC names the https endpoint, which the relay's parser reads as TLS.
    let identity = resolve(&net.plc.url(), &did).await;
    let pds = identity.pds.expect("a PDS endpoint");
    assert_eq!(pds, PdsEndpoint::parse(&host.endpoint()).unwrap());
    assert_eq!(pds.scheme, PdsScheme::Https);

    // describeServer over https, through the same trust.
    let mut response = client
        .get(format!(
            "{}/xrpc/com.atproto.server.describeServer",
            host.endpoint()
        ))
        .send()
        .await
        .expect("https request");
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = serde_json::from_slice(&response.body().await.unwrap()).unwrap();
    assert_eq!(body["did"], host.service_did());
    net.stop().await;
}

#[actix_rt::test]
async fn the_relays_upstream_tls_built_from_the_ca_file_is_trusted_and_the_default_is_not() {
    let (net, tls) = tls_network();
    let host = &net.hosts[0];
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    tls.write_ca_pem(&ca_file).unwrap();
    let upstream = UpstreamTls::load(&ca_file).expect("the CA file loads");
    assert_eq!(upstream.extra_roots(), 1);
    assert_eq!(upstream.ca_file(), Some(ca_file.as_path()));

    // The relay's websocket config (http/1.1 only) upgrades; its HTTP config, which offers
    // h2 as well, gets describeServer (the host's acceptor offers h2 too).
    let mut firehose = connect_with(
        &tls_client(upstream.websocket_config()),
        &host.subscribe_url(),
    )
    .await
    .expect("the relay's websocket TLS config");
    host.create_account().unwrap();
    firehose.take(3).await;
    let response = tls_client(upstream.http_config())
        .get(format!(
            "{}/xrpc/com.atproto.server.describeServer",
            host.endpoint()
        ))
        .send()
        .await
        .expect("the relay's HTTP TLS config");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.version(), awc::http::Version::HTTP_2);
    // Why websockets offer http/1.1 only: offered h2, the host picks it, and awc cannot
    // open a websocket over HTTP/2.
    let over_h2 = connect_with(&tls_client(upstream.http_config()), &host.subscribe_url())
        .await
        .err()
        .expect("no websocket over h2");
    assert!(
        format!("{over_h2:?}").contains("TunnelNotSupported"),
        "{over_h2:?}"
    );

    // Without the CA (webpki roots only) the handshake fails on the certificate.
    let refused = connect_with(
        &tls_client(UpstreamTls::default().websocket_config()),
        &host.subscribe_url(),
    )
    .await
    .err()
    .expect("an untrusted certificate is refused");
    let message = format!("{refused:?}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    net.stop().await;
}

#[actix_rt::test]
async fn a_client_that_does_not_trust_the_ca_fails_the_handshake() {
    let (net, _tls) = tls_network();
    let host = &net.hosts[0];
    // awc's default client: webpki roots.
    let refused = tokio::time::timeout(WAIT, connect(&host.subscribe_url()))
        .await
        .expect("refused within the wait")
        .err()
        .expect("an untrusted certificate is refused");
    let message = format!("{refused:?}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    // Another CA's client is refused the same way.
    let other = SimTls::generate().unwrap();
    let refused = connect_with(&tls_client(other.client_config()), &host.subscribe_url())
        .await
        .err()
        .expect("another CA's certificate is refused");
    assert!(
        format!("{refused:?}").contains("BadSignature")
            || format!("{refused:?}").contains("UnknownIssuer"),
        "{refused:?}"
    );
    // Plain ws:// to the TLS port gets no upgrade.
    let plain = host.subscribe_url().replacen("wss://", "ws://", 1);
    assert!(
        tokio::time::timeout(WAIT, connect(&plain))
            .await
            .expect("answered within the wait")
            .is_err()
    );
    // None of these got a subscription.
    assert_eq!(host.live_connections(), 0);
    net.stop().await;
}
