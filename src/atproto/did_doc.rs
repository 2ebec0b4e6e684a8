//! DID document parsing: from the JSON a PLC directory or a did:web host returns to the three
//! facts a relay needs: the handle the document claims, the `#atproto` signing key and the
//! `#atproto_pds` endpoint (PROTOCOL.md §6).
//!
//! The document is untrusted and fetched over the network, so it is bounded before parsing
//! (64 KiB, at most 64 entries per list) and only the fields atproto uses are read; everything
//! else is ignored. A document that lacks a key or a PDS is *not* an error: the account exists
//! but is "broken" ([`Identity::is_usable`]) and its commits must be ignored. A document that
//! is malformed in a part atproto relies on (wrong `id`, an `#atproto` key that does not
//! decode, a PDS endpoint that is not a bare http(s) origin) is a [`DidDocError`].
//!
//! Matching follows indigo: the key's `id` is `#atproto` or `<did>#atproto`, the service's
//! `id` is `#atproto_pds` or `<did>#atproto_pds`. The handle is the first `at://` entry of
//! `alsoKnownAs` with valid handle syntax, lower-cased; it is only a claim until a
//! bidirectional check, and no TLD policy is applied here (see
//! [`super::syntax::is_disallowed_handle_tld`]).

use serde::Deserialize;
use serde_json::Value;

use super::keys::{KeyError, PublicKey, TYPE_LEGACY_K256, TYPE_LEGACY_P256, TYPE_MULTIKEY};
use super::syntax::{parse_handle, validate_did};

/// Largest DID document accepted, in bytes.
pub const MAX_DID_DOC_BYTES: usize = 64 * 1024;
/// Most entries accepted in `alsoKnownAs`, `verificationMethod` or `service`.
pub const MAX_DID_DOC_LIST_LEN: usize = 64;
/// Longest accepted `serviceEndpoint` string.
const MAX_ENDPOINT_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DidDocError {
    #[error("DID document larger than {MAX_DID_DOC_BYTES} bytes")]
    TooLarge,
    #[error("DID document is not JSON")]
    NotJson,
    #[error("DID document has an unexpected structure")]
    BadStructure,
    #[error("the DID being resolved is not a valid DID")]
    BadDid,
    #[error("DID document id does not match the DID being resolved")]
    WrongId,
    #[error("DID document list longer than {MAX_DID_DOC_LIST_LEN} entries")]
    ListTooLong,
    #[error("#atproto verification method has an unusable key: {0}")]
    BadKey(KeyError),
    #[error("#atproto_pds service endpoint is not an http(s) origin")]
    BadPdsEndpoint,
}

impl DidDocError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DidDocError::TooLarge => "did-doc-too-large",
            DidDocError::NotJson => "did-doc-not-json",
            DidDocError::BadStructure => "did-doc-bad-structure",
            DidDocError::BadDid => "did-doc-bad-did",
            DidDocError::WrongId => "did-doc-wrong-id",
            DidDocError::ListTooLong => "did-doc-list-too-long",
            DidDocError::BadKey(_) => "did-doc-bad-key",
            DidDocError::BadPdsEndpoint => "did-doc-bad-pds-endpoint",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PdsScheme {
    Http,
    Https,
}

impl PdsScheme {
    pub fn as_str(&self) -> &'static str {
        match self {
            PdsScheme::Http => "http",
            PdsScheme::Https => "https",
        }
    }
}

/// A PDS origin: scheme plus `host` or `host:port` (lower case, default port omitted).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PdsEndpoint {
    pub scheme: PdsScheme,
    pub host: String,
}

impl PdsEndpoint {
    /// Parses a `serviceEndpoint`: `http(s)://host[:port]` with no user info, path, query or
    /// fragment (a lone trailing `/` is tolerated).
    pub fn parse(endpoint: &str) -> Result<PdsEndpoint, DidDocError> {
        let bad = DidDocError::BadPdsEndpoint;
        if endpoint.len() > MAX_ENDPOINT_LEN {
            return Err(bad);
        }
        let scheme = if endpoint.starts_with("https://") {
            PdsScheme::Https
        } else if endpoint.starts_with("http://") {
            PdsScheme::Http
        } else {
            return Err(bad);
        };
        // Checked on the raw string: the URL parser would hide "?" with an empty query.
        if endpoint.contains(['?', '#', '@', '\\']) {
            return Err(bad);
        }
        let url = url::Url::parse(endpoint).map_err(|_| bad.clone())?;
        if url.path() != "/" || !url.username().is_empty() || url.password().is_some() {
            return Err(bad);
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(bad.clone())?;
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let endpoint = PdsEndpoint {
            scheme,
            host: host.to_ascii_lowercase(),
        };
        // The limit applies to what is stored, too: the host is kept in its IDNA (punycode)
        // form, which can be longer than the input ("é." is 3 bytes, "xn--9ca." 8), and an
        // endpoint whose own url() it would refuse must not be accepted.
        if endpoint.url().len() > MAX_ENDPOINT_LEN {
            return Err(bad);
        }
        Ok(endpoint)
    }

    /// `scheme://host[:port]`, the base for XRPC calls.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.host)
    }

    /// The host without any port, for host-authority checks against an upstream hostname.
    pub fn hostname(&self) -> &str {
        if self.host.starts_with('[') {
            // IPv6 literal: "[::1]:2583" or "[::1]".
            return match self.host.find(']') {
                Some(end) => &self.host[..=end],
                None => &self.host,
            };
        }
        match self.host.rsplit_once(':') {
            Some((name, _port)) => name,
            None => &self.host,
        }
    }
}

/// What a relay takes from a DID document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub did: String,
    /// The claimed handle (normalised to lower case), not yet verified.
    pub handle: Option<String>,
    pub signing_key: Option<PublicKey>,
    pub pds: Option<PdsEndpoint>,
}

impl Identity {
    /// An account can have commits verified only with both a signing key and a PDS.
    pub fn is_usable(&self) -> bool {
        self.signing_key.is_some() && self.pds.is_some()
    }
}

#[derive(Deserialize)]
struct RawDoc {
    id: String,
    #[serde(default, rename = "alsoKnownAs")]
    also_known_as: Option<Vec<Value>>,
    #[serde(default, rename = "verificationMethod")]
    verification_method: Option<Vec<Value>>,
    #[serde(default)]
    service: Option<Vec<Value>>,
}

fn str_field<'a>(entry: &'a Value, name: &str) -> Option<&'a str> {
    entry.get(name).and_then(Value::as_str)
}

fn is_fragment_id(id: Option<&str>, did: &str, fragment: &str) -> bool {
    match id {
        Some(id) => match id.strip_suffix(fragment) {
            Some(prefix) => prefix.is_empty() || prefix == did,
            None => false,
        },
        None => false,
    }
}

/// Parses a DID document fetched for `expected_did`.
pub fn parse_did_document(expected_did: &str, json: &[u8]) -> Result<Identity, DidDocError> {
    if json.len() > MAX_DID_DOC_BYTES {
        return Err(DidDocError::TooLarge);
    }
    validate_did(expected_did).map_err(|_| DidDocError::BadDid)?;
    let doc: RawDoc = serde_json::from_slice(json).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => DidDocError::BadStructure,
        _ => DidDocError::NotJson,
    })?;
    if doc.id != expected_did {
        return Err(DidDocError::WrongId);
    }
    let also_known_as = doc.also_known_as.unwrap_or_default();
    let methods = doc.verification_method.unwrap_or_default();
    let services = doc.service.unwrap_or_default();
    if also_known_as.len() > MAX_DID_DOC_LIST_LEN
        || methods.len() > MAX_DID_DOC_LIST_LEN
        || services.len() > MAX_DID_DOC_LIST_LEN
    {
        return Err(DidDocError::ListTooLong);
    }
    let did = expected_did;

    let handle = also_known_as
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|aka| aka.strip_prefix("at://"))
        .find_map(|h| parse_handle(h).ok());

    let mut signing_key = None;
    for method in &methods {
        let method_type = str_field(method, "type").unwrap_or("");
        if is_fragment_id(str_field(method, "id"), did, "#atproto")
            && str_field(method, "controller") == Some(did)
            && matches!(
                method_type,
                TYPE_MULTIKEY | TYPE_LEGACY_K256 | TYPE_LEGACY_P256
            )
        {
            let multibase = str_field(method, "publicKeyMultibase")
                .ok_or(DidDocError::BadKey(KeyError::NotBase58Multibase))?;
            let key = PublicKey::from_verification_method(method_type, multibase)
                .map_err(DidDocError::BadKey)?;
            signing_key = Some(key);
            break;
        }
    }

    let mut pds = None;
    for service in &services {
        if is_fragment_id(str_field(service, "id"), did, "#atproto_pds")
            && str_field(service, "type") == Some("AtprotoPersonalDataServer")
        {
            let endpoint =
                str_field(service, "serviceEndpoint").ok_or(DidDocError::BadPdsEndpoint)?;
            pds = Some(PdsEndpoint::parse(endpoint)?);
            break;
        }
    }

    Ok(Identity {
        did: did.to_owned(),
        handle,
        signing_key,
        pds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
    const KEY: &str = "zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF";

    fn doc(aka: &str, methods: &str, services: &str) -> String {
        format!(
            r#"{{"id":"{DID}","alsoKnownAs":[{aka}],"verificationMethod":[{methods}],"service":[{services}]}}"#
        )
    }

    fn key_method(id: &str, controller: &str, ty: &str, key: &str) -> String {
        format!(
            r#"{{"id":"{id}","type":"{ty}","controller":"{controller}","publicKeyMultibase":"{key}"}}"#
        )
    }

    fn pds_service(id: &str, ty: &str, endpoint: &str) -> String {
        format!(r#"{{"id":"{id}","type":"{ty}","serviceEndpoint":"{endpoint}"}}"#)
    }

    fn parse(json: &str) -> Result<Identity, DidDocError> {
        parse_did_document(DID, json.as_bytes())
    }

    #[test]
    fn full_document() {
        let json = doc(
            r#""https://example.com/x","at://not_valid","at://Alice.Example.COM","at://bob.test""#,
            &[
                key_method("#other", DID, "Multikey", KEY),
                key_method("#atproto", "did:plc:someoneelse", "Multikey", KEY),
                key_method("#atproto", DID, "JsonWebKey2020", KEY),
                key_method(&format!("{DID}#atproto"), DID, "Multikey", KEY),
            ]
            .join(","),
            &[
                pds_service("#atproto_pds", "Other", "https://nope.example"),
                pds_service(
                    "#atproto_pds",
                    "AtprotoPersonalDataServer",
                    "https://PDS.Example.com:8443/",
                ),
            ]
            .join(","),
        );
        let id = parse(&json).unwrap();
        assert_eq!(id.handle.as_deref(), Some("alice.example.com"));
        assert_eq!(
            id.signing_key
                .as_ref()
                .map(PublicKey::to_multikey)
                .as_deref(),
            Some(KEY)
        );
        let pds = id.pds.as_ref().unwrap();
        assert_eq!(
            (pds.scheme, pds.host.as_str()),
            (PdsScheme::Https, "pds.example.com:8443")
        );
        assert_eq!(pds.hostname(), "pds.example.com");
        assert_eq!(pds.url(), "https://pds.example.com:8443");
        assert!(id.is_usable());
    }

    #[test]
    fn missing_key_or_pds_is_broken_not_an_error() {
        let id = parse(&doc("", "", "")).unwrap();
        assert_eq!(
            (id.handle, id.signing_key.is_some(), id.pds),
            (None, false, None)
        );
        let only_key = parse(&doc("", &key_method("#atproto", DID, "Multikey", KEY), "")).unwrap();
        assert!(!only_key.is_usable());
        let bare = parse(&format!(r#"{{"id":"{DID}"}}"#)).unwrap();
        assert!(!bare.is_usable());
        let nulls = parse(&format!(
            r#"{{"id":"{DID}","alsoKnownAs":null,"verificationMethod":null,"service":null}}"#
        ))
        .unwrap();
        assert!(!nulls.is_usable());
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_did_document("did:plc:other", doc("", "", "").as_bytes()),
            Err(DidDocError::WrongId)
        );
        assert_eq!(parse_did_document("nope", b"{}"), Err(DidDocError::BadDid));
        assert_eq!(parse("{not json"), Err(DidDocError::NotJson));
        assert_eq!(parse(""), Err(DidDocError::NotJson));
        assert_eq!(parse(r#"{"id": 5}"#), Err(DidDocError::BadStructure));
        assert_eq!(parse("[]"), Err(DidDocError::BadStructure));
        let big = format!(
            r#"{{"id":"{DID}","x":"{}"}}"#,
            "a".repeat(MAX_DID_DOC_BYTES)
        );
        assert_eq!(parse(&big), Err(DidDocError::TooLarge));
        let many = vec![r#""at://a.test""#; MAX_DID_DOC_LIST_LEN + 1].join(",");
        assert_eq!(parse(&doc(&many, "", "")), Err(DidDocError::ListTooLong));
        let bad_key = doc("", &key_method("#atproto", DID, "Multikey", "zabc"), "");
        assert!(matches!(parse(&bad_key), Err(DidDocError::BadKey(_))));
        assert_eq!(parse(&bad_key).unwrap_err().reason(), "did-doc-bad-key");
        for endpoint in [
            "ftp://pds.example.com",
            "https://pds.example.com/xrpc",
            "https://pds.example.com?x",
            "https://pds.example.com#x",
            "https://user@pds.example.com",
            "https://",
            "pds.example.com",
        ] {
            let d = doc(
                "",
                "",
                &pds_service("#atproto_pds", "AtprotoPersonalDataServer", endpoint),
            );
            assert_eq!(parse(&d), Err(DidDocError::BadPdsEndpoint), "{endpoint}");
        }
    }

    #[test]
    fn endpoint_forms() {
        let http = PdsEndpoint::parse("http://localhost:2583").unwrap();
        assert_eq!(
            (http.scheme, http.host.as_str()),
            (PdsScheme::Http, "localhost:2583")
        );
        assert_eq!(http.hostname(), "localhost");
        // The default port is dropped.
        assert_eq!(
            PdsEndpoint::parse("https://a.example:443").unwrap().host,
            "a.example"
        );
        let v6 = PdsEndpoint::parse("http://[::1]:2583").unwrap();
        assert_eq!((v6.host.as_str(), v6.hostname()), ("[::1]:2583", "[::1]"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_did_document(DID, &bytes);
        }

        #[test]
        fn arbitrary_fields_never_panic(
            aka in "\\PC{0,40}", id in "\\PC{0,40}", ty in "(Multikey|EcdsaSecp256k1VerificationKey2019|\\PC{0,10})",
            key in "z?[1-9A-Za-z]{0,60}", endpoint in "(https?://)?\\PC{0,40}",
        ) {
            let esc = |s: &str| serde_json::to_string(s).unwrap_or_default();
            let json = format!(
                r##"{{"id":"{DID}","alsoKnownAs":[{}],"verificationMethod":[{{"id":{},"type":{},"controller":"{DID}","publicKeyMultibase":{}}}],"service":[{{"id":"#atproto_pds","type":"AtprotoPersonalDataServer","serviceEndpoint":{}}}]}}"##,
                esc(&aka), esc(&id), esc(&ty), esc(&key), esc(&endpoint)
            );
            let _ = parse(&json);
        }

        /// Whatever parses re-parses from its own `url()` to the same endpoint.
        #[test]
        fn endpoint_reparses_to_itself(
            scheme in "https?://", host in "[a-zA-Z0-9é.ü-]{1,40}", port in "(:[0-9]{1,5})?",
            slash in "/?",
        ) {
            if let Ok(ep) = PdsEndpoint::parse(&format!("{scheme}{host}{port}{slash}")) {
                prop_assert!(ep.url().len() <= MAX_ENDPOINT_LEN);
                prop_assert_eq!(PdsEndpoint::parse(&ep.url()), Ok(ep));
            }
        }

        #[test]
        fn endpoint_parse_never_panics(s in "\\PC{0,60}") {
            if let Ok(ep) = PdsEndpoint::parse(&s) {
                prop_assert!(!ep.host.is_empty());
                prop_assert!(!ep.hostname().is_empty());
            }
        }
    }
}
