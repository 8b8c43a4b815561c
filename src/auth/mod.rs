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

/// What a caller presented.
#[derive(Clone, Copy, Debug)]
pub enum Presented<'a> {
    /// The token of an `authorization: Bearer <token>` header.
    Token(&'a str),
    /// The common name of a verified client certificate.
    CertSubject(&'a str),
    Nothing,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing credentials: send `authorization: Bearer <token>` or a client certificate")]
    Missing,
    #[error("unknown bearer token")]
    UnknownToken,
    #[error("client certificate subject {0:?} is not in the credentials file")]
    UnknownSubject(String),
    #[error("malformed authorization header: expected `Bearer <token>`")]
    Malformed,
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

    /// Whether `principal` still exists as it was (same name, role and
    /// apps) in the current credentials.
    pub fn still_valid(&self, principal: &Principal) -> bool {
        match &*self.current.read().unwrap_or_else(|e| e.into_inner()) {
            None => true,
            Some(credentials) => credentials.contains(principal),
        }
    }

    pub fn authenticate(&self, presented: Presented<'_>) -> Result<Arc<Principal>, AuthError> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(credentials) = current else {
            return Ok(self.local.clone());
        };
        match presented {
            Presented::Token(token) => credentials.by_token(token).ok_or(AuthError::UnknownToken),
            Presented::CertSubject(subject) => credentials
                .by_cert_subject(subject)
                .ok_or_else(|| AuthError::UnknownSubject(subject.to_owned())),
            Presented::Nothing => Err(AuthError::Missing),
        }
    }
}
