//! Authentication: who is calling. The credentials file maps bearer tokens
//! (stored as SHA-256 digests) and client-certificate subjects to
//! [`Principal`]s; [`Authenticator`] holds the current file and swaps it on
//! reload. What a principal may do is the domain's business
//! ([`crate::domain::access`]).

mod credentials;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
};

pub use credentials::{hash_token, Credentials, CredentialsError};

use crate::domain::Principal;

/// The identities a verified client certificate names, in the order they
/// are matched against `cert_subject`: URI SANs, then DNS SANs; the subject
/// common name(s) only when no SAN names a principal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// URI SANs first, then DNS SANs.
    pub sans: Vec<String>,
    /// Every CN of the subject (usually one; more than one is ambiguous).
    pub common_names: Vec<String>,
}

impl std::fmt::Display for CertIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SANs {:?}, CN {:?}", self.sans, self.common_names)
    }
}

/// What a caller presented on one call, kept (owned, the token only as its
/// digest) by a stream so it can be authenticated again after a reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Presentation {
    /// SHA-256 of the bearer token.
    token: Option<[u8; 32]>,
    /// The verified client certificate.
    cert: Option<Arc<CertIdentity>>,
}

impl Presentation {
    pub fn new(token: Option<&str>, cert: Option<Arc<CertIdentity>>) -> Self {
        Self {
            token: token.map(credentials::digest),
            cert,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing credentials: send `authorization: Bearer <token>` or a client certificate")]
    Missing,
    #[error("unknown bearer token")]
    UnknownToken,
    #[error("client certificate ({0}) names no principal of the credentials file")]
    UnknownSubject(String),
    #[error("client certificate ({identity}) is ambiguous: {reason}; refused")]
    Ambiguous { identity: String, reason: String },
    #[error(
        "the bearer token's principal {token:?} is not within the client certificate's principal \
         {cert:?} (a token sent with a certificate must name the same principal or a narrower one: \
         a role the certificate's covers, and a subset of its apps)"
    )]
    BeyondCertificate { token: String, cert: String },
    #[error("malformed authorization header: expected `Bearer <token>`")]
    Malformed,
}

/// Whether `inner` asks for nothing `outer` could not do itself: the same
/// role (or `outer` is an operator) and a subset of `outer`'s apps.
pub fn within(inner: &Principal, outer: &Principal) -> bool {
    use crate::domain::{AppBinding, Role};
    let role = outer.role == Role::Operator || inner.role == outer.role;
    let apps = match (&inner.apps, &outer.apps) {
        (_, AppBinding::All) => true,
        (AppBinding::All, AppBinding::Only(_)) => false,
        (AppBinding::Only(i), AppBinding::Only(o)) => i.is_subset(o),
    };
    role && apps
}

/// The current credentials, or none (authentication off).
pub struct Authenticator {
    path: Option<PathBuf>,
    current: RwLock<Option<Arc<Credentials>>>,
    local: Arc<Principal>,
    /// Bumped by every successful reload.
    generation: AtomicU64,
}

impl Authenticator {
    /// Authentication off: every caller is the local operator. Only safe on
    /// loopback and unix sockets; the server enforces that.
    pub fn off() -> Self {
        Self {
            path: None,
            current: RwLock::new(None),
            local: Arc::new(Principal::unauthenticated_local()),
            generation: AtomicU64::new(0),
        }
    }

    /// Loads the credentials file.
    pub fn from_file(path: &Path) -> Result<Self, CredentialsError> {
        let credentials = Credentials::load(path)?;
        Ok(Self {
            path: Some(path.to_owned()),
            current: RwLock::new(Some(Arc::new(credentials))),
            local: Arc::new(Principal::unauthenticated_local()),
            generation: AtomicU64::new(0),
        })
    }

    pub fn is_on(&self) -> bool {
        self.path.is_some()
    }

    /// Re-reads the file; on error the old credentials stay in force.
    /// Returns how many principals are now loaded.
    pub fn reload(&self) -> Result<usize, CredentialsError> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        let fresh = Credentials::load(path)?;
        let n = fresh.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(fresh));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(n)
    }

    /// Changes with every reload: long-lived calls compare it to notice.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Authenticates what a caller presented:
    /// - a token alone: the principal of its digest;
    /// - a certificate alone: the principal its identities name (URI and
    ///   DNS SANs first, then the single CN); SANs naming two principals,
    ///   or several CNs, are ambiguous and refused;
    /// - both: the token's principal, which must be within the
    ///   certificate's (a certificate that names no principal only proves
    ///   it was issued by the client CA: then the token decides alone).
    pub fn authenticate(&self, presented: &Presentation) -> Result<Arc<Principal>, AuthError> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(credentials) = current else {
            return Ok(self.local.clone());
        };
        let by_cert = presented
            .cert
            .as_deref()
            .map(|c| by_certificate(&credentials, c));
        let Some(digest) = &presented.token else {
            return by_cert.unwrap_or(Err(AuthError::Missing));
        };
        let token = credentials
            .by_digest(digest)
            .ok_or(AuthError::UnknownToken)?;
        match by_cert {
            None | Some(Err(AuthError::UnknownSubject(_))) => Ok(token),
            Some(Err(e)) => Err(e),
            Some(Ok(cert)) if within(&token, &cert) => Ok(token),
            Some(Ok(cert)) => Err(AuthError::BeyondCertificate {
                token: token.name.clone(),
                cert: cert.name.clone(),
            }),
        }
    }
}

/// The principal a certificate names; see [`Authenticator::authenticate`].
fn by_certificate(
    credentials: &Credentials,
    identity: &CertIdentity,
) -> Result<Arc<Principal>, AuthError> {
    let ambiguous = |reason: String| AuthError::Ambiguous {
        identity: identity.to_string(),
        reason,
    };
    let mut found: Vec<Arc<Principal>> = Vec::new();
    for san in &identity.sans {
        if let Some(p) = credentials.by_cert_subject(san) {
            if !found.iter().any(|f| f.name == p.name) {
                found.push(p);
            }
        }
    }
    match found.len() {
        1 => return Ok(found.remove(0)),
        0 => {}
        _ => {
            let names: Vec<&str> = found.iter().map(|p| p.name.as_str()).collect();
            return Err(ambiguous(format!(
                "its SANs name several principals {names:?}"
            )));
        }
    }
    match identity.common_names.as_slice() {
        [] => Err(AuthError::UnknownSubject(identity.to_string())),
        [cn] => credentials
            .by_cert_subject(cn)
            .ok_or_else(|| AuthError::UnknownSubject(identity.to_string())),
        _ => Err(ambiguous("its subject has several common names".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(text: &str) -> (tempfile::TempDir, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let auth = Authenticator::from_file(&path).unwrap();
        (dir, auth)
    }

    fn cert(sans: &[&str], cns: &[&str]) -> Option<Arc<CertIdentity>> {
        Some(Arc::new(CertIdentity {
            sans: sans.iter().map(|s| (*s).to_owned()).collect(),
            common_names: cns.iter().map(|s| (*s).to_owned()).collect(),
        }))
    }

    #[test]
    fn certificates_sans_first_ambiguity_refused_tokens_within() {
        let text = format!(
            "[[principal]]\nname='ops'\nrole='operator'\ncert_subject='ops-cn'\n\
             [[principal]]\nname='shop'\nrole='runtime'\napps=['wxa','wxb']\ncert_subject='spiffe://shop'\ntoken_sha256='{}'\n\
             [[principal]]\nname='shop-a'\nrole='runtime'\napps=['wxa']\ntoken_sha256='{}'\n\
             [[principal]]\nname='dash'\nrole='observer'\napps=['*']\ncert_subject='dash.internal'\ntoken_sha256='{}'\n",
            hash_token("shop-token-0123456789"),
            hash_token("shop-a-token-0123456789"),
            hash_token("dash-token-0123456789"),
        );
        let (_dir, auth) = authenticator(&text);
        let name = |p: &Presentation| auth.authenticate(p).map(|p| p.name.clone());
        // SAN before CN; CN when no SAN names anyone.
        assert_eq!(
            name(&Presentation::new(
                None,
                cert(&["spiffe://shop"], &["ops-cn"])
            )),
            Ok("shop".into())
        );
        assert_eq!(
            name(&Presentation::new(
                None,
                cert(&["spiffe://nobody"], &["ops-cn"])
            )),
            Ok("ops".into())
        );
        // Ambiguous: two principals by SAN, or two CNs.
        let two = name(&Presentation::new(
            None,
            cert(&["spiffe://shop", "dash.internal"], &[]),
        ));
        assert!(matches!(two, Err(AuthError::Ambiguous { .. })), "{two:?}");
        let cns = name(&Presentation::new(None, cert(&[], &["ops-cn", "x"])));
        assert!(matches!(cns, Err(AuthError::Ambiguous { .. })), "{cns:?}");
        assert!(matches!(
            name(&Presentation::new(None, cert(&["a"], &["b"]))),
            Err(AuthError::UnknownSubject(_))
        ));
        // Tokens with certificates: within (narrower apps, or under an
        // operator) is used, wider or another role is refused.
        let shop_cert = cert(&["spiffe://shop"], &[]);
        assert_eq!(
            name(&Presentation::new(
                Some("shop-a-token-0123456789"),
                shop_cert.clone()
            )),
            Ok("shop-a".into())
        );
        assert_eq!(
            name(&Presentation::new(
                Some("dash-token-0123456789"),
                cert(&[], &["ops-cn"])
            )),
            Ok("dash".into())
        );
        assert!(matches!(
            name(&Presentation::new(Some("dash-token-0123456789"), shop_cert)),
            Err(AuthError::BeyondCertificate { .. })
        ));
        let a_cert_narrower_than_the_token =
            Presentation::new(Some("shop-token-0123456789"), cert(&["x"], &[]));
        assert_eq!(
            name(&a_cert_narrower_than_the_token),
            Ok("shop".into()),
            "an unknown certificate leaves the token alone"
        );
        assert_eq!(
            name(&Presentation::new(None, None)),
            Err(AuthError::Missing)
        );
        assert_eq!(
            name(&Presentation::new(Some("nope-0123456789"), None)),
            Err(AuthError::UnknownToken)
        );
    }
}
