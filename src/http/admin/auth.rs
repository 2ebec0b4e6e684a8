//! Who may call the admin API: HTTP Basic `admin:<password>` or `Bearer <password>`, against
//! the configured passwords (INDIGO-ADMIN.md).
//!
//! Why compare digests: a byte-by-byte comparison that stops at the first difference tells a
//! patient attacker how much of a guess was right. Both sides are hashed to fixed-size SHA-256
//! digests and compared with a fold that always reads every byte, and every configured password
//! is tried (no early exit), so the time taken says nothing about the secret or which one
//! matched.
//!
//! No password configured means the admin API is off (503), never open.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};
use base64::Engine;
use sha2::{Digest, Sha256};

/// The credential an admin request was made with: the index of the matching password in the
/// configured list (logs say who without saying what).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminCaller {
    pub credential: usize,
}

/// The configured admin passwords, as digests.
#[derive(Clone)]
pub struct AdminAuth {
    digests: std::sync::Arc<[[u8; 32]]>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("passwords", &self.digests.len())
            .finish()
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No password is configured: the admin API is off.
    Disabled,
    /// Missing, malformed or wrong credentials.
    Unauthorized,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminAuth {
    /// From the configured passwords (`config` keeps them as redacting secrets; they are
    /// only read here, to digest them).
    pub fn new<'a>(passwords: impl IntoIterator<Item = &'a str>) -> AdminAuth {
        AdminAuth {
            digests: passwords
                .into_iter()
                .map(|p| digest(p.as_bytes()))
                .collect(),
        }
    }

    /// Whether any password is configured.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<AdminCaller, Denied> {
        if !self.enabled() {
            return Err(Denied::Disabled);
        }
        let presented = authorization
            .and_then(presented_password)
            .ok_or(Denied::Unauthorized)?;
        let presented = digest(&presented);
        let mut matched = None;
        for (i, d) in self.digests.iter().enumerate() {
            if same(d, &presented) && matched.is_none() {
                matched = Some(i);
            }
        }
        matched
            .map(|credential| AdminCaller { credential })
            .ok_or(Denied::Unauthorized)
    }
}

/// Longest `Authorization` header looked at (a password of a few hundred bytes fits).
const MAX_AUTHORIZATION: usize = 4096;

/// The password of `Basic base64(admin:<password>)` or `Bearer <password>`; the scheme is
/// case-insensitive, the user must be `admin`.
fn presented_password(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() > MAX_AUTHORIZATION {
        return None;
    }
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.as_bytes().to_vec());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
    (user == b"admin" && !password.is_empty()).then(|| password.to_vec())
}

/// The refusal response: 503 when the admin API is off, 401 with `WWW-Authenticate: Basic`
/// otherwise (the shape goat and the reference relay use).
pub fn denied_response(denied: Denied) -> HttpResponse {
    match denied {
        Denied::Disabled => {
            HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE).json(serde_json::json!({
                "error": "the admin API is disabled: no --admin-password is configured",
            }))
        }
        Denied::Unauthorized => HttpResponse::build(StatusCode::UNAUTHORIZED)
            .insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"rookery admin\""))
            .json(serde_json::json!({ "error": "Unauthorized" })),
    }
}

/// The admin scope's middleware: refuses or lets through, puts the [`AdminCaller`] in the
/// request's extensions, and logs every admin request with who, what and the outcome.
pub async fn require_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let auth = req.app_data::<web::Data<AdminAuth>>().cloned();
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let checked = match &auth {
        Some(auth) => auth.check(header),
        None => Err(Denied::Disabled),
    };
    let (method, path, query) = (
        req.method().to_string(),
        req.path().to_string(),
        bounded(req.query_string()),
    );
    let caller = match checked {
        Ok(caller) => caller,
        Err(denied) => {
            tracing::warn!(%method, %path, ?denied, peer = ?req.peer_addr(), "admin request refused");
            return Ok(req.into_response(denied_response(denied)));
        }
    };
    req.extensions_mut().insert(caller);
    let res = next.call(req).await?;
    tracing::info!(
        credential = caller.credential,
        %method,
        %path,
        %query,
        status = res.status().as_u16(),
        "admin request"
    );
    Ok(res.map_into_boxed_body())
}

/// A query string cut to a loggable length.
fn bounded(query: &str) -> String {
    query.chars().take(256).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> Vec<u8> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {token}").into_bytes()
    }

    #[test]
    fn basic_and_bearer_against_several_passwords() {
        let auth = AdminAuth::new(["first", "sec:ond"]);
        assert_eq!(
            auth.check(Some(&basic("admin", "first"))),
            Ok(AdminCaller { credential: 0 })
        );
        assert_eq!(
            auth.check(Some(&basic("admin", "sec:ond"))),
            Ok(AdminCaller { credential: 1 })
        );
        assert_eq!(
            auth.check(Some(b"Bearer sec:ond")),
            Ok(AdminCaller { credential: 1 })
        );
        assert_eq!(
            auth.check(Some(b"bearer   first ")),
            Ok(AdminCaller { credential: 0 })
        );
        for bad in [
            basic("root", "first"),
            basic("admin", "firs"),
            basic("admin", ""),
            b"Bearer".to_vec(),
            b"Bearer ".to_vec(),
            b"Basic !!!".to_vec(),
            b"Digest first".to_vec(),
            b"first".to_vec(),
            vec![0xff, 0xfe],
            format!("Bearer {}", "x".repeat(5000)).into_bytes(),
        ] {
            assert_eq!(auth.check(Some(&bad)), Err(Denied::Unauthorized), "{bad:?}");
        }
        assert_eq!(auth.check(None), Err(Denied::Unauthorized));
    }

    #[test]
    fn no_password_means_disabled_not_open() {
        let auth = AdminAuth::new([]);
        assert!(!auth.enabled());
        assert_eq!(auth.check(Some(b"Bearer anything")), Err(Denied::Disabled));
        assert_eq!(auth.check(None), Err(Denied::Disabled));
    }
}
