//! The first admission check: what a requestCrawl `hostname` may be, and its one stored form.
//!
//! Rules (pure, no I/O; the unit tests are the table):
//! - Surrounding whitespace is trimmed; the rest must be ASCII (internationalised names in
//!   their `xn--` form) and at most [`MAX_RAW_LEN`] bytes.
//! - Lower-cased. A scheme is accepted and dropped: `https://` (the default) on both paths;
//!   `http://` only on the admin path, where it means a plain-http (`no_ssl`) host. Any other
//!   scheme is refused. One trailing `/` is dropped (the URL form people paste); any other
//!   path, query or fragment is refused, as is user info (`user@`).
//! - One trailing dot (the absolute form) is dropped.
//! - No IP literals (v4, v6, bracketed, or anything `inet_aton` reads as an address, such as
//!   `0x7f.1`): the top-level label must be letters, or an `xn--` label.
//! - Hostname syntax: labels of 1–63 letters, digits and hyphens, not starting or ending with
//!   a hyphen, at least two labels, at most 253 characters.
//! - `localhost` (and `*.localhost`) only on the admin path. There `localhost` may carry a
//!   port (`localhost:2583`, the one form with a port) and is a plain-http host unless
//!   `https://` was written; no other host may carry a port.
//! - On the admin path, `localhost` and `http://` hosts skip the public-address (SSRF) checks
//!   for that host only (PROTOCOL.md §7); every other host is checked on both paths.

use std::fmt;

/// Longest `hostname` value looked at (bytes, before trimming).
pub const MAX_RAW_LEN: usize = 512;
/// Longest DNS name.
pub const MAX_HOST_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Which requestCrawl is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrawlPath {
    /// `POST /xrpc/com.atproto.sync.requestCrawl`: anyone.
    Public,
    /// `POST /admin/pds/requestCrawl`: an operator.
    Admin,
}

impl CrawlPath {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CrawlPath::Public => "public",
            CrawlPath::Admin => "admin",
        }
    }
}

/// An admissible host as it will be stored and dialled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrawlTarget {
    /// `host` or `localhost:PORT`: the stored `hosts.hostname`.
    pub hostname: String,
    /// The DNS name without the port.
    pub host: String,
    /// The port, only ever for `localhost`.
    pub port: Option<u16>,
    /// Dial `ws://` and probe `http://`.
    pub no_ssl: bool,
    /// Skip the public-address checks (admin path only).
    pub ssrf_exempt: bool,
}

impl CrawlTarget {
    /// The host and every parent domain, longest first: what domain bans are matched
    /// against (`a.b.example.com`, `b.example.com`, `example.com`, `com`).
    pub fn ban_candidates(&self) -> Vec<String> {
        domain_and_parents(&self.host)
    }
}

/// `domain` and every parent domain, longest first.
pub fn domain_and_parents(domain: &str) -> Vec<String> {
    let mut out = vec![domain.to_string()];
    let mut rest = domain;
    while let Some((_, parent)) = rest.split_once('.') {
        out.push(parent.to_string());
        rest = parent;
    }
    out
}

/// Why a hostname is refused (the message of a 400 `InvalidHostname`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostnameError {
    Empty,
    TooLong,
    NotAscii,
    UnsupportedScheme,
    PlainHttpNotAllowed,
    HasPath,
    HasUserInfo,
    IpLiteral,
    PortNotAllowed,
    BadPort,
    Localhost,
    BadSyntax,
    SingleLabel,
}

impl HostnameError {
    pub fn message(self) -> &'static str {
        match self {
            HostnameError::Empty => "hostname is empty",
            HostnameError::TooLong => "hostname is too long",
            HostnameError::NotAscii => {
                "hostname must be ASCII (give an internationalised name in its xn-- form)"
            }
            HostnameError::UnsupportedScheme => {
                "hostname must be a bare hostname (https:// is accepted and dropped)"
            }
            HostnameError::PlainHttpNotAllowed => {
                "plain-http hosts can only be added by the relay's operator"
            }
            HostnameError::HasPath => "hostname must not have a path, query or fragment",
            HostnameError::HasUserInfo => "hostname must not have user info",
            HostnameError::IpLiteral => "hostname must be a DNS name, not an IP address",
            HostnameError::PortNotAllowed => {
                "hostname must not have a port (only localhost:PORT, by the relay's operator)"
            }
            HostnameError::BadPort => "hostname has an invalid port",
            HostnameError::Localhost => "localhost can only be added by the relay's operator",
            HostnameError::BadSyntax => {
                "hostname must be labels of letters, digits and hyphens separated by dots"
            }
            HostnameError::SingleLabel => "hostname must have at least two labels",
        }
    }
}

impl fmt::Display for HostnameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for HostnameError {}

/// Parses and normalises a requestCrawl `hostname` for `path`.
pub fn parse_crawl_hostname(raw: &str, path: CrawlPath) -> Result<CrawlTarget, HostnameError> {
    if raw.len() > MAX_RAW_LEN {
        return Err(HostnameError::TooLong);
    }
    let trimmed = raw.trim_matches(|c: char| c.is_ascii_whitespace());
    if trimmed.is_empty() {
        return Err(HostnameError::Empty);
    }
    if !trimmed.is_ascii() {
        return Err(HostnameError::NotAscii);
    }
    let lower = trimmed.to_ascii_lowercase();
    let (scheme, rest) = match lower.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, lower.as_str()),
    };
    let plain_http = match scheme {
        None | Some("https") => false,
        Some("http") => true,
        Some(_) => return Err(HostnameError::UnsupportedScheme),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '\\']) {
        return Err(HostnameError::HasPath);
    }
    if authority.contains('@') {
        return Err(HostnameError::HasUserInfo);
    }
    if authority.contains(['[', ']']) || authority.matches(':').count() > 1 {
        return Err(HostnameError::IpLiteral);
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (authority, None),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(HostnameError::Empty);
    }
    if host.len() > MAX_HOST_LEN {
        return Err(HostnameError::TooLong);
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(HostnameError::IpLiteral);
    }
    let labels: Vec<&str> = host.split('.').collect();
    if !labels.iter().all(|l| valid_label(l)) {
        return Err(HostnameError::BadSyntax);
    }
    let is_localhost = host == "localhost";
    if is_localhost || host.ends_with(".localhost") {
        if path == CrawlPath::Public {
            return Err(HostnameError::Localhost);
        }
    } else {
        if labels.len() < 2 {
            return Err(HostnameError::SingleLabel);
        }
        if !valid_top_label(labels[labels.len() - 1]) {
            return Err(HostnameError::IpLiteral);
        }
    }
    if port.is_some() && !(is_localhost && path == CrawlPath::Admin) {
        return Err(HostnameError::PortNotAllowed);
    }
    if plain_http && path == CrawlPath::Public {
        return Err(HostnameError::PlainHttpNotAllowed);
    }
    // On the admin path localhost is plain http unless https:// was written.
    let no_ssl = plain_http || (is_localhost && scheme.is_none());
    let ssrf_exempt = path == CrawlPath::Admin && (is_localhost || plain_http);
    let hostname = match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Ok(CrawlTarget {
        hostname,
        host: host.to_string(),
        port,
        no_ssl,
        ssrf_exempt,
    })
}

/// Normalises a domain for a domain ban: a hostname's rules without scheme, port, path or
/// the two-label minimum (a whole top-level domain may be banned), lower case, no trailing
/// dot.
pub fn normalize_domain(raw: &str) -> Result<String, HostnameError> {
    if raw.len() > MAX_RAW_LEN {
        return Err(HostnameError::TooLong);
    }
    let trimmed = raw.trim_matches(|c: char| c.is_ascii_whitespace());
    let domain = trimmed.strip_suffix('.').unwrap_or(trimmed);
    if domain.is_empty() {
        return Err(HostnameError::Empty);
    }
    if !domain.is_ascii() {
        return Err(HostnameError::NotAscii);
    }
    if domain.contains("://") {
        return Err(HostnameError::UnsupportedScheme);
    }
    if domain.contains(['/', '?', '#', '\\']) {
        return Err(HostnameError::HasPath);
    }
    if domain.contains('@') {
        return Err(HostnameError::HasUserInfo);
    }
    if domain.contains(['[', ']', ':']) {
        return Err(HostnameError::PortNotAllowed);
    }
    if domain.len() > MAX_HOST_LEN {
        return Err(HostnameError::TooLong);
    }
    let domain = domain.to_ascii_lowercase();
    if domain.parse::<std::net::IpAddr>().is_ok() {
        return Err(HostnameError::IpLiteral);
    }
    if !domain.split('.').all(valid_label) {
        return Err(HostnameError::BadSyntax);
    }
    Ok(domain)
}

fn parse_port(raw: &str) -> Result<u16, HostnameError> {
    if raw.is_empty() || raw.len() > 5 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostnameError::BadPort);
    }
    match raw.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(HostnameError::BadPort),
    }
}

fn valid_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL_LEN
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A top-level label is letters (`com`), or an internationalised `xn--` label. This is
/// what keeps numeric and hex address forms (`127.1`, `0x7f.0x1`, `1.2.3.4`) out.
fn valid_top_label(label: &str) -> bool {
    label.bytes().all(|c| c.is_ascii_alphabetic()) || label.starts_with("xn--")
}

#[cfg(test)]
mod tests {
    use super::*;
    use CrawlPath::{Admin, Public};
    use HostnameError as E;

    fn ok(raw: &str, path: CrawlPath) -> CrawlTarget {
        parse_crawl_hostname(raw, path).unwrap_or_else(|e| panic!("{raw:?} on {path:?}: {e}"))
    }

    #[test]
    fn accepted_names_are_normalised() {
        for (raw, want) in [
            ("pds.example.com", "pds.example.com"),
            ("PDS.Example.COM", "pds.example.com"),
            ("  pds.example.com\n", "pds.example.com"),
            ("pds.example.com.", "pds.example.com"),
            ("https://pds.example.com", "pds.example.com"),
            ("HTTPS://PDS.example.com/", "pds.example.com"),
            ("a-b.c-d.example", "a-b.c-d.example"),
            ("1.2.3.example", "1.2.3.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("pds.xn--p1ai", "pds.xn--p1ai"),
        ] {
            for path in [Public, Admin] {
                let t = ok(raw, path);
                assert_eq!(t.hostname, want, "{raw:?}");
                assert_eq!(t.host, want, "{raw:?}");
                assert_eq!(t.port, None);
                assert!(!t.no_ssl, "{raw:?}");
                assert!(
                    !t.ssrf_exempt,
                    "{raw:?}: only localhost and http:// are exempt"
                );
            }
        }
        let long_label = "a".repeat(63);
        let max = format!(
            "{long_label}.{long_label}.{long_label}.{}.com",
            "b".repeat(57)
        );
        assert_eq!(max.len(), 253);
        assert_eq!(ok(&max, Public).hostname, max);
    }

    #[test]
    fn refusal_table() {
        let cases: &[(&str, CrawlPath, HostnameError)] = &[
            ("", Public, E::Empty),
            ("   ", Public, E::Empty),
            ("https://", Public, E::Empty),
            (".", Public, E::Empty),
            ("ftp://pds.example.com", Public, E::UnsupportedScheme),
            ("wss://pds.example.com", Admin, E::UnsupportedScheme),
            ("http://pds.example.com", Public, E::PlainHttpNotAllowed),
            ("pds.example.com/xrpc", Public, E::HasPath),
            ("https://pds.example.com/xrpc/", Public, E::HasPath),
            ("pds.example.com?x=1", Public, E::HasPath),
            ("pds.example.com#x", Public, E::HasPath),
            ("pds.example.com//", Public, E::HasPath),
            ("pds.example.com\\evil", Public, E::HasPath),
            ("user@pds.example.com", Public, E::HasUserInfo),
            ("https://user:pw@pds.example.com", Admin, E::HasUserInfo),
            ("1.2.3.4", Public, E::IpLiteral),
            ("1.2.3.4", Admin, E::IpLiteral),
            ("127.0.0.1", Admin, E::IpLiteral),
            ("127.1", Public, E::IpLiteral),
            ("0x7f.0x1", Public, E::IpLiteral),
            ("10.0.0.1.", Public, E::IpLiteral),
            ("pds.example.123", Public, E::IpLiteral),
            ("[::1]", Admin, E::IpLiteral),
            ("[::1]:2583", Admin, E::IpLiteral),
            ("::1", Public, E::IpLiteral),
            ("fe80::1", Admin, E::IpLiteral),
            ("pds.example.com:443", Public, E::PortNotAllowed),
            ("pds.example.com:2583", Admin, E::PortNotAllowed),
            ("localhost:2583", Public, E::Localhost),
            ("localhost", Public, E::Localhost),
            ("LOCALHOST.", Public, E::Localhost),
            ("evil.localhost", Public, E::Localhost),
            ("evil.localhost:80", Admin, E::PortNotAllowed),
            ("localhost:", Admin, E::BadPort),
            ("localhost:0", Admin, E::BadPort),
            ("localhost:65536", Admin, E::BadPort),
            ("localhost:+80", Admin, E::BadPort),
            ("localhost:000080", Admin, E::BadPort),
            ("-pds.example.com", Public, E::BadSyntax),
            ("pds-.example.com", Public, E::BadSyntax),
            ("pds..example.com", Public, E::BadSyntax),
            ("pds.example.com..", Public, E::BadSyntax),
            ("pds_1.example.com", Public, E::BadSyntax),
            ("pds example.com", Public, E::BadSyntax),
            ("pds.example.com\0", Public, E::BadSyntax),
            ("pds", Public, E::SingleLabel),
            ("pds", Admin, E::SingleLabel),
            ("p\u{e9}s.example.com", Public, E::NotAscii),
            ("b\u{fc}cher.example", Admin, E::NotAscii),
            ("pds.example.com\u{3002}", Public, E::NotAscii),
        ];
        for (raw, path, want) in cases {
            assert_eq!(
                parse_crawl_hostname(raw, *path),
                Err(*want),
                "{raw:?} on {path:?}"
            );
        }
        let overlong_label = format!("{}.example.com", "a".repeat(64));
        assert_eq!(
            parse_crawl_hostname(&overlong_label, Public),
            Err(E::BadSyntax)
        );
        let overlong_name = format!("{}com", "abcdefgh.".repeat(28));
        assert!(overlong_name.len() > MAX_HOST_LEN && overlong_name.len() <= MAX_RAW_LEN);
        assert_eq!(
            parse_crawl_hostname(&overlong_name, Public),
            Err(E::TooLong)
        );
        let huge = "a.".repeat(MAX_RAW_LEN);
        assert_eq!(parse_crawl_hostname(&huge, Admin), Err(E::TooLong));
    }

    #[test]
    fn the_admin_path_adds_localhost_and_plain_http_hosts_exempt_from_ssrf_checks() {
        let t = ok("localhost:2583", Admin);
        assert_eq!(t.hostname, "localhost:2583");
        assert_eq!(t.host, "localhost");
        assert_eq!(t.port, Some(2583));
        assert!(t.no_ssl && t.ssrf_exempt);
        let t = ok("http://LocalHost:2583/", Admin);
        assert_eq!(t.hostname, "localhost:2583");
        assert!(t.no_ssl && t.ssrf_exempt);
        let t = ok("https://localhost:2583", Admin);
        assert!(
            !t.no_ssl && t.ssrf_exempt,
            "https:// written: TLS, still exempt"
        );
        let t = ok("localhost", Admin);
        assert_eq!(t.hostname, "localhost");
        assert!(t.no_ssl && t.ssrf_exempt);
        let t = ok("http://pds.internal.example", Admin);
        assert_eq!(t.hostname, "pds.internal.example");
        assert!(t.no_ssl && t.ssrf_exempt);
        let t = ok("pds.example.com", Admin);
        assert!(
            !t.no_ssl && !t.ssrf_exempt,
            "a TLS host is checked on the admin path too"
        );
    }

    #[test]
    fn ban_candidates_are_the_host_and_its_parents() {
        assert_eq!(
            ok("a.b.example.com", Public).ban_candidates(),
            ["a.b.example.com", "b.example.com", "example.com", "com"]
        );
        assert_eq!(ok("localhost:2583", Admin).ban_candidates(), ["localhost"]);
    }

    #[test]
    fn domains_are_normalised_for_bans() {
        assert_eq!(
            normalize_domain("Example.COM.").as_deref(),
            Ok("example.com")
        );
        assert_eq!(normalize_domain(" zip ").as_deref(), Ok("zip"));
        assert_eq!(normalize_domain("localhost").as_deref(), Ok("localhost"));
        for (raw, want) in [
            ("", E::Empty),
            ("https://example.com", E::UnsupportedScheme),
            ("example.com/x", E::HasPath),
            ("a@example.com", E::HasUserInfo),
            ("example.com:443", E::PortNotAllowed),
            ("10.0.0.1", E::IpLiteral),
            ("exa_mple.com", E::BadSyntax),
            ("ex%.com", E::BadSyntax),
            ("\u{e9}.com", E::NotAscii),
        ] {
            assert_eq!(normalize_domain(raw), Err(want), "{raw:?}");
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever comes in, an accepted name is in its stored form: parsing it again
            /// gives itself, and it holds nothing but name characters and a localhost port.
            #[test]
            fn accepted_names_are_fixed_points(raw in any::<String>(), admin in any::<bool>()) {
                let path = if admin { CrawlPath::Admin } else { CrawlPath::Public };
                if let Ok(t) = parse_crawl_hostname(&raw, path) {
                    prop_assert!(t.hostname.bytes().all(|c| c.is_ascii_lowercase()
                        || c.is_ascii_digit() || c == b'-' || c == b'.' || c == b':'));
                    let again = parse_crawl_hostname(&t.hostname, CrawlPath::Admin).unwrap();
                    prop_assert_eq!(again.hostname, t.hostname);
                }
            }
        }
    }
}
