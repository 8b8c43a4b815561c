//! TLS towards etcd: the PEM files of `--etcd-ca`, `--etcd-cert` and
//! `--etcd-key`, read and checked once at start (rustls, ring: the same
//! stack as the daemon's own TLS), so that a bad file stops the daemon with
//! a message naming it instead of failing every connection later.

use std::{path::Path, sync::Arc};

use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ClientConfig, RootCertStore,
};

/// What the etcd client is given: PEM bytes, already checked.
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA bundle etcd's server certificates must chain to.
    pub ca_pem: Vec<u8>,
    /// The client certificate chain and its private key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

fn certs(pem: &[u8], path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
            path.display()
        ));
    }
    Ok(certs)
}

impl EtcdTls {
    /// Reads and checks the files: the CA bundle holds certificates rustls
    /// accepts as roots, the client certificate parses, the key parses and
    /// belongs to the certificate. Errors name the file and what is wrong.
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, String> {
        let ca_pem = read(ca, "etcd CA")?;
        let mut roots = RootCertStore::empty();
        for cert in certs(&ca_pem, ca, "etcd CA")? {
            roots.add(cert).map_err(|e| {
                format!("etcd CA {}: not a usable CA certificate: {e}", ca.display())
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS towards etcd: {e}"))?
            .with_root_certificates(roots);
        let identity = match identity {
            None => None,
            Some((cert, key)) => {
                let cert_pem = read(cert, "etcd client certificate")?;
                let key_pem = read(key, "etcd client key")?;
                let chain = certs(&cert_pem, cert, "etcd client certificate")?;
                let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    format!("etcd client key {}: no PEM private key: {e}", key.display())
                })?;
                builder.with_client_auth_cert(chain, der).map_err(|e| {
                    format!(
                        "etcd client certificate {} and key {}: {e}",
                        cert.display(),
                        key.display()
                    )
                })?;
                Some((cert_pem, key_pem))
            }
        };
        Ok(Self { ca_pem, identity })
    }
}

#[cfg(test)]
mod tests {
    use super::EtcdTls;

    fn pem_pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let (cert, key) = pem_pair("a");
        let (_, other_key) = pem_pair("b");
        for (name, text) in [
            ("ca.pem", cert.as_str()),
            ("cert.pem", cert.as_str()),
            ("key.pem", key.as_str()),
            ("other.pem", other_key.as_str()),
            ("junk.pem", "not a certificate\n"),
        ] {
            std::fs::write(path(name), text).unwrap();
        }
        EtcdTls::load(&path("ca.pem"), Some((&path("cert.pem"), &path("key.pem"))))
            .expect("good files load");
        let cases = [
            (
                EtcdTls::load(&path("missing.pem"), None),
                "etcd CA",
                "missing.pem",
            ),
            (
                EtcdTls::load(&path("junk.pem"), None),
                "etcd CA",
                "no PEM certificate",
            ),
            (
                EtcdTls::load(&path("ca.pem"), Some((&path("key.pem"), &path("key.pem")))),
                "etcd client certificate",
                "no PEM certificate",
            ),
            (
                EtcdTls::load(
                    &path("ca.pem"),
                    Some((&path("cert.pem"), &path("junk.pem"))),
                ),
                "etcd client key",
                "junk.pem",
            ),
            (
                EtcdTls::load(
                    &path("ca.pem"),
                    Some((&path("cert.pem"), &path("other.pem"))),
                ),
                "other.pem",
                "",
            ),
        ];
        for (result, names, says) in cases {
            let message = result.expect_err("refused");
            assert!(
                message.contains(names) && message.contains(says),
                "{message:?} names {names:?} and says {says:?}"
            );
        }
    }
}
