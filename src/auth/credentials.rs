//! The credentials file (TOML):
//!
//! ```toml
//! [[principal]]
//! name = "shop-runtime"
//! role = "runtime"                 # operator | runtime | settings | observer
//! apps = ["wx1234567890abcdef"]    # ["*"] for every app (not for runtime)
//! token_sha256 = "9f86d081..."     # hex SHA-256 of the token; or a list
//! cert_subject = "shop-runtime"    # client certificate CN (mTLS); optional
//! ```
//!
//! Tokens are never stored: only their SHA-256 digest. A presented token is
//! hashed and compared with every digest in constant time.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    sync::Arc,
};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{AppBinding, AppId, Principal, Role};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file's text is never quoted: a line may hold a pasted token.
    #[error("credentials file {path}, line {line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
    #[error("credentials file {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    principal: Vec<FilePrincipal>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePrincipal {
    name: String,
    role: String,
    apps: Option<Vec<String>>,
    token_sha256: Option<OneOrMany>,
    cert_subject: Option<String>,
}

/// The loaded file: principals by token digest and by certificate subject.
#[derive(Debug)]
pub struct Credentials {
    tokens: Vec<([u8; 32], Arc<Principal>)>,
    subjects: HashMap<String, Arc<Principal>>,
    principals: usize,
}

/// The hex SHA-256 of a token: what the credentials file stores.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn digest_from_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseError::Toml(source) => CredentialsError::Parse {
                path: shown,
                line: source.span().map_or(0, |span| {
                    text[..span.start.min(text.len())].lines().count().max(1)
                }),
                message: source.message().to_owned(),
            },
            ParseError::Invalid(message) => CredentialsError::Invalid {
                path: shown,
                message,
            },
        })
    }

    fn parse(text: &str) -> Result<Self, ParseError> {
        let file: File = toml::from_str(text).map_err(ParseError::Toml)?;
        let mut tokens: Vec<([u8; 32], Arc<Principal>)> = Vec::new();
        let mut subjects = HashMap::new();
        let mut names = BTreeSet::new();
        for (i, p) in file.principal.iter().enumerate() {
            let at = format!("principal[{i}] ({:?})", p.name);
            let invalid = |m: String| ParseError::Invalid(format!("{at}: {m}"));
            if p.name.trim().is_empty() {
                return Err(ParseError::Invalid(format!("principal[{i}]: empty name")));
            }
            if !names.insert(p.name.clone()) {
                return Err(invalid("the name is used twice".into()));
            }
            let role: Role = p.role.parse().map_err(invalid)?;
            let apps = binding(role, p.apps.as_deref()).map_err(invalid)?;
            let principal = Arc::new(Principal {
                name: p.name.clone(),
                role,
                apps,
            });
            let digests = match &p.token_sha256 {
                None => Vec::new(),
                Some(OneOrMany::One(h)) => vec![h.clone()],
                Some(OneOrMany::Many(hs)) => hs.clone(),
            };
            if digests.is_empty() && p.cert_subject.is_none() {
                return Err(invalid("set token_sha256 or cert_subject".into()));
            }
            for hex in digests {
                // The value is not quoted: it may be a token pasted by mistake.
                let digest = digest_from_hex(&hex.to_ascii_lowercase()).ok_or_else(|| {
                    invalid(format!(
                        "a token_sha256 value is not 64 hex digits ({} characters): store the digest (`consentctl token hash`), never the token",
                        hex.chars().count()
                    ))
                })?;
                if tokens.iter().any(|(d, _)| *d == digest) {
                    return Err(invalid("a token digest is used twice".into()));
                }
                tokens.push((digest, principal.clone()));
            }
            if let Some(subject) = &p.cert_subject {
                if subject.is_empty() {
                    return Err(invalid("empty cert_subject".into()));
                }
                if subjects
                    .insert(subject.clone(), principal.clone())
                    .is_some()
                {
                    return Err(invalid(format!("cert_subject {subject:?} is used twice")));
                }
            }
        }
        Ok(Credentials {
            tokens,
            subjects,
            principals: names.len(),
        })
    }

    /// How many principals the file defines.
    pub fn len(&self) -> usize {
        self.principals
    }

    pub fn is_empty(&self) -> bool {
        self.principals == 0
    }

    /// Hashes the token and compares it with every digest in constant time
    /// (no early exit), so timing tells nothing about which digest matched.
    pub fn by_token(&self, token: &str) -> Option<Arc<Principal>> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (digest, principal) in &self.tokens {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(principal);
            }
        }
        found.cloned()
    }

    /// Whether the file defines exactly this principal (name, role, apps).
    pub fn contains(&self, principal: &Principal) -> bool {
        self.tokens
            .iter()
            .map(|(_, p)| p)
            .chain(self.subjects.values())
            .any(|p| **p == *principal)
    }

    pub fn by_cert_subject(&self, subject: &str) -> Option<Arc<Principal>> {
        self.subjects.get(subject).cloned()
    }
}

enum ParseError {
    Toml(toml::de::Error),
    Invalid(String),
}

fn binding(role: Role, apps: Option<&[String]>) -> Result<AppBinding, String> {
    let all = |apps: &[String]| apps.len() == 1 && apps[0] == "*";
    match (role, apps) {
        (Role::Operator, None) => Ok(AppBinding::All),
        (Role::Operator, Some(a)) if all(a) => Ok(AppBinding::All),
        (Role::Operator, Some(_)) => {
            Err("an operator covers every app: leave out `apps` (or set [\"*\"])".into())
        }
        (Role::Runtime, None) => Err("a runtime must be bound to its app ids: set `apps`".into()),
        (Role::Runtime, Some(a)) if a.iter().any(|x| x == "*") => {
            Err("a runtime must be bound to its app ids, not \"*\"".into())
        }
        (_, None) => Err("set `apps`: a list of app ids, or [\"*\"] for every app".into()),
        (_, Some(a)) if all(a) => Ok(AppBinding::All),
        (_, Some([])) => Err("`apps` is empty".into()),
        (_, Some(a)) => a
            .iter()
            .map(|id| {
                if id == "*" {
                    Err("\"*\" must be the only entry of `apps`".to_owned())
                } else {
                    AppId::parse(id).map_err(|e| format!("apps: {e}"))
                }
            })
            .collect::<Result<BTreeSet<_>, _>>()
            .map(AppBinding::Only),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Credentials, String> {
        Credentials::parse(text).map_err(|e| match e {
            ParseError::Toml(e) => e.to_string(),
            ParseError::Invalid(m) => m,
        })
    }

    #[test]
    fn tokens_are_found_by_their_digest_only() {
        let text = format!(
            r#"
            [[principal]]
            name = "ops"
            role = "operator"
            token_sha256 = "{}"

            [[principal]]
            name = "shop"
            role = "runtime"
            apps = ["wxshop"]
            token_sha256 = ["{}", "{}"]
            cert_subject = "shop.internal"
            "#,
            hash_token("ops-secret"),
            hash_token("shop-old").to_uppercase(),
            hash_token("shop-new"),
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.by_token("ops-secret").unwrap().role, Role::Operator);
        assert_eq!(c.by_token("shop-old").unwrap().name, "shop");
        assert_eq!(c.by_token("shop-new").unwrap().name, "shop");
        assert!(c.by_token("shop").is_none());
        assert!(c.by_token(&hash_token("ops-secret")).is_none());
        assert_eq!(c.by_cert_subject("shop.internal").unwrap().name, "shop");
        assert!(c.by_cert_subject("ops").is_none());
    }

    #[test]
    fn the_example_file_loads() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/contrib/credentials.example.toml"
        );
        let c = Credentials::load(Path::new(path)).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c.by_token("test").unwrap().name, "shop-runtime");
        assert_eq!(
            c.by_cert_subject("consentd-ops").unwrap().role,
            Role::Operator
        );
        assert_eq!(
            c.by_cert_subject("consentd-dashboards").unwrap().apps,
            AppBinding::All
        );
    }

    #[test]
    fn errors_never_quote_what_could_be_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        for text in [
            "[[principal]]\nname='a'\nrole='operator'\ntoken_sha256='s3cr3t-token-value'",
            "[[principal]]\nname='a'\nrole='operator'\ntoken_sha256 = s3cr3t-token-value",
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Credentials::load(&path).unwrap_err().to_string();
            assert!(!err.contains("s3cr3t"), "{err}");
            assert!(err.contains("c.toml"), "{err}");
        }
    }

    #[test]
    fn hash_token_is_plain_hex_sha256() {
        // printf %s test | sha256sum
        assert_eq!(
            hash_token("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn bad_files_name_the_problem() {
        let h = hash_token("x");
        for (text, needle) in [
            (format!("[[principal]]\nname='a'\nrole='root'\ntoken_sha256='{h}'"), "unknown role"),
            (format!("[[principal]]\nname='a'\nrole='runtime'\ntoken_sha256='{h}'"), "must be bound"),
            (format!("[[principal]]\nname='a'\nrole='runtime'\napps=['*']\ntoken_sha256='{h}'"), "not \"*\""),
            (format!("[[principal]]\nname='a'\nrole='observer'\ntoken_sha256='{h}'"), "set `apps`"),
            (format!("[[principal]]\nname='a'\nrole='operator'\napps=['wxa']\ntoken_sha256='{h}'"), "covers every app"),
            ("[[principal]]\nname='a'\nrole='operator'\ntoken_sha256='secret'".into(), "not 64 hex digits"),
            ("[[principal]]\nname='a'\nrole='operator'".into(), "set token_sha256 or cert_subject"),
            (format!("[[principal]]\nname='a'\nrole='operator'\ntoken_sha256='{h}'\n[[principal]]\nname='a'\nrole='operator'\ncert_subject='c'"), "used twice"),
            (format!("[[principal]]\nname='a'\nrole='operator'\ntoken_sha256='{h}'\n[[principal]]\nname='b'\nrole='operator'\ntoken_sha256='{h}'"), "digest is used twice"),
            (format!("[[principal]]\nname='a'\nrole='settings'\napps=['bad id!']\ntoken_sha256='{h}'"), "apps:"),
            (format!("[[principal]]\nname='a'\nrole='operator'\ntoken='{h}'"), "unknown field"),
        ] {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(needle), "{text}\n=> {err}");
        }
    }
}
