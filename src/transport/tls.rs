//! TLS (rustls, ring) for TCP listeners, with optional client certificates
//! (mTLS). The configuration is rebuilt from its files on reload; each new
//! connection uses the latest one, established connections keep theirs.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use tokio::net::TcpStream;
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
        RootCertStore, ServerConfig,
    },
    server::TlsStream,
    TlsAcceptor,
};

use super::TransportError;
use crate::auth::CertIdentity;

/// The PEM files TLS is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle client certificates must chain to; when set, every client
    /// must present one (mTLS).
    pub client_ca: Option<PathBuf>,
}

pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

fn tls_error(path: &Path, what: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(format!("{what} {}: {e}", path.display()))
}

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, what, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, what, e))?;
    if certs.is_empty() {
        return Err(tls_error(path, what, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn build(files: &TlsFiles) -> Result<ServerConfig, TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = load_certs(&files.cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| tls_error(&files.key, "private key", e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca, "client CA")? {
                roots.add(cert).map_err(|e| tls_error(ca, "client CA", e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls_error(ca, "client CA", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_error(&files.cert, "certificate and key", e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl Tls {
    pub fn load(files: TlsFiles) -> Result<Tls, TransportError> {
        let config = build(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Re-reads the files; on error the old configuration stays in force.
    pub fn reload(&self) -> Result<(), TransportError> {
        let config = build(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    pub fn requires_client_certs(&self) -> bool {
        self.files.client_ca.is_some()
    }

    pub(super) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The identities of the client's (already verified) leaf certificate:
/// URI SANs, DNS SANs and the subject's common names. A name that is not
/// valid text is kept as a marker that matches nothing, so that a subject
/// with one readable and one unreadable CN stays ambiguous.
pub(super) fn peer_identity(stream: &TlsStream<TcpStream>) -> Option<Arc<CertIdentity>> {
    let leaf = stream.get_ref().1.peer_certificates()?.first()?;
    Some(Arc::new(identity_of(leaf.as_ref())?))
}

pub(super) fn identity_of(der: &[u8]) -> Option<CertIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    uris.extend(dns);
    let common_names = cert
        .subject()
        .iter_common_name()
        .map(|cn| {
            cn.as_str()
                .map_or_else(|_| "\u{fffd}unreadable CN".to_owned(), str::to_owned)
        })
        .collect();
    Some(CertIdentity {
        sans: uris,
        common_names,
    })
}
