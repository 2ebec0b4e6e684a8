//! TLS for simulated hosts: a throwaway certificate authority (self-signed, made at start)
//! and one leaf certificate for `localhost` and `127.0.0.1` signed by it, shared by every
//! host that serves TLS. A relay trusts the hosts by trusting the CA
//! (`rookery serve --upstream-ca-file`, given [`SimTls::write_ca_pem`]'s file); a client that
//! does not trust it fails the handshake, as it would against a host with a bad certificate.
//!
//! One leaf for all hosts: they differ only by port, and a certificate names hosts, not
//! ports. Keys are P-256 (rcgen on ring, like the rest of the tree's crypto).

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The names the leaf certificate is valid for.
pub const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// Why the certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SimTlsError {
    #[error("generating a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("building the TLS server config: {0}")]
    Rustls(#[from] rustls::Error),
}

struct Material {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server: rustls::ServerConfig,
}

/// A CA and the hosts' certificate. Cheap to clone; clones share the certificates.
#[derive(Clone)]
pub struct SimTls {
    material: Arc<Material>,
}

impl std::fmt::Debug for SimTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTls").finish_non_exhaustive()
    }
}

impl SimTls {
    /// A fresh CA and a leaf for [`SERVER_NAMES`] signed by it.
    pub fn generate() -> Result<SimTls, SimTlsError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "rookery-sim CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut leaf_params = CertificateParams::new(SERVER_NAMES.map(String::from).to_vec())?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "rookery-sim host");
        let leaf_key = KeyPair::generate()?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca)?;

        super::install_crypto_provider();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)?;
        Ok(SimTls {
            material: Arc::new(Material {
                ca_pem: ca.pem(),
                ca_der: ca.der().clone(),
                server,
            }),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.material.ca_pem
    }

    /// Writes the CA certificate (PEM) to `path`: the file a relay is given as
    /// `--upstream-ca-file`.
    pub fn write_ca_pem(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.ca_pem())
    }

    /// The hosts' server config (the TLS acceptor sets its ALPN).
    pub(crate) fn server_config(&self) -> rustls::ServerConfig {
        self.material.server.clone()
    }

    /// A client config that trusts this CA only and offers `http/1.1` (what a websocket
    /// client needs; see `actors::upstream_tls`).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        super::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        // A certificate made above always parses.
        let (_added, _ignored) = roots.add_parsable_certificates([self.material.ca_der.clone()]);
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}
