//! The last check before a host is stored: `GET /xrpc/com.atproto.server.describeServer` on
//! it must answer 200 with a JSON object whose `did` is a DID (a PDS describes itself so), and
//! the answer must not carry a `Server` header containing `atproto-relay` (relays mark
//! themselves so; lesson 3: a relay stored as a PDS cut coverage to 5%).
//!
//! Bounds: one timeout over the whole exchange (connect, TLS, headers, body), a body limit,
//! redirects not followed (a redirect could point anywhere, the checked addresses included).
//! A host that passed the public-address check is reached only at the addresses that passed
//! ([`PinnedAddresses`] replaces DNS in the client's connector), so the name cannot resolve
//! elsewhere between check and call. Exempt hosts (an operator's `localhost:PORT` or
//! `http://` host) are reached through the ordinary resolver.

use std::net::SocketAddr;
use std::time::Duration;

use actix_tls::connect::{Connector as TcpConnector, Resolve, Resolver};
use actix_web::http::header;
use futures_util::future::LocalBoxFuture;

use super::hostname::CrawlTarget;
use crate::actors::upstream_tls::UpstreamTls;
use crate::atproto::syntax::validate_did;
use crate::http::SERVER_HEADER;

/// The marker a relay's `Server` header carries.
pub const RELAY_MARKER: &str = "atproto-relay";

/// Limits of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSettings {
    /// The whole exchange, connect to last body byte.
    pub timeout: Duration,
    /// Largest describeServer body read.
    pub max_body: usize,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            timeout: Duration::from_secs(5),
            max_body: 64 * 1024,
        }
    }
}

/// Why the probe refused the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeRefusal {
    /// Its answer carries `Server: ...atproto-relay...`.
    Relay,
    /// No usable describeServer answer (the text says what went wrong).
    Failed(String),
}

/// A resolver that answers every lookup with the addresses admission checked.
struct PinnedAddresses(Vec<SocketAddr>);

impl Resolve for PinnedAddresses {
    fn lookup<'a>(
        &'a self,
        _host: &'a str,
        port: u16,
    ) -> LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn std::error::Error>>> {
        let addrs = self
            .0
            .iter()
            .map(|a| SocketAddr::new(a.ip(), port))
            .collect();
        Box::pin(async move { Ok(addrs) })
    }
}

/// `http(s)://<hostname>/xrpc/com.atproto.server.describeServer`.
pub fn describe_server_url(target: &CrawlTarget) -> String {
    let scheme = if target.no_ssl { "http" } else { "https" };
    format!(
        "{scheme}://{}/xrpc/com.atproto.server.describeServer",
        target.hostname
    )
}

fn client(
    pinned: Option<Vec<SocketAddr>>,
    settings: ProbeSettings,
    tls: &UpstreamTls,
) -> awc::Client {
    crate::actors::resolver::install_crypto_provider();
    let connector = awc::Connector::new()
        .rustls_0_23(tls.http_config())
        .timeout(settings.timeout);
    // The two connectors are different types; each branch finishes its own client.
    match pinned {
        Some(addrs) => {
            let tcp = TcpConnector::new(Resolver::custom(PinnedAddresses(addrs))).service();
            awc::Client::builder()
                .connector(connector.connector(tcp))
                .disable_redirects()
                .timeout(settings.timeout)
                .add_default_header((header::USER_AGENT, SERVER_HEADER))
                .finish()
        }
        None => awc::Client::builder()
            .connector(connector)
            .disable_redirects()
            .timeout(settings.timeout)
            .add_default_header((header::USER_AGENT, SERVER_HEADER))
            .finish(),
    }
}

/// Calls describeServer on `target` (at `pinned` when given) and returns the DID it reports.
pub async fn probe_describe_server(
    target: &CrawlTarget,
    pinned: Option<Vec<SocketAddr>>,
    settings: ProbeSettings,
    tls: &UpstreamTls,
) -> Result<String, ProbeRefusal> {
    let client = client(pinned, settings, tls);
    let url = describe_server_url(target);
    let exchange = async {
        let mut response = client
            .get(&url)
            .insert_header((header::ACCEPT, "application/json"))
            .send()
            .await
            .map_err(|e| ProbeRefusal::Failed(format!("describeServer request failed: {e}")))?;
        if looks_like_relay(response.headers()) {
            return Err(ProbeRefusal::Relay);
        }
        let status = response.status();
        if status != awc::http::StatusCode::OK {
            return Err(ProbeRefusal::Failed(format!(
                "describeServer answered {}",
                status.as_u16()
            )));
        }
        let body = response
            .body()
            .limit(settings.max_body)
            .await
            .map_err(|e| ProbeRefusal::Failed(format!("describeServer body unreadable: {e}")))?;
        describe_server_did(&body)
    };
    match tokio::time::timeout(settings.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(ProbeRefusal::Failed(format!(
            "describeServer did not answer within {}",
            humantime::format_duration(settings.timeout)
        ))),
    }
}

/// True when a `Server` header contains [`RELAY_MARKER`] (any case).
pub fn looks_like_relay(headers: &awc::http::header::HeaderMap) -> bool {
    headers.get_all(header::SERVER).any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .to_ascii_lowercase()
            .contains(RELAY_MARKER)
    })
}

/// The `did` of a describeServer body, which must be a JSON object with a DID there.
pub fn describe_server_did(body: &[u8]) -> Result<String, ProbeRefusal> {
    #[derive(serde::Deserialize)]
    struct Described {
        did: String,
    }
    let described: Described = serde_json::from_slice(body).map_err(|_| {
        ProbeRefusal::Failed("describeServer did not answer a JSON object with a did".into())
    })?;
    validate_did(&described.did).map_err(|_| {
        ProbeRefusal::Failed("describeServer answered a did that is not a DID".into())
    })?;
    Ok(described.did)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_server_bodies_need_a_did() {
        assert_eq!(
            describe_server_did(br#"{"did":"did:web:pds.example.com","availableUserDomains":[]}"#),
            Ok("did:web:pds.example.com".to_string())
        );
        for bad in [
            &b""[..],
            b"null",
            b"[]",
            b"{}",
            br#"{"did":5}"#,
            br#"{"did":"not a did"}"#,
            b"<html>",
        ] {
            assert!(
                describe_server_did(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn relays_are_recognised_by_their_server_header() {
        let mut headers = awc::http::header::HeaderMap::new();
        assert!(!looks_like_relay(&headers));
        headers.insert(header::SERVER, "nginx".parse().unwrap());
        assert!(!looks_like_relay(&headers));
        headers.append(header::SERVER, "indigo (Atproto-Relay)".parse().unwrap());
        assert!(looks_like_relay(&headers));
    }

    #[test]
    fn urls_follow_the_scheme() {
        let t = super::super::hostname::parse_crawl_hostname(
            "localhost:2583",
            super::super::hostname::CrawlPath::Admin,
        )
        .unwrap();
        assert_eq!(
            describe_server_url(&t),
            "http://localhost:2583/xrpc/com.atproto.server.describeServer"
        );
    }
}
