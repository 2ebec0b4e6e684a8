//! What the relay trusts when it reaches upstream hosts over TLS (the Subscribers' `wss://`
//! dials, the shards' `getRepoStatus`, requestCrawl's `describeServer` probe): the webpki
//! roots, plus the PEM certificates of `--upstream-ca-file` (a private CA, e.g. the
//! simulator fleet's).
//!
//! The file is read once at start, with a size cap, and a file that is unreadable, too large
//! or holds no certificate is a configuration error naming it. The client configs are built
//! where a client is built, from these settings.
//!
//! **ALPN.** The websocket config offers only `http/1.1`: awc cannot open a websocket over
//! HTTP/2, and a host that offers `h2` (most TLS front ends do) would pick it if the client
//! offered it too, so the dial would fail after the handshake (`TunnelNotSupported`). Plain
//! HTTP calls offer `h2` and `http/1.1`, as awc does by default.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Largest CA file read (a bundle of a few hundred certificates fits easily).
pub const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// The roots of the relay's outbound TLS. The default trusts the webpki roots only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Where the extra roots came from (`None`: none configured).
    ca_file: Option<PathBuf>,
    extra_roots: Arc<[CertificateDer<'static>]>,
}

/// Why `--upstream-ca-file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("larger than {MAX_CA_FILE_BYTES} bytes")]
    TooLarge,
    #[error("not PEM certificates: {0}")]
    Pem(String),
    #[error("holds no PEM certificate")]
    NoCertificate,
    #[error("a certificate is not a usable root: {0}")]
    BadRoot(rustls::Error),
}

impl UpstreamTls {
    /// The webpki roots plus every certificate in the PEM file at `path`.
    pub fn load(path: &Path) -> Result<UpstreamTls, UpstreamTlsError> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(UpstreamTlsError::Read)?;
        let mut pem = Vec::new();
        file.take(MAX_CA_FILE_BYTES + 1)
            .read_to_end(&mut pem)
            .map_err(UpstreamTlsError::Read)?;
        if pem.len() as u64 > MAX_CA_FILE_BYTES {
            return Err(UpstreamTlsError::TooLarge);
        }
        let mut tls = UpstreamTls::from_pem(&pem)?;
        tls.ca_file = Some(path.to_path_buf());
        Ok(tls)
    }

    /// The webpki roots plus every certificate in `pem` (other PEM sections are skipped).
    pub fn from_pem(pem: &[u8]) -> Result<UpstreamTls, UpstreamTlsError> {
        let extra_roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| UpstreamTlsError::Pem(e.to_string()))?;
        if extra_roots.is_empty() {
            return Err(UpstreamTlsError::NoCertificate);
        }
        // Each must parse as a trust anchor; finding out here beats a failing dial later.
        let mut store = rustls::RootCertStore::empty();
        for root in &extra_roots {
            store.add(root.clone()).map_err(UpstreamTlsError::BadRoot)?;
        }
        Ok(UpstreamTls {
            ca_file: None,
            extra_roots: extra_roots.into(),
        })
    }

    /// The file the extra roots came from.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// How many roots are trusted besides the webpki ones.
    pub fn extra_roots(&self) -> usize {
        self.extra_roots.len()
    }

    /// For `wss://` dials: `http/1.1` only (see the module doc, **ALPN**).
    pub fn websocket_config(&self) -> Arc<ClientConfig> {
        self.client_config(vec![b"http/1.1".to_vec()])
    }

    /// For HTTPS requests: `h2` and `http/1.1`.
    pub fn http_config(&self) -> Arc<ClientConfig> {
        self.client_config(vec![b"h2".to_vec(), b"http/1.1".to_vec()])
    }

    fn client_config(&self, alpn: Vec<Vec<u8>>) -> Arc<ClientConfig> {
        super::resolver::install_crypto_provider();
        let mut roots = actix_tls::connect::rustls_0_23::webpki_roots_cert_store();
        // Checked in `from_pem`: every extra root is accepted.
        let (_added, _ignored) = roots.add_parsable_certificates(self.extra_roots.iter().cloned());
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn;
        Arc::new(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_A_CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_file_without_a_usable_certificate_is_refused() {
        assert!(matches!(
            UpstreamTls::from_pem(b""),
            Err(UpstreamTlsError::NoCertificate)
        ));
        assert!(matches!(
            UpstreamTls::from_pem(
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            Err(UpstreamTlsError::NoCertificate)
        ));
        assert!(matches!(
            UpstreamTls::from_pem(NOT_A_CERT.as_bytes()),
            Err(UpstreamTlsError::BadRoot(_))
        ));
        assert!(matches!(
            UpstreamTls::from_pem(b"-----BEGIN CERTIFICATE-----\n!!!!\n"),
            Err(UpstreamTlsError::Pem(_))
        ));
    }

    #[test]
    fn a_missing_or_oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            UpstreamTls::load(&missing),
            Err(UpstreamTlsError::Read(_))
        ));
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_CA_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            UpstreamTls::load(&big),
            Err(UpstreamTlsError::TooLarge)
        ));
    }

    #[test]
    fn the_default_trusts_the_webpki_roots_only_and_websockets_offer_http1() {
        let tls = UpstreamTls::default();
        assert_eq!(tls.extra_roots(), 0);
        assert_eq!(tls.ca_file(), None);
        assert_eq!(
            tls.websocket_config().alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );
        assert_eq!(tls.http_config().alpn_protocols.len(), 2);
    }
}
