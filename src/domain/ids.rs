//! Validated identifiers: parsed once at the edge, trusted everywhere after.

use std::fmt;

use super::DomainError;

/// Longest accepted id, in bytes.
pub const MAX_ID_LEN: usize = 128;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `raw` as this id; the error names the field `field`.
            pub fn parse_field(field: &str, raw: &str) -> Result<Self, DomainError> {
                validate_id(field, raw).map(|()| Self(raw.to_owned()))
            }

            /// Validates `raw`, naming the default field in errors.
            pub fn parse(raw: &str) -> Result<Self, DomainError> {
                Self::parse_field($field, raw)
            }

            /// [`Self::parse`] of a string the caller owns, kept as it is
            /// (no copy).
            pub fn from_string(raw: String) -> Result<Self, DomainError> {
                validate_id($field, &raw).map(|()| Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A mini program or mini game id.
    AppId,
    "app_id"
);
id_type!(
    /// An opaque per-app user id (openid-like).
    UserId,
    "user_id"
);
id_type!(
    /// A runtime session, named by the runtime: one-time grants last as
    /// long as it does.
    SessionId,
    "session_id"
);

fn validate_id(field: &str, raw: &str) -> Result<(), DomainError> {
    let invalid = |problem: String| DomainError::InvalidArgument {
        field: field.to_owned(),
        message: format!("{field} {} {problem}", super::quoted(raw)),
    };
    if raw.is_empty() {
        return Err(invalid("is empty".into()));
    }
    if raw.len() > MAX_ID_LEN {
        return Err(invalid(format!(
            "is {} bytes long; the limit is {MAX_ID_LEN}",
            raw.len()
        )));
    }
    // Printable ASCII (the usual id) needs no look at Unicode's tables.
    if raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    if let Some((at, _)) = raw
        .char_indices()
        .find(|(_, c)| c.is_control() || c.is_whitespace())
    {
        return Err(invalid(format!(
            "contains a non-printable or whitespace character at byte {at}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_printable_ids_up_to_the_limit() {
        for ok in [
            "a",
            "wx1234567890abcdef",
            "oAbC-_.~:/@!",
            "用户",
            &"x".repeat(128),
        ] {
            assert_eq!(AppId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_bad_ids_naming_field_and_value() {
        let cases: &[(&str, &str)] = &[
            ("", "is empty"),
            (&"x".repeat(129), "is 129 bytes long"),
            ("a b", "at byte 1"),
            ("a\tb", "at byte 1"),
            ("ab\0", "at byte 2"),
            ("\u{7f}", "at byte 0"),
            ("x\u{2028}", "at byte 1"),
        ];
        for (raw, needle) in cases {
            let err = UserId::parse(raw).unwrap_err().to_string();
            assert!(err.starts_with("user_id "), "{err}");
            assert!(err.contains(needle), "{raw:?}: {err}");
        }
    }
}
