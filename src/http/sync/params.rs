//! The sync endpoints' parameters, each checked before any query runs. Every failure is a 400
//! `InvalidRequest` naming the parameter.

use crate::atproto::syntax::{validate_did, validate_tid};
use crate::http::xrpc::{QueryParams, XrpcError, parse_bounded_int};

/// `listHosts`: `limit` 1–1000, default 200.
pub const LIST_HOSTS_LIMIT: (i64, i64, i64) = (1, 1000, 200);
/// `listRepos`: `limit` 1–1000, default 500.
pub const LIST_REPOS_LIMIT: (i64, i64, i64) = (1, 1000, 500);

/// Longest hostname: 253 characters of DNS name plus `:65535`.
pub const MAX_HOSTNAME_PARAM_LEN: usize = 253 + 6;

/// `limit` within `(min, max, default)`.
pub fn limit(q: &QueryParams, (min, max, default): (i64, i64, i64)) -> Result<i64, XrpcError> {
    q.int_in_range("limit", min, max, default)
}

/// The page cursor: the compact id (`hosts.id`, `accounts.uid`) of the last row of the
/// previous page, written in decimal. Clients treat it as opaque. Absent or empty means the
/// first page (some clients send `cursor=` on the first request).
pub fn cursor(q: &QueryParams) -> Result<i64, XrpcError> {
    match q.single("cursor")? {
        None | Some("") => Ok(0),
        Some(raw) => parse_bounded_int(raw).ok_or_else(|| {
            XrpcError::invalid_request(
                "parameter cursor is not a cursor this relay issued (expected the cursor of a previous page)",
            )
        }),
    }
}

/// The cursor string for a page that ends at `id`.
pub fn cursor_string(id: i64) -> String {
    id.to_string()
}

/// `did`: required, DID syntax (PROTOCOL.md §0). Any method is accepted here; a DID the relay
/// does not know is a `RepoNotFound`, not a bad request.
pub fn did(q: &QueryParams) -> Result<&str, XrpcError> {
    let did = q.required("did")?;
    validate_did(did).map_err(|e| {
        XrpcError::invalid_request(format!("parameter did is not a valid DID: {}", e.detail()))
    })?;
    Ok(did)
}

/// `since` (getRepo): optional TID.
pub fn since(q: &QueryParams) -> Result<Option<&str>, XrpcError> {
    match q.single("since")? {
        None => Ok(None),
        Some(raw) => validate_tid(raw).map(|()| Some(raw)).map_err(|e| {
            XrpcError::invalid_request(format!(
                "parameter since is not a valid TID: {}",
                e.detail()
            ))
        }),
    }
}

/// `hostname` (getHostStatus): required, a bare hostname (`pds.example.com`), optionally with a
/// port (`localhost:2583`, for admin-added hosts); no scheme, path or user info. Case-folded to
/// lower case, the form hosts are stored in.
pub fn hostname(q: &QueryParams) -> Result<String, XrpcError> {
    let raw = q.required("hostname")?;
    normalize_hostname(raw).ok_or_else(|| {
        XrpcError::invalid_request(
            "parameter hostname must be a bare hostname (no scheme or path), optionally with :port",
        )
    })
}

/// `host[:port]` in lower case, or `None` when it is not one.
pub fn normalize_hostname(raw: &str) -> Option<String> {
    if raw.len() > MAX_HOSTNAME_PARAM_LEN {
        return None;
    }
    let lower = raw.to_ascii_lowercase();
    let (host, port) = match lower.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (lower.as_str(), None),
    };
    if let Some(port) = port {
        let valid = parse_bounded_int(port)
            .filter(|p| port.len() <= 5 && (1..=65535).contains(p))
            .is_some();
        if !valid {
            return None;
        }
    }
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    let labels_ok = host.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    });
    labels_ok.then_some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> QueryParams {
        QueryParams::parse(s).unwrap()
    }

    #[test]
    fn hostnames_are_bare_names_with_an_optional_port() {
        for (raw, want) in [
            ("pds.example.com", Some("pds.example.com")),
            ("PDS.Example.COM", Some("pds.example.com")),
            ("localhost:2583", Some("localhost:2583")),
            ("127.0.0.1:80", Some("127.0.0.1:80")),
            ("https://pds.example.com", None),
            ("pds.example.com/xrpc", None),
            ("user@pds.example.com", None),
            ("pds.example.com:", None),
            ("pds.example.com:0", None),
            ("pds.example.com:65536", None),
            ("pds.example.com:1:2", None),
            ("-pds.example.com", None),
            ("pds..example.com", None),
            ("pds.example.com.", None),
            ("", None),
            ("p\u{e9}s.example.com", None),
        ] {
            assert_eq!(normalize_hostname(raw).as_deref(), want, "{raw:?}");
        }
        let long = format!("{}.com", "a.".repeat(130));
        assert_eq!(normalize_hostname(&long), None);
    }

    #[test]
    fn cursors_are_the_decimal_ids_we_issue() {
        assert_eq!(cursor(&q("")), Ok(0));
        assert_eq!(cursor(&q("cursor=")), Ok(0));
        assert_eq!(
            cursor(&q(&format!("cursor={}", cursor_string(1234)))),
            Ok(1234)
        );
        for bad in [
            "cursor=-1",
            "cursor=abc",
            "cursor=1.5",
            "cursor=99999999999999999999",
        ] {
            let err = cursor(&q(bad)).unwrap_err();
            assert!(err.message.contains("cursor"), "{bad}: {err}");
        }
        assert!(cursor(&q("cursor=1&cursor=2")).is_err());
    }

    #[test]
    fn did_and_since_are_checked_for_syntax() {
        assert_eq!(did(&q("did=did:plc:abc")), Ok("did:plc:abc"));
        assert!(did(&q("did=did%3Aweb%3Aexample.com")).is_ok());
        for bad in [
            "",
            "did=",
            "did=plc:abc",
            "did=did:PLC:abc",
            "did=did:plc:abc:",
        ] {
            let err = did(&q(bad)).unwrap_err();
            assert!(err.message.contains("did"), "{bad}: {err}");
        }
        assert_eq!(since(&q("")), Ok(None));
        assert_eq!(since(&q("since=3jzfcijpj2z2a")), Ok(Some("3jzfcijpj2z2a")));
        for bad in ["since=", "since=3jzfcijpj2z2", "since=zzzzzzzzzzzzz"] {
            let err = since(&q(bad)).unwrap_err();
            assert!(err.message.contains("since"), "{bad}: {err}");
        }
    }
}
