//! XRPC conventions shared by every `/xrpc/` surface (PROTOCOL.md §3): the JSON error
//! `{"error": "<Name>", "message": "..."}`, a strict query-string parser, and the answers for
//! an unknown method and for a query called with the wrong HTTP method.
//!
//! Why a parser of our own instead of `web::Query<T>`: serde's URL decoding keeps the last of
//! repeated parameters, decodes invalid UTF-8 lossily and reports errors that do not name the
//! parameter. Here every rule is explicit and every failure is a 400 `InvalidRequest` whose
//! message names the parameter: the query string is bounded ([`MAX_QUERY_LEN`]), percent
//! escapes must be well formed and decode to UTF-8, a parameter read as a single value must
//! not repeat, and integers are parsed from at most a few digits (no overflow, no sign games).
//! Parameters a method does not know are ignored, as XRPC servers do.
//!
//! Unknown methods: [`super::not_found`] (the default service of every listener) answers 404
//! `MethodNotImplemented` for any path under `/xrpc/`, so no route module has to register a
//! catch-all and none can shadow another's routes, whatever order they are mounted in.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};

use crate::store::postgres::DbError;

/// Longest query string accepted (bytes, before decoding). A DID is at most 2,048 characters,
/// so every valid request fits with room to spare.
pub const MAX_QUERY_LEN: usize = 8 * 1024;

/// Most parameters in one query string (`a&a&a...` within the length bound is cheap, but
/// there is no reason to keep thousands of pairs).
pub const MAX_QUERY_PARAMS: usize = 64;

/// The path prefix of XRPC methods.
pub const XRPC_PREFIX: &str = "/xrpc/";

/// An XRPC error response: status, a fixed error name (also a metric label) and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} ({status}): {message}")]
pub struct XrpcError {
    pub status: StatusCode,
    /// The XRPC error name (`InvalidRequest`, `RepoNotFound`, ...).
    pub name: &'static str,
    pub message: String,
}

impl XrpcError {
    pub fn new(status: StatusCode, name: &'static str, message: impl Into<String>) -> XrpcError {
        XrpcError {
            status,
            name,
            message: message.into(),
        }
    }

    /// 400 `InvalidRequest`: a bad parameter (the message names it).
    pub fn invalid_request(message: impl Into<String>) -> XrpcError {
        XrpcError::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }

    /// 404 `MethodNotImplemented`: no such XRPC method here.
    pub fn method_not_implemented(path: &str) -> XrpcError {
        let method = path.strip_prefix(XRPC_PREFIX).unwrap_or(path);
        // Echo a bounded, printable form of the name only.
        let shown: String = method
            .chars()
            .take(128)
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect();
        XrpcError::new(
            StatusCode::NOT_FOUND,
            "MethodNotImplemented",
            format!("method not implemented: {shown}"),
        )
    }

    /// The JSON response.
    pub fn to_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(ErrorBody {
            error: self.name,
            message: &self.message,
        })
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl ResponseError for XrpcError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        self.to_response()
    }
}

/// A database failure as the client sees it: 503 `DatabaseUnavailable` when retrying later may
/// help (pool, connection, timeout), 500 `InternalServerError` otherwise. The details go to the
/// log, not to the client.
impl From<DbError> for XrpcError {
    fn from(e: DbError) -> XrpcError {
        // Sampled: while Postgres is down every request fails the same way (each is counted
        // in rookery_http_requests_total with its 503).
        static FAILED: crate::actors::obs::LogSample = crate::actors::obs::LogSample::new();
        if let Some(seen) = FAILED.hit() {
            tracing::warn!(reason = e.reason(), error = %e, seen, "xrpc query failed in postgres");
        }
        if e.is_transient() {
            XrpcError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "DatabaseUnavailable",
                "the relay's database is unavailable; retry later",
            )
        } else {
            XrpcError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "internal error",
            )
        }
    }
}

/// 405 for a query called with another HTTP method than GET (the resource's default service).
pub async fn query_only() -> HttpResponse {
    let mut resp = XrpcError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "InvalidRequest",
        "this XRPC method is a query: use GET",
    )
    .to_response();
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
    resp
}

/// 405 for a procedure called with another HTTP method than POST.
pub async fn procedure_only() -> HttpResponse {
    let mut resp = XrpcError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "InvalidRequest",
        "this XRPC method is a procedure: use POST",
    )
    .to_response();
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
    resp
}

/// The decoded parameters of one query string, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    /// Parses `a=1&b=x%20y` (the part after `?`). `+` is a space; `%XX` must be two hex
    /// digits; names and values must decode to UTF-8; empty segments (`a=1&&b=2`) are skipped;
    /// a segment without `=` is a parameter with an empty value.
    pub fn parse(raw: &str) -> Result<QueryParams, XrpcError> {
        if raw.len() > MAX_QUERY_LEN {
            return Err(XrpcError::invalid_request(format!(
                "query string longer than {MAX_QUERY_LEN} bytes"
            )));
        }
        let mut pairs = Vec::new();
        for segment in raw.split('&').filter(|s| !s.is_empty()) {
            if pairs.len() == MAX_QUERY_PARAMS {
                return Err(XrpcError::invalid_request(format!(
                    "more than {MAX_QUERY_PARAMS} query parameters"
                )));
            }
            let (name, value) = segment.split_once('=').unwrap_or((segment, ""));
            let name = decode_component(name)
                .map_err(|why| XrpcError::invalid_request(format!("query parameter name {why}")))?;
            let value = decode_component(value).map_err(|why| {
                XrpcError::invalid_request(format!("parameter {} {why}", printable(&name)))
            })?;
            pairs.push((name, value));
        }
        Ok(QueryParams { pairs })
    }

    /// The value of a parameter that may appear at most once.
    pub fn single(&self, name: &str) -> Result<Option<&str>, XrpcError> {
        let mut found = None;
        for (k, v) in &self.pairs {
            if k == name {
                if found.is_some() {
                    return Err(XrpcError::invalid_request(format!(
                        "parameter {name} must not be repeated"
                    )));
                }
                found = Some(v.as_str());
            }
        }
        Ok(found)
    }

    /// A parameter that must appear exactly once, with a non-empty value.
    pub fn required(&self, name: &str) -> Result<&str, XrpcError> {
        match self.single(name)? {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(XrpcError::invalid_request(format!(
                "parameter {name} must not be empty"
            ))),
            None => Err(XrpcError::invalid_request(format!(
                "parameter {name} is required"
            ))),
        }
    }

    /// An optional integer in `min..=max`, `default` when absent. Digits only: no sign, no
    /// spaces, no exponent; anything else, an empty value or a value out of range is a 400.
    pub fn int_in_range(
        &self,
        name: &str,
        min: i64,
        max: i64,
        default: i64,
    ) -> Result<i64, XrpcError> {
        let Some(raw) = self.single(name)? else {
            return Ok(default);
        };
        parse_bounded_int(raw)
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| {
                XrpcError::invalid_request(format!(
                    "parameter {name} must be an integer from {min} to {max}"
                ))
            })
    }
}

/// A decimal integer of 1–18 ASCII digits (so it always fits an `i64`).
pub fn parse_bounded_int(raw: &str) -> Option<i64> {
    if raw.is_empty() || raw.len() > 18 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// Percent-decodes one query component (with `+` as space) into UTF-8.
fn decode_component(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or("has a truncated percent escape")?;
                let hi = hex_value(hex[0]).ok_or("has a malformed percent escape")?;
                let lo = hex_value(hex[1]).ok_or("has a malformed percent escape")?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "is not valid UTF-8")
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A bounded, printable rendering of a client-supplied name for error messages.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_plus_and_skips_empty_segments() {
        let q = QueryParams::parse("did=did%3Aplc%3Aabc&&x=a+b&flag").unwrap();
        assert_eq!(q.single("did").unwrap(), Some("did:plc:abc"));
        assert_eq!(q.single("x").unwrap(), Some("a b"));
        assert_eq!(q.single("flag").unwrap(), Some(""));
        assert_eq!(q.single("missing").unwrap(), None);
        assert_eq!(QueryParams::parse("").unwrap(), QueryParams::default());
    }

    #[test]
    fn refuses_bad_escapes_non_utf8_and_oversized_input() {
        for bad in ["a=%", "a=%4", "a=%zz", "a=%FF", "%C3%28=1", "a=%e2%82"] {
            let err = QueryParams::parse(bad).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(err.name, "InvalidRequest", "{bad}");
        }
        let long = format!("a={}", "x".repeat(MAX_QUERY_LEN));
        assert!(QueryParams::parse(&long).is_err());
        let many = vec!["a=1"; MAX_QUERY_PARAMS + 1].join("&");
        assert!(QueryParams::parse(&many).is_err());
        let enough = vec!["a=1"; MAX_QUERY_PARAMS].join("&");
        assert!(QueryParams::parse(&enough).is_ok());
    }

    #[test]
    fn repeated_and_missing_parameters_are_named() {
        let q = QueryParams::parse("did=a&did=b&empty=").unwrap();
        let err = q.single("did").unwrap_err();
        assert!(err.message.contains("did"), "{err}");
        assert!(q.required("did").is_err());
        let err = q.required("nope").unwrap_err();
        assert!(err.message.contains("nope is required"), "{err}");
        let err = q.required("empty").unwrap_err();
        assert!(err.message.contains("empty must not be empty"), "{err}");
    }

    #[test]
    fn integers_are_digits_only_and_bounded() {
        let limit = |raw: &str| {
            QueryParams::parse(&format!("limit={raw}"))
                .unwrap()
                .int_in_range("limit", 1, 1000, 200)
        };
        assert_eq!(limit("1"), Ok(1));
        assert_eq!(limit("1000"), Ok(1000));
        assert_eq!(limit("0007"), Ok(7));
        for bad in [
            "0",
            "1001",
            "",
            "-1",
            "+5",
            "%2B5",
            " 5",
            "5.0",
            "1e3",
            "99999999999999999999999",
            "0x10",
        ] {
            let err = limit(bad).unwrap_err();
            assert!(err.message.contains("limit"), "{bad}: {err}");
        }
        let q = QueryParams::parse("").unwrap();
        assert_eq!(q.int_in_range("limit", 1, 1000, 200), Ok(200));
    }

    #[test]
    fn error_body_is_xrpc_json() {
        let resp = XrpcError::invalid_request("parameter did is required").to_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            resp.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        let e = XrpcError::method_not_implemented("/xrpc/com.example.nope\u{7f}");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.name, "MethodNotImplemented");
        assert_eq!(e.message, "method not implemented: com.example.nope?");
    }
}
