//! Public-address checks through the public route: names that resolve into the relay's own
//! network (or not at all) are refused with their own error and never stored.

use rookery::http::request_crawl::Outcome;
use rookery::http::request_crawl::hostname::CrawlPath;

use crate::support::CrawlRelay;

#[actix_rt::test]
async fn names_resolving_to_non_public_addresses_are_refused_and_not_stored() {
    let relay = CrawlRelay::start("").await;
    let cases: &[(&str, &[&str])] = &[
        ("private.crawl.example", &["10.1.2.3"]),
        ("private172.crawl.example", &["172.16.0.5"]),
        ("private192.crawl.example", &["192.168.1.1"]),
        ("loopback.crawl.example", &["127.0.0.1"]),
        ("linklocal.crawl.example", &["169.254.169.254"]),
        ("cgnat.crawl.example", &["100.64.0.1"]),
        ("loopback6.crawl.example", &["::1"]),
        ("linklocal6.crawl.example", &["fe80::1"]),
        ("ula6.crawl.example", &["fd00::1"]),
        ("mapped6.crawl.example", &["::ffff:127.0.0.1"]),
        ("unspecified.crawl.example", &["0.0.0.0"]),
        // One bad address among public ones is enough: a client may connect to any.
        ("mixed.crawl.example", &["8.8.8.8", "10.0.0.1"]),
    ];
    for (name, addrs) in cases {
        relay.dns.set(name, addrs);
        let reply = relay.public_crawl(name).await;
        reply.assert_xrpc(400, "HostNotPublic");
        let message = reply.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(name), "{message}");
    }
    // The deprecated notifyOfUpdate is the same procedure.
    let body = serde_json::json!({ "hostname": "private.crawl.example" }).to_string();
    relay
        .post("/xrpc/com.atproto.sync.notifyOfUpdate", body)
        .await
        .assert_xrpc(400, "HostNotPublic");
    // A name that does not resolve.
    relay
        .public_crawl("nx.crawl.example")
        .await
        .assert_xrpc(400, "HostUnresolvable");
    assert_eq!(
        relay.host_count().await,
        0,
        "a refused host is never stored"
    );
    assert_eq!(
        relay.counted(CrawlPath::Public, Outcome::NotPublic),
        cases.len() as u64 + 1
    );
    assert_eq!(relay.counted(CrawlPath::Public, Outcome::Unresolvable), 1);
    assert_eq!(relay.counted(CrawlPath::Public, Outcome::Added), 0);
    // Every name was looked up once: the checks ran, not a shortcut.
    assert_eq!(relay.dns.lookups().len(), cases.len() + 2);
    relay.stop().await;
}

#[actix_rt::test]
async fn the_admin_path_checks_tls_hosts_too_but_not_its_own_localhost() {
    let relay = CrawlRelay::start("").await;
    relay.dns.set("internal.crawl.example", &["10.0.0.7"]);
    relay
        .admin_crawl("internal.crawl.example")
        .await
        .assert_xrpc(400, "HostNotPublic");
    assert_eq!(relay.counted(CrawlPath::Admin, Outcome::NotPublic), 1);
    // localhost:PORT skips the resolver entirely (exempt); nothing answers there, so the
    // describeServer check refuses it.
    let free = crate::common::process::free_port();
    relay
        .admin_crawl(&format!("localhost:{free}"))
        .await
        .assert_xrpc(400, "HostNotFound");
    assert_eq!(relay.dns.lookups(), ["internal.crawl.example"]);
    assert_eq!(relay.host_count().await, 0);
    relay.stop().await;
}
