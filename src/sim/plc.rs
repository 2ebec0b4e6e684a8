//! A simulated PLC directory: `GET /<did>` answers the account's DID document as JSON, `404`
//! for a DID it never registered and `410` for a tombstoned one (PROTOCOL.md §6).
//!
//! The directory is mutable while it serves: [`SimPlc::register`], [`SimPlc::set_key`],
//! [`SimPlc::set_pds`], [`SimPlc::set_handle`] and [`SimPlc::tombstone`] change what the next
//! request sees, so a test can rotate keys, move accounts and delete identities under a running
//! relay. Requests are counted in total and per registered DID, so tests can assert how often
//! a relay resolves (caching, singleflight). Counting only registered DIDs keeps the map
//! bounded whatever a client asks for. [`SimPlc::set_response_delay`] slows every answer, so
//! concurrent lookups of one DID overlap.
//!
//! The documents are what `atproto::did_doc::parse_did_document` reads: `id`, `alsoKnownAs`
//! (`at://<handle>`), a `#atproto` `Multikey` verification method and a `#atproto_pds`
//! `AtprotoPersonalDataServer` service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use actix_web::dev::ServerHandle;
use actix_web::{HttpResponse, HttpServer, web};
use sha2::{Digest, Sha256};

use crate::atproto::keys::PublicKey;

/// What the directory holds for one DID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlcEntry {
    pub handle: String,
    pub signing_key: PublicKey,
    /// `serviceEndpoint` of `#atproto_pds`, e.g. `http://localhost:2583`.
    pub pds_endpoint: String,
    pub tombstoned: bool,
}

impl PlcEntry {
    /// The DID document JSON the directory serves for `did`.
    pub fn document(&self, did: &str) -> serde_json::Value {
        serde_json::json!({
            "@context": [
                "https://www.w3.org/ns/did/v1",
                "https://w3id.org/security/multikey/v1",
            ],
            "id": did,
            "alsoKnownAs": [format!("at://{}", self.handle)],
            "verificationMethod": [{
                "id": format!("{did}#atproto"),
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": self.signing_key.to_multikey(),
            }],
            "service": [{
                "id": "#atproto_pds",
                "type": "AtprotoPersonalDataServer",
                "serviceEndpoint": self.pds_endpoint,
            }],
        })
    }
}

#[derive(Default)]
struct Directory {
    entries: HashMap<String, PlcEntry>,
    /// Requests per registered DID (unknown DIDs only count in the totals).
    requests_by_did: HashMap<String, u64>,
    /// Source of fresh DIDs.
    next_id: u64,
}

struct PlcShared {
    directory: Mutex<Directory>,
    requests: AtomicU64,
    not_found: AtomicU64,
    /// Added before every answer, in milliseconds: a slow directory makes concurrent
    /// lookups of one DID overlap, which is what a resolver's singleflight is tested with.
    response_delay_ms: AtomicU64,
    /// When not 0, every request is answered with this HTTP status and no document.
    failure_status: AtomicU16,
}

impl PlcShared {
    /// The directory, even if a panicking control call poisoned the lock: the data is still
    /// consistent (each mutation is one map write) and a server must keep answering.
    fn directory(&self) -> MutexGuard<'_, Directory> {
        self.directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running simulated PLC directory. Cheap to clone; every clone controls the same directory.
#[derive(Clone)]
pub struct SimPlc {
    shared: Arc<PlcShared>,
    addr: SocketAddr,
    server: ServerHandle,
}

/// Errors of the control API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlcError {
    #[error("DID {0} is not registered")]
    UnknownDid(String),
}

impl SimPlc {
    /// Binds `127.0.0.1:0` and serves with one worker. Must be called inside an actix system
    /// (`#[actix_rt::test]`, `#[actix_rt::main]`).
    pub fn start() -> std::io::Result<SimPlc> {
        SimPlc::start_on(0)
    }

    /// [`SimPlc::start`] on `127.0.0.1:port` (`0`: any free port), for a relay started
    /// before the directory with its URL.
    pub fn start_on(port: u16) -> std::io::Result<SimPlc> {
        let shared = Arc::new(PlcShared {
            directory: Mutex::new(Directory::default()),
            requests: AtomicU64::new(0),
            not_found: AtomicU64::new(0),
            response_delay_ms: AtomicU64::new(0),
            failure_status: AtomicU16::new(0),
        });
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            actix_web::App::new()
                .app_data(data.clone())
                .route("/{did}", web::get().to(resolve))
                .default_service(web::to(crate::http::not_found))
        })
        .workers(1)
        .shutdown_timeout(1)
        .disable_signals()
        .bind(("127.0.0.1", port))?;
        let addr = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| std::io::Error::other("PLC server bound no address"))?;
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(SimPlc {
            shared,
            addr,
            server: handle,
        })
    }

    /// `http://127.0.0.1:<port>`: the base a resolver puts before `/<did>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A fresh, syntactically valid `did:plc` (24 base32 characters), derived from a counter
    /// so runs are reproducible. Not registered until [`SimPlc::register`].
    pub fn new_did(&self) -> String {
        let id = {
            let mut directory = self.shared.directory();
            directory.next_id += 1;
            directory.next_id
        };
        plc_did(id)
    }

    /// Registers (or replaces) `did`.
    pub fn register(&self, did: &str, entry: PlcEntry) {
        let mut directory = self.shared.directory();
        directory
            .requests_by_did
            .entry(did.to_string())
            .or_insert(0);
        directory.entries.insert(did.to_string(), entry);
    }

    fn update(&self, did: &str, change: impl FnOnce(&mut PlcEntry)) -> Result<(), PlcError> {
        let mut directory = self.shared.directory();
        let entry = directory
            .entries
            .get_mut(did)
            .ok_or_else(|| PlcError::UnknownDid(did.to_string()))?;
        change(entry);
        Ok(())
    }

    /// Key rotation: the document's `#atproto` key becomes `key`.
    pub fn set_key(&self, did: &str, key: PublicKey) -> Result<(), PlcError> {
        self.update(did, |e| e.signing_key = key)
    }

    /// Migration: the document's `#atproto_pds` endpoint becomes `endpoint`.
    pub fn set_pds(&self, did: &str, endpoint: &str) -> Result<(), PlcError> {
        self.update(did, |e| e.pds_endpoint = endpoint.to_string())
    }

    pub fn set_handle(&self, did: &str, handle: &str) -> Result<(), PlcError> {
        self.update(did, |e| e.handle = handle.to_string())
    }

    /// From now on `GET /<did>` answers `410 Gone`.
    pub fn tombstone(&self, did: &str) -> Result<(), PlcError> {
        self.update(did, |e| e.tombstoned = true)
    }

    /// What the directory holds for `did` (tombstoned entries included).
    pub fn entry(&self, did: &str) -> Option<PlcEntry> {
        self.shared.directory().entries.get(did).cloned()
    }

    /// Every `GET /<did>` request answered, whatever the outcome.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Requests for `did` (0 for a DID that was never registered).
    pub fn requests_for(&self, did: &str) -> u64 {
        self.shared
            .directory()
            .requests_by_did
            .get(did)
            .copied()
            .unwrap_or(0)
    }

    /// Requests answered `404`.
    pub fn not_found_requests(&self) -> u64 {
        self.shared.not_found.load(Ordering::Relaxed)
    }

    /// Delays every answer by `delay` (millisecond resolution; zero for none).
    pub fn set_response_delay(&self, delay: std::time::Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared
            .response_delay_ms
            .store(millis, Ordering::Relaxed);
    }

    /// A directory in trouble: from now on every request is answered with `status` (e.g.
    /// 500 or 503) and no document, until called with `None`. Requests are still counted.
    pub fn set_failure(&self, status: Option<u16>) {
        self.shared
            .failure_status
            .store(status.unwrap_or(0), Ordering::Relaxed);
    }

    /// Stops the listener (open connections are dropped).
    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}

/// The `n`th simulated `did:plc`: 24 base32 characters of a hash, as real identifiers are
/// (theirs hash the genesis operation).
fn plc_did(n: u64) -> String {
    let digest = Sha256::digest(format!("rookery-sim-plc/{n}").as_bytes());
    // 15 bytes are exactly 24 base32 characters.
    let encoded = data_encoding::BASE32_NOPAD.encode(&digest[..15]);
    format!("did:plc:{}", encoded.to_ascii_lowercase())
}

/// `GET /<did>`.
async fn resolve(shared: web::Data<PlcShared>, did: web::Path<String>) -> HttpResponse {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let delay = shared.response_delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        actix_rt::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let did = did.into_inner();
    let entry = {
        let mut directory = shared.directory();
        if let Some(count) = directory.requests_by_did.get_mut(&did) {
            *count += 1;
        }
        directory.entries.get(&did).cloned()
    };
    let failure = shared.failure_status.load(Ordering::Relaxed);
    if failure != 0 {
        let status = actix_web::http::StatusCode::from_u16(failure)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
        return HttpResponse::build(status).json(serde_json::json!({
            "message": "directory failing on purpose",
        }));
    }
    match entry {
        Some(entry) if entry.tombstoned => HttpResponse::Gone().json(serde_json::json!({
            "message": format!("DID not available: {did}"),
        })),
        Some(entry) => HttpResponse::Ok()
            .content_type("application/did+ld+json; charset=utf-8")
            .body(entry.document(&did).to_string()),
        None => {
            shared.not_found.fetch_add(1, Ordering::Relaxed);
            HttpResponse::NotFound().json(serde_json::json!({
                "message": format!("DID not registered: {did}"),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atproto::did_doc::{PdsEndpoint, parse_did_document};
    use crate::atproto::keys::{Curve, PrivateKey};
    use crate::atproto::syntax::validate_did;

    #[test]
    fn dids_are_valid_plc_identifiers_and_distinct() {
        let (a, b) = (plc_did(1), plc_did(2));
        assert_ne!(a, b);
        for did in [a, b] {
            assert_eq!(did.len(), "did:plc:".len() + 24, "{did}");
            validate_did(&did).unwrap();
        }
    }

    #[test]
    fn documents_parse_with_the_relays_parser() {
        let did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
        let key = PrivateKey::generate(Curve::K256).public_key();
        let entry = PlcEntry {
            handle: "alice.sim.test".into(),
            signing_key: key.clone(),
            pds_endpoint: "http://localhost:2583".into(),
            tombstoned: false,
        };
        let json = entry.document(did).to_string();
        let identity = parse_did_document(did, json.as_bytes()).unwrap();
        assert_eq!(identity.handle.as_deref(), Some("alice.sim.test"));
        assert_eq!(identity.signing_key, Some(key));
        assert_eq!(
            identity.pds,
            Some(PdsEndpoint::parse("http://localhost:2583").unwrap())
        );
    }
}
