//! The privacy-agreement gate (the platform's 2023+ behaviour): an app may
//! declare a privacy guide naming the information types it collects; the
//! user agrees to (a version of) it once. Apps without a guide are not
//! affected at all.

use std::{collections::BTreeSet, fmt, str::FromStr};

use super::{
    gates::{err_msg, Outcome, Reason, Verdict},
    rules::Target,
    App, DecisionState, DomainError, Lifetime, Scope,
};

/// errMsg suffixes and errnos of the privacy gate.
pub mod msg {
    pub const NOT_DECLARED: &str = "fail api scope is not declared in the privacy agreement";
    pub const NOT_AUTHORIZED: &str = "fail privacy permission is not authorized";
    pub const ERRNO_NOT_DECLARED: u32 = 112;
    pub const ERRNO_NOT_AUTHORIZED: u32 = 104;
}

/// Longest accepted guide name, in characters.
pub const MAX_GUIDE_NAME_CHARS: usize = 128;

/// The information types a privacy guide can declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InfoType {
    Location,
    Album,
    Camera,
    Microphone,
    Contacts,
    Calendar,
    Bluetooth,
    Werun,
    Address,
    Invoice,
}

impl InfoType {
    pub const ALL: [InfoType; 10] = [
        InfoType::Location,
        InfoType::Album,
        InfoType::Camera,
        InfoType::Microphone,
        InfoType::Contacts,
        InfoType::Calendar,
        InfoType::Bluetooth,
        InfoType::Werun,
        InfoType::Address,
        InfoType::Invoice,
    ];

    pub fn name(self) -> &'static str {
        match self {
            InfoType::Location => "location",
            InfoType::Album => "album",
            InfoType::Camera => "camera",
            InfoType::Microphone => "microphone",
            InfoType::Contacts => "contacts",
            InfoType::Calendar => "calendar",
            InfoType::Bluetooth => "bluetooth",
            InfoType::Werun => "werun",
            InfoType::Address => "address",
            InfoType::Invoice => "invoice",
        }
    }
}

impl fmt::Display for InfoType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for InfoType {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        InfoType::ALL.into_iter().find(|t| t.name() == s).ok_or(())
    }
}

/// What an app's privacy guide declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrivacyGuide {
    /// The contract name the runtime shows, e.g. "《Shop Privacy Guide》".
    pub name: String,
    pub info_types: BTreeSet<InfoType>,
}

impl PrivacyGuide {
    pub fn parse(name: &str, info_types: &[String]) -> Result<Self, DomainError> {
        let invalid = |field: &str, message: String| DomainError::InvalidArgument {
            field: field.to_owned(),
            message,
        };
        let chars = name.chars().count();
        if name.trim().is_empty() || chars > MAX_GUIDE_NAME_CHARS {
            return Err(invalid(
                "app.privacy.name",
                format!(
                    "app.privacy.name must be 1 to {MAX_GUIDE_NAME_CHARS} characters, not {chars}"
                ),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(invalid(
                "app.privacy.name",
                "app.privacy.name contains a control character".into(),
            ));
        }
        let info_types = info_types
            .iter()
            .map(|t| {
                t.parse().map_err(|()| {
                    invalid(
                        "app.privacy.info_types",
                        format!(
                            "app.privacy.info_types contains unknown type {}; valid types: {}",
                            super::quoted(t),
                            InfoType::ALL.map(InfoType::name).join(", ")
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: name.to_owned(),
            info_types,
        })
    }
}

/// The version of a guide after a registration change: one more when a
/// guide appears or gains types (users must agree again), the same
/// otherwise. It never goes down, not even when the guide is dropped and
/// declared again later: an old agreement must not count for a new guide.
pub fn next_version(old: Option<&PrivacyGuide>, version: u64, new: Option<&PrivacyGuide>) -> u64 {
    match (old, new) {
        (_, None) => version,
        (Some(old), Some(new)) if new.info_types.is_subset(&old.info_types) => version.max(1),
        _ => version + 1,
    }
}

/// One user's answer to an app's privacy guide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrivacyState {
    pub agreed: bool,
    /// The guide version the user answered.
    pub version: u64,
    /// Unix milliseconds of the answer.
    pub at_ms: u64,
}

/// Whether the runtime must show the privacy agreement before using the
/// app's declared information (wx.getPrivacySetting's needAuthorization).
pub fn need_authorization(app: &App, state: Option<&PrivacyState>) -> bool {
    app.declarations.privacy.is_some()
        && !state.is_some_and(|s| s.agreed && s.version >= app.privacy_version)
}

/// The privacy gate, before the scope gates. `None` lets the request
/// through (no guide, a scope no information type covers, or agreed to
/// the current version); otherwise the verdict. After a disagreement,
/// calls fail without a popup for `gap_ms`, then the agreement is asked
/// for again.
pub fn gate(
    app: &App,
    scope: Scope,
    target: Target<'_>,
    stored: DecisionState,
    state: Option<&PrivacyState>,
    now_ms: u64,
    gap_ms: u64,
) -> Option<Verdict> {
    let guide = app.declarations.privacy.as_ref()?;
    let info = scope.info().privacy?;
    let verdict = |outcome, reason, suffix: &str, err_no| Verdict {
        scope,
        outcome,
        state: stored,
        reason,
        rule: None,
        err_msg: if suffix.is_empty() {
            String::new()
        } else {
            err_msg(target, suffix)
        },
        prompt: None,
        lifetime: Lifetime::Permanent,
        err_no,
        embargo_until_ms: None,
    };
    if !guide.info_types.contains(&info) {
        return Some(verdict(
            Outcome::NotDeclared,
            Reason::PrivacyNotDeclared,
            msg::NOT_DECLARED,
            msg::ERRNO_NOT_DECLARED,
        ));
    }
    match state {
        Some(s) if s.agreed && s.version >= app.privacy_version => None,
        Some(s) if !s.agreed && now_ms < s.at_ms.saturating_add(gap_ms) => Some(verdict(
            Outcome::PrivacyDenied,
            Reason::PrivacyDisagreed,
            msg::NOT_AUTHORIZED,
            msg::ERRNO_NOT_AUTHORIZED,
        )),
        _ => Some(verdict(
            Outcome::PrivacyRequired,
            Reason::PrivacyAgreementNeeded,
            "",
            0,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AppId, AppKind, Declarations};

    fn app(types: &[InfoType], version: u64) -> App {
        App {
            id: AppId::parse("wxp").unwrap(),
            kind: AppKind::MiniProgram,
            declarations: Declarations {
                privacy: Some(PrivacyGuide {
                    name: "Guide".into(),
                    info_types: types.iter().copied().collect(),
                }),
                ..Declarations::default()
            },
            revision: 1,
            updated_at_ms: 0,
            privacy_version: version,
        }
    }

    fn run(
        app: &App,
        scope: Scope,
        state: Option<PrivacyState>,
        now: u64,
    ) -> Option<(Outcome, String, u32)> {
        gate(
            app,
            scope,
            Target::Authorize,
            DecisionState::NotDetermined,
            state.as_ref(),
            now,
            10_000,
        )
        .map(|v| (v.outcome, v.err_msg, v.err_no))
    }

    #[test]
    fn the_gate_in_order() {
        let a = app(&[InfoType::Location], 2);
        assert_eq!(
            run(&a, Scope::Camera, None, 0),
            Some((
                Outcome::NotDeclared,
                format!("authorize:{}", msg::NOT_DECLARED),
                112
            ))
        );
        assert_eq!(
            run(&a, Scope::UserLocation, None, 0),
            Some((Outcome::PrivacyRequired, String::new(), 0))
        );
        let agreed = |version| PrivacyState {
            agreed: true,
            version,
            at_ms: 0,
        };
        assert_eq!(run(&a, Scope::UserLocation, Some(agreed(2)), 0), None);
        // The guide gained types since: agree again.
        assert_eq!(
            run(&a, Scope::UserLocation, Some(agreed(1)), 0).map(|v| v.0),
            Some(Outcome::PrivacyRequired)
        );
        let disagreed = PrivacyState {
            agreed: false,
            version: 2,
            at_ms: 1_000,
        };
        assert_eq!(
            run(&a, Scope::UserLocation, Some(disagreed), 10_999),
            Some((
                Outcome::PrivacyDenied,
                format!("authorize:{}", msg::NOT_AUTHORIZED),
                104
            ))
        );
        assert_eq!(
            run(&a, Scope::UserLocation, Some(disagreed), 11_000).map(|v| v.0),
            Some(Outcome::PrivacyRequired)
        );
        // Scopes no information type covers pass.
        assert_eq!(run(&a, Scope::UserInfo, None, 0), None);
        // Apps without a guide pass.
        let plain = App {
            declarations: Declarations::default(),
            privacy_version: 0,
            ..a
        };
        assert_eq!(run(&plain, Scope::Camera, None, 0), None);
        assert!(!need_authorization(&plain, None));
    }

    #[test]
    fn versions_grow_when_the_guide_gains_types() {
        let guide = |types: &[InfoType]| PrivacyGuide {
            name: "G".into(),
            info_types: types.iter().copied().collect(),
        };
        let (loc, both) = (
            guide(&[InfoType::Location]),
            guide(&[InfoType::Location, InfoType::Camera]),
        );
        assert_eq!(next_version(None, 0, Some(&loc)), 1);
        assert_eq!(next_version(Some(&loc), 1, Some(&both)), 2);
        assert_eq!(next_version(Some(&both), 2, Some(&loc)), 2);
        // Dropped and declared again: never back to a version users agreed to.
        assert_eq!(next_version(Some(&both), 2, None), 2);
        assert_eq!(next_version(None, 2, Some(&loc)), 3);
    }

    #[test]
    fn guides_are_validated() {
        assert!(PrivacyGuide::parse("G", &["location".into(), "camera".into()]).is_ok());
        for (name, types, needle) in [
            ("", vec![], "1 to 128"),
            ("a\u{7}", vec![], "control"),
            ("G", vec!["telepathy".to_string()], "unknown type"),
        ] {
            let err = PrivacyGuide::parse(name, &types).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
