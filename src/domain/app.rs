//! Apps and their declarations (SPEC section 2), validated on registration.

use std::collections::{BTreeMap, BTreeSet};

use super::{AppId, Availability, DomainError, PrivacyGuide, Scope};

/// Longest accepted `permission` desc, in characters.
pub const MAX_DESC_CHARS: usize = 256;

/// Values accepted in `requiredBackgroundModes`.
pub const BACKGROUND_MODES: [&str; 2] = ["audio", "location"];

/// Values accepted in `requiredPrivateInfos`.
pub const PRIVATE_INFOS: [&str; 8] = [
    "getFuzzyLocation",
    "getLocation",
    "onLocationChange",
    "startLocationUpdate",
    "startLocationUpdateBackground",
    "chooseLocation",
    "choosePoi",
    "chooseAddress",
];

/// Private infos that cannot be declared together with getFuzzyLocation.
const PRECISE_LOCATION_INFOS: [&str; 4] = [
    "getLocation",
    "onLocationChange",
    "startLocationUpdate",
    "startLocationUpdateBackground",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppKind {
    MiniProgram,
    MiniGame,
}

/// What an app declares in app.json / game.json.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Declarations {
    /// scope -> desc shown in the popup.
    pub permission: BTreeMap<Scope, String>,
    pub background_modes: BTreeSet<String>,
    pub private_infos: BTreeSet<String>,
    /// The privacy guide, when the app declares one.
    pub privacy: Option<PrivacyGuide>,
}

/// A registered app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct App {
    pub id: AppId,
    pub kind: AppKind,
    pub declarations: Declarations,
    /// Revision of the registration's last change.
    pub revision: u64,
    /// Unix milliseconds of the last change.
    pub updated_at_ms: u64,
    /// Version of the privacy guide (0 without one): grows when the guide
    /// gains information types, so users agree again.
    pub privacy_version: u64,
}

/// Unvalidated declarations as they arrive from the wire or a file.
#[derive(Clone, Debug, Default)]
pub struct RawDeclarations {
    pub permission: Vec<(String, String)>,
    pub background_modes: Vec<String>,
    pub private_infos: Vec<String>,
    /// (contract name, information types).
    pub privacy: Option<(String, Vec<String>)>,
}

impl Declarations {
    /// Validates declarations for an app of `kind`.
    pub fn parse(kind: AppKind, raw: RawDeclarations) -> Result<Self, DomainError> {
        let invalid = |field: &str, message: String| DomainError::InvalidArgument {
            field: field.to_owned(),
            message,
        };
        let mut permission = BTreeMap::new();
        for (key, desc) in raw.permission {
            let scope = Scope::parse_field("app.permission", &key)?;
            if scope.availability(kind) == Availability::Unsupported {
                return Err(invalid(
                    "app.permission",
                    format!("app.permission {key:?} does not exist for {}", kind.name()),
                ));
            }
            let chars = desc.chars().count();
            if desc.trim().is_empty() || chars > MAX_DESC_CHARS {
                return Err(invalid(
                    "app.permission",
                    format!(
                        "app.permission[{key:?}].desc must be 1 to {MAX_DESC_CHARS} characters, not {chars}"
                    ),
                ));
            }
            if desc.chars().any(char::is_control) {
                return Err(invalid(
                    "app.permission",
                    format!("app.permission[{key:?}].desc contains a control character"),
                ));
            }
            permission.insert(scope, desc);
        }
        let background_modes = check_values(
            "app.required_background_modes",
            raw.background_modes,
            &BACKGROUND_MODES,
        )?;
        let private_infos = check_values(
            "app.required_private_infos",
            raw.private_infos,
            &PRIVATE_INFOS,
        )?;
        if private_infos.contains("getFuzzyLocation") {
            let clash: Vec<_> = PRECISE_LOCATION_INFOS
                .iter()
                .filter(|p| private_infos.contains(**p))
                .copied()
                .collect();
            if !clash.is_empty() {
                return Err(invalid(
                    "app.required_private_infos",
                    format!(
                        "app.required_private_infos declares getFuzzyLocation together with {}; \
                         fuzzy and precise location are mutually exclusive",
                        clash.join(", ")
                    ),
                ));
            }
        }
        let privacy = raw
            .privacy
            .map(|(name, types)| PrivacyGuide::parse(&name, &types))
            .transpose()?;
        Ok(Self {
            permission,
            background_modes,
            private_infos,
            privacy,
        })
    }

    /// The popup desc for `scope`. Background location falls back to the
    /// scope.userLocation statement, which is where app.json keeps it.
    pub fn desc(&self, scope: Scope) -> Option<&str> {
        self.permission
            .get(&scope)
            .or_else(|| match scope {
                Scope::UserLocationBackground => self.permission.get(&Scope::UserLocation),
                _ => None,
            })
            .map(String::as_str)
    }

    pub fn background_location(&self) -> bool {
        self.background_modes.contains("location")
    }
}

fn check_values(
    field: &str,
    values: Vec<String>,
    valid: &[&str],
) -> Result<BTreeSet<String>, DomainError> {
    values
        .into_iter()
        .map(|v| {
            if valid.contains(&v.as_str()) {
                Ok(v)
            } else {
                Err(DomainError::InvalidArgument {
                    field: field.to_owned(),
                    message: format!(
                        "{field} contains unknown value {}; valid values: {}",
                        super::quoted(&v),
                        valid.join(", ")
                    ),
                })
            }
        })
        .collect()
}

impl AppKind {
    pub fn name(self) -> &'static str {
        match self {
            AppKind::MiniProgram => "mini programs",
            AppKind::MiniGame => "mini games",
        }
    }
}

impl App {
    /// A new registration of `id`; `current` is what is registered under
    /// that id now (refused when there is one). The store sets `revision`
    /// and `updated_at_ms`.
    pub fn register(
        id: AppId,
        kind: AppKind,
        declarations: Declarations,
        current: Option<&App>,
    ) -> Result<App, DomainError> {
        if current.is_some() {
            return Err(DomainError::AlreadyExists {
                message: format!("app {:?} is already registered", id.as_str()),
            });
        }
        let privacy_version = super::privacy::next_version(None, 0, declarations.privacy.as_ref());
        Ok(App {
            id,
            kind,
            declarations,
            revision: 0,
            updated_at_ms: 0,
            privacy_version,
        })
    }

    /// This app with new declarations; its kind cannot change. The guide's
    /// version grows when it gains information types.
    pub fn redeclare(&self, kind: AppKind, declarations: Declarations) -> Result<App, DomainError> {
        if self.kind != kind {
            return Err(DomainError::FailedPrecondition {
                message: format!(
                    "app {:?} is registered as {:?}; the kind cannot change (delete and register it again)",
                    self.id.as_str(),
                    self.kind
                ),
            });
        }
        let privacy_version = super::privacy::next_version(
            self.declarations.privacy.as_ref(),
            self.privacy_version,
            declarations.privacy.as_ref(),
        );
        Ok(App {
            id: self.id.clone(),
            kind,
            declarations,
            revision: 0,
            updated_at_ms: 0,
            privacy_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registering_twice_is_refused_and_the_kind_never_changes() {
        let id = AppId::parse("wxr").unwrap();
        let plain = Declarations::default();
        let app = App::register(id.clone(), AppKind::MiniProgram, plain.clone(), None).unwrap();
        assert_eq!(app.privacy_version, 0);
        assert!(matches!(
            App::register(id, AppKind::MiniProgram, plain.clone(), Some(&app)),
            Err(DomainError::AlreadyExists { .. })
        ));
        assert!(matches!(
            app.redeclare(AppKind::MiniGame, plain.clone()),
            Err(DomainError::FailedPrecondition { .. })
        ));
        let guided = Declarations {
            privacy: Some(PrivacyGuide::parse("G", &["camera".into()]).unwrap()),
            ..plain
        };
        let again = app.redeclare(AppKind::MiniProgram, guided).unwrap();
        assert_eq!(again.privacy_version, 1, "a new guide must be agreed to");
    }

    fn raw(perm: &[(&str, &str)], modes: &[&str], infos: &[&str]) -> RawDeclarations {
        RawDeclarations {
            privacy: None,
            permission: perm
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            background_modes: modes.iter().map(|s| s.to_string()).collect(),
            private_infos: infos.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn accepts_and_dedupes_valid_declarations() {
        let d = Declarations::parse(
            AppKind::MiniProgram,
            raw(
                &[("scope.userLocation", "to show nearby shops")],
                &["location", "location"],
                &["getLocation", "chooseAddress", "getLocation"],
            ),
        )
        .unwrap();
        assert_eq!(d.private_infos.len(), 2);
        assert!(d.background_location());
        assert_eq!(
            d.desc(Scope::UserLocationBackground),
            Some("to show nearby shops")
        );
        assert_eq!(d.desc(Scope::UserFuzzyLocation), None);
    }

    #[test]
    fn rejects_invalid_declarations_naming_the_field() {
        let cases = [
            (
                AppKind::MiniProgram,
                raw(&[], &[], &["getFuzzyLocation", "getLocation"]),
                "mutually exclusive",
            ),
            (
                AppKind::MiniProgram,
                raw(
                    &[],
                    &[],
                    &["getFuzzyLocation", "startLocationUpdateBackground"],
                ),
                "startLocationUpdateBackground",
            ),
            (
                AppKind::MiniProgram,
                raw(&[], &[], &["getlocation"]),
                "unknown value \"getlocation\"",
            ),
            (
                AppKind::MiniProgram,
                raw(&[], &["gps"], &[]),
                "required_background_modes",
            ),
            (
                AppKind::MiniProgram,
                raw(&[("scope.foo", "x")], &[], &[]),
                "not a known scope",
            ),
            (
                AppKind::MiniProgram,
                raw(&[("scope.camera", " ")], &[], &[]),
                "1 to 256",
            ),
            (
                AppKind::MiniGame,
                raw(&[("scope.userLocationBackground", "x")], &[], &[]),
                "does not exist for mini games",
            ),
        ];
        for (kind, r, needle) in cases {
            let err = Declarations::parse(kind, r).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn fuzzy_with_non_conflicting_infos_is_fine() {
        Declarations::parse(
            AppKind::MiniProgram,
            raw(
                &[],
                &[],
                &[
                    "getFuzzyLocation",
                    "chooseLocation",
                    "choosePoi",
                    "chooseAddress",
                ],
            ),
        )
        .unwrap();
    }
}
