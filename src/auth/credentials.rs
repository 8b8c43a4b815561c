//! The credentials file (TOML):
//!
//! ```toml
//! [[principal]]
//! name = "shop-runtime"
//! role = "runtime"                 # operator | runtime | settings | observer
//! apps = ["wx1234567890abcdef"]    # ["*"] for every app (not for runtime)
//! token_sha256 = "<64 hex digits>" # hex SHA-256 of the token; or a list
//! cert_subject = "shop-runtime"    # client certificate URI/DNS SAN or CN (mTLS); optional
//! ```
//!
//! Digests of well-known or very short tokens are refused (see
//! `weak_digests`). Tokens are never stored: only their SHA-256 digest. A presented token is
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

/// The SHA-256 of a token.
pub(super) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
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
        let weak = weak_digests();
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
                if weak.contains(&digest) {
                    return Err(invalid(
                        "a token_sha256 value is the digest of a well-known or very short token \
                         (a placeholder, a dictionary word, 2 characters or fewer): make a real \
                         one with `consentctl token new`"
                            .into(),
                    ));
                }
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
        self.by_digest(&digest(token))
    }

    /// Like [`Credentials::by_token`], for a token already hashed.
    pub fn by_digest(&self, presented: &[u8; 32]) -> Option<Arc<Principal>> {
        let mut found = None;
        for (digest, principal) in &self.tokens {
            if bool::from(digest.ct_eq(presented)) {
                found = Some(principal);
            }
        }
        found.cloned()
    }

    pub fn by_cert_subject(&self, subject: &str) -> Option<Arc<Principal>> {
        self.subjects.get(subject).cloned()
    }
}

/// Tokens anyone would guess first: placeholders and words seen in examples
/// and tutorials, alone and with a digit appended.
const WEAK_WORDS: &[&str] = &[
    "test",
    "testing",
    "tester",
    "bar",
    "foo",
    "foobar",
    "baz",
    "qux",
    "password",
    "passwd",
    "pass",
    "secret",
    "token",
    "changeme",
    "change-me",
    "example",
    "admin",
    "root",
    "operator",
    "runtime",
    "settings",
    "observer",
    "ops",
    "letmein",
    "qwerty",
    "dummy",
    "default",
    "demo",
    "guest",
    "user",
    "consentd",
    "consent",
    "hello",
    "abc",
    "abcd",
    "abcdef",
    "xyz",
    "1234",
    "12345",
    "123456",
    "1234567",
    "12345678",
    "123456789",
    "1234567890",
    "0000",
    "00000000",
    "todo",
    "fixme",
    "placeholder",
    "sample",
    "local",
    "localhost",
    "dev",
    "debug",
];

/// Digests of the tokens [`WEAK_WORDS`] describes, and of every token of
/// two printable ASCII characters or fewer: a file holding one of these was
/// copied from an example or typed by hand, and would let anyone in.
fn weak_digests() -> std::collections::HashSet<[u8; 32]> {
    let mut candidates: Vec<String> = Vec::new();
    for word in WEAK_WORDS {
        candidates.push((*word).to_owned());
        candidates.push(word.to_uppercase());
        for digit in '0'..='9' {
            candidates.push(format!("{word}{digit}"));
        }
    }
    let printable = (b' '..=b'~').map(char::from);
    candidates.push(String::new());
    for a in printable.clone() {
        candidates.push(a.to_string());
        for b in printable.clone() {
            candidates.push(format!("{a}{b}"));
        }
    }
    candidates
        .iter()
        .map(|t| Sha256::digest(t.as_bytes()).into())
        .collect()
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
    fn the_example_file_loads_only_once_its_placeholders_are_replaced() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/contrib/credentials.example.toml"
        );
        let err = Credentials::load(Path::new(path)).unwrap_err().to_string();
        assert!(err.contains("not 64 hex digits"), "{err}");
        assert!(err.contains("shop-runtime"), "{err}");
        let text = std::fs::read_to_string(path).unwrap();
        assert!(!text.contains("install as is"), "{text}");
        let mut filled = text.clone();
        for (i, placeholder) in [
            "REPLACE-with-the-digest-of-the-current-token",
            "REPLACE-with-the-digest-of-the-next-token",
            "REPLACE-with-the-digest-from-consentctl-token-new",
        ]
        .into_iter()
        .enumerate()
        {
            assert!(filled.contains(placeholder), "{placeholder}");
            filled = filled.replace(
                placeholder,
                &hash_token(&format!("fresh-token-{i}-0123456789abcdef")),
            );
        }
        assert!(!filled.contains("REPLACE"), "every placeholder is known");
        let c = parse(&filled).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(
            c.by_token("fresh-token-0-0123456789abcdef").unwrap().name,
            "shop-runtime"
        );
        assert_eq!(
            c.by_token("fresh-token-2-0123456789abcdef").unwrap().name,
            "settings-page"
        );
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
    fn digests_of_well_known_or_short_tokens_are_refused() {
        let started = std::time::Instant::now();
        // The digests the old example file shipped, and other guesses.
        for token in [
            "test",
            "test2",
            "bar",
            "",
            "x",
            "Q!",
            "password1",
            "CHANGEME",
            "secret",
        ] {
            let text = format!(
                "[[principal]]\nname='a'\nrole='operator'\ntoken_sha256=['{}', '{}']",
                hash_token("a-real-token-0123456789abcdef"),
                hash_token(token)
            );
            let err = parse(&text).unwrap_err();
            assert!(
                err.contains("well-known or very short token"),
                "{token:?}: {err}"
            );
            assert!(err.contains("consentctl token new"), "{err}");
        }
        // Three characters and up, not in the list: accepted.
        for token in ["q7z", "a-real-token-0123456789abcdef"] {
            let text = format!(
                "[[principal]]\nname='a'\nrole='operator'\ntoken_sha256='{}'",
                hash_token(token)
            );
            assert!(parse(&text).is_ok(), "{token}");
        }
        // The check is cheap enough to run on every load and reload.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
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
        let h = hash_token("x-0123456789abcdef");
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
