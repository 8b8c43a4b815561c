//! The scope catalog (SPEC section 3) as one data table.
//!
//! Everything scope-specific the rest of the code needs is a column here:
//! which interfaces a scope gates, whether it exists per app kind, and which
//! declarations it needs. Gates read the table; they never `match` on names.

use std::{fmt, str::FromStr};

use super::{privacy::InfoType, AppKind, DomainError};

/// A scope of the catalog. The discriminant is the row in [`CATALOG`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    UserLocation,
    UserFuzzyLocation,
    UserLocationBackground,
    Record,
    Camera,
    Bluetooth,
    WritePhotosAlbum,
    AddPhoneContact,
    AddPhoneCalendar,
    Werun,
    Address,
    InvoiceTitle,
    Invoice,
    UserInfo,
    WxFriendInteraction,
    GameClubData,
}

/// How a scope behaves for one app kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// The scope does not exist for this kind.
    Unsupported,
    /// Normal authorization with a popup.
    Popup,
    /// Authorization abolished: always callable, no popup.
    NoAuthNeeded,
    /// Callable without a popup, but the data is anonymous (MP userInfo).
    Anonymous,
}

/// What a scope needs declared before it can be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocationKind {
    /// Not a location scope.
    None,
    /// Needs a `permission` desc.
    Foreground,
    /// Needs a `permission` desc and requiredBackgroundModes "location".
    Background,
}

/// One row of the catalog.
#[derive(Debug)]
pub struct ScopeInfo {
    pub scope: Scope,
    pub name: &'static str,
    pub description: &'static str,
    pub interfaces: &'static [&'static str],
    pub mini_program: Availability,
    pub mini_game: Availability,
    pub location: LocationKind,
    /// The privacy guide's information type covering this scope, if any.
    pub privacy: Option<InfoType>,
}

use Availability::{Anonymous, NoAuthNeeded, Popup, Unsupported};

/// The catalog, in `Scope` discriminant order.
pub static CATALOG: [ScopeInfo; 16] = [
    ScopeInfo {
        scope: Scope::UserLocation,
        name: "scope.userLocation",
        description: "Precise geographical location",
        interfaces: &[
            "wx.getLocation",
            "wx.startLocationUpdate",
            "MapContext.moveToLocation",
        ],
        mini_program: Popup,
        mini_game: Popup,
        privacy: Some(InfoType::Location),
        location: LocationKind::Foreground,
    },
    ScopeInfo {
        scope: Scope::UserFuzzyLocation,
        name: "scope.userFuzzyLocation",
        description: "Approximate geographical location",
        interfaces: &["wx.getFuzzyLocation"],
        mini_program: Popup,
        mini_game: Popup,
        privacy: Some(InfoType::Location),
        location: LocationKind::Foreground,
    },
    ScopeInfo {
        scope: Scope::UserLocationBackground,
        name: "scope.userLocationBackground",
        description: "Location while in the background",
        interfaces: &["wx.startLocationUpdateBackground"],
        mini_program: Popup,
        mini_game: Unsupported,
        privacy: Some(InfoType::Location),
        location: LocationKind::Background,
    },
    ScopeInfo {
        scope: Scope::Record,
        name: "scope.record",
        description: "Microphone",
        interfaces: &[
            "live-pusher",
            "wx.startRecord",
            "wx.joinVoIPChat",
            "RecorderManager.start",
        ],
        mini_program: Popup,
        mini_game: Popup,
        privacy: Some(InfoType::Microphone),
        location: LocationKind::None,
    },
    ScopeInfo {
        scope: Scope::Camera,
        name: "scope.camera",
        description: "Camera",
        interfaces: &["camera", "live-pusher", "wx.createVKSession"],
        mini_program: Popup,
        mini_game: Popup,
        privacy: Some(InfoType::Camera),
        location: LocationKind::None,
    },
    ScopeInfo {
        scope: Scope::Bluetooth,
        name: "scope.bluetooth",
        description: "Bluetooth",
        interfaces: &["wx.openBluetoothAdapter", "wx.createBLEPeripheralServer"],
        mini_program: Popup,
        mini_game: Popup,
        privacy: Some(InfoType::Bluetooth),
        location: LocationKind::None,
    },
    ScopeInfo {
        scope: Scope::WritePhotosAlbum,
        name: "scope.writePhotosAlbum",
        description: "Add to album",
        interfaces: &["wx.saveImageToPhotosAlbum", "wx.saveVideoToPhotosAlbum"],
        mini_program: Popup,
        mini_game: Popup,
        privacy: Some(InfoType::Album),
        location: LocationKind::None,
    },
    ScopeInfo {
        scope: Scope::AddPhoneContact,
        name: "scope.addPhoneContact",
        description: "Add to contacts",
        interfaces: &["wx.addPhoneContact"],
        mini_program: Popup,
        mini_game: Unsupported,
        privacy: Some(InfoType::Contacts),
        location: LocationKind::None,
    },
    ScopeInfo {
        scope: Scope::AddPhoneCalendar,
        name: "scope.addPhoneCalendar",
        description: "Add to calendar",
        interfaces: &["wx.addPhoneRepeatCalendar", "wx.addPhoneCalendar"],
        mini_program: Popup,
        mini_game: Unsupported,
        privacy: Some(InfoType::Calendar),
        location: LocationKind::None,
    },
    ScopeInfo {
        scope: Scope::Werun,
        name: "scope.werun",
        description: "WeRun step count",
        interfaces: &["wx.getWeRunData"],
        mini_program: Popup,
        mini_game: Popup,
        privacy: Some(InfoType::Werun),
        location: LocationKind::None,
    },
    ScopeInfo {
        scope: Scope::Address,
        name: "scope.address",
        description: "Mailing address (authorization abolished)",
        interfaces: &["wx.chooseAddress"],
        mini_program: NoAuthNeeded,
        mini_game: Unsupported,
        privacy: Some(InfoType::Address),
        location: LocationKind::None,
    },
    ScopeInfo {
        scope: Scope::InvoiceTitle,
        name: "scope.invoiceTitle",
        description: "Invoice title (authorization abolished)",
        interfaces: &["wx.chooseInvoiceTitle"],
        mini_program: NoAuthNeeded,
        mini_game: Unsupported,
        privacy: Some(InfoType::Invoice),
        location: LocationKind::None,
    },
    ScopeInfo {
        scope: Scope::Invoice,
        name: "scope.invoice",
        description: "Invoice (authorization abolished)",
        interfaces: &["wx.chooseInvoice"],
        mini_program: NoAuthNeeded,
        mini_game: Unsupported,
        privacy: Some(InfoType::Invoice),
        location: LocationKind::None,
    },
    ScopeInfo {
        scope: Scope::UserInfo,
        name: "scope.userInfo",
        description: "User information",
        interfaces: &["wx.getUserInfo"],
        mini_program: Anonymous,
        mini_game: Popup,
        privacy: None,
        location: LocationKind::None,
    },
    ScopeInfo {
        scope: Scope::WxFriendInteraction,
        name: "scope.WxFriendInteraction",
        description: "Friend and group interaction data",
        interfaces: &[
            "wx.getFriendCloudStorage",
            "wx.getGroupCloudStorage",
            "wx.getPotentialFriendList",
            "wx.getUserInteractiveStorage",
        ],
        mini_program: Unsupported,
        mini_game: Popup,
        privacy: None,
        location: LocationKind::None,
    },
    ScopeInfo {
        scope: Scope::GameClubData,
        name: "scope.gameClubData",
        description: "Game club data",
        interfaces: &["wx.getGameClubData"],
        mini_program: Unsupported,
        mini_game: Popup,
        privacy: None,
        location: LocationKind::None,
    },
];

impl Scope {
    /// Every scope, in catalog order.
    pub fn all() -> impl Iterator<Item = Scope> {
        CATALOG.iter().map(|info| info.scope)
    }

    pub fn info(self) -> &'static ScopeInfo {
        &CATALOG[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn availability(self, kind: AppKind) -> Availability {
        match kind {
            AppKind::MiniProgram => self.info().mini_program,
            AppKind::MiniGame => self.info().mini_game,
        }
    }

    /// Parses a scope name, naming `field` in the error.
    pub fn parse_field(field: &str, raw: &str) -> Result<Scope, DomainError> {
        raw.parse().map_err(|()| DomainError::InvalidArgument {
            field: field.to_owned(),
            message: format!(
                "{field} {} is not a known scope; valid scopes: {} (`consentctl scopes` lists \
                 them){}",
                super::quoted(raw),
                CATALOG
                    .iter()
                    .map(|i| i.name)
                    .collect::<Vec<_>>()
                    .join(", "),
                did_you_mean(near(raw, CATALOG.iter().map(|i| i.name))),
            ),
        })
    }
}

impl FromStr for Scope {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CATALOG
            .iter()
            .find(|info| info.name == s)
            .map(|info| info.scope)
            .ok_or(())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name in `names` a mistyped `raw` most likely meant: the same name
/// in another case, `raw` with the prefix it lacks (`camera` ->
/// `scope.camera`, `getLocation` -> `wx.getLocation`), else the closest one
/// within a small edit distance. `None` when nothing is near.
pub fn near<'a>(raw: &str, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = raw.to_ascii_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for name in names {
        let name_lower = name.to_ascii_lowercase();
        let tail = name_lower.rsplit('.').next().unwrap_or(&name_lower);
        let distance = if name_lower == lower || tail == lower {
            0
        } else {
            strsim::levenshtein(&lower, &name_lower)
        };
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, name));
        }
    }
    // At most a third of the part after the prefix (`camera` of
    // `scope.camera`) mistyped.
    best.filter(|(d, name)| *d <= (name.rsplit('.').next().unwrap_or(name).len() / 3).max(1))
        .map(|(_, name)| name)
}

fn did_you_mean(name: Option<&str>) -> String {
    name.map_or_else(String::new, |n| format!("; did you mean \"{n}\"?"))
}

/// A gated interface (`wx.getLocation`) or component (`camera`) and the
/// scopes it needs, in catalog order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Api {
    name: &'static str,
    scopes: Vec<Scope>,
}

impl Api {
    /// Resolves an interface name exactly; the error names `field`.
    pub fn parse_field(field: &str, raw: &str) -> Result<Api, DomainError> {
        let scopes: Vec<Scope> = CATALOG
            .iter()
            .filter(|info| info.interfaces.contains(&raw))
            .map(|info| info.scope)
            .collect();
        let name = scopes
            .first()
            .and_then(|s| s.info().interfaces.iter().find(|i| **i == raw))
            .copied();
        match name {
            Some(name) => Ok(Api { name, scopes }),
            None => Err(DomainError::InvalidArgument {
                field: field.to_owned(),
                message: format!(
                    "{field} {} is not a gated interface; `consentctl scopes` (ListScopes) \
                     lists them{}",
                    super::quoted(raw),
                    did_you_mean(near(
                        raw,
                        CATALOG.iter().flat_map(|i| i.interfaces.iter().copied())
                    )),
                ),
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// The errMsg prefix: the name after its last '.' (`wx.getLocation` ->
    /// `getLocation`, `camera` -> `camera`).
    pub fn err_prefix(&self) -> &'static str {
        self.name.rsplit('.').next().unwrap_or(self.name)
    }

    /// The name as written in `requiredPrivateInfos`, when this interface
    /// must be declared there.
    pub fn private_info_name(&self) -> Option<&'static str> {
        let bare = self.name.strip_prefix("wx.")?;
        super::app::PRIVATE_INFOS.contains(&bare).then_some(bare)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_near_name_is_suggested() {
        let scopes = || CATALOG.iter().map(|i| i.name);
        assert_eq!(near("camera", scopes()), Some("scope.camera"));
        assert_eq!(near("scope.camra", scopes()), Some("scope.camera"));
        assert_eq!(near("SCOPE.RECORD", scopes()), Some("scope.record"));
        assert_eq!(near("scope.nope", scopes()), None);
        let apis = || CATALOG.iter().flat_map(|i| i.interfaces.iter().copied());
        assert_eq!(near("getLocation", apis()), Some("wx.getLocation"));
        assert_eq!(near("wx.getLocaton", apis()), Some("wx.getLocation"));
        assert_eq!(near("wx.nothingLikeIt", apis()), None);
        let err = Scope::parse_field("scope", "camera")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("did you mean \"scope.camera\"?") && err.contains("`consentctl scopes`"),
            "{err}"
        );
    }
    use super::*;

    #[test]
    fn table_is_in_discriminant_order() {
        for (i, info) in CATALOG.iter().enumerate() {
            assert_eq!(info.scope as usize, i, "{}", info.name);
            assert_eq!(info.name.parse::<Scope>(), Ok(info.scope));
        }
    }

    #[test]
    fn interfaces_resolve_exactly() {
        let cases: &[(&str, &[Scope])] = &[
            ("wx.getLocation", &[Scope::UserLocation]),
            ("MapContext.moveToLocation", &[Scope::UserLocation]),
            ("wx.getFuzzyLocation", &[Scope::UserFuzzyLocation]),
            (
                "wx.startLocationUpdateBackground",
                &[Scope::UserLocationBackground],
            ),
            ("live-pusher", &[Scope::Record, Scope::Camera]),
            ("camera", &[Scope::Camera]),
            ("RecorderManager.start", &[Scope::Record]),
            ("wx.chooseInvoice", &[Scope::Invoice]),
        ];
        for (raw, scopes) in cases {
            assert_eq!(
                Api::parse_field("api", raw).unwrap().scopes(),
                *scopes,
                "{raw}"
            );
        }
        for bad in [
            "getLocation",
            "wx.getlocation",
            "wx.getLocation ",
            "",
            "Camera",
        ] {
            assert!(Api::parse_field("api", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn err_prefix_and_private_info_name() {
        let api = |s| Api::parse_field("api", s).unwrap();
        assert_eq!(api("wx.getLocation").err_prefix(), "getLocation");
        assert_eq!(
            api("MapContext.moveToLocation").err_prefix(),
            "moveToLocation"
        );
        assert_eq!(api("live-pusher").err_prefix(), "live-pusher");
        assert_eq!(
            api("wx.getLocation").private_info_name(),
            Some("getLocation")
        );
        assert_eq!(
            api("wx.startLocationUpdateBackground").private_info_name(),
            Some("startLocationUpdateBackground")
        );
        assert_eq!(api("MapContext.moveToLocation").private_info_name(), None);
        assert_eq!(api("camera").private_info_name(), None);
    }

    #[test]
    fn unknown_scope_error_lists_valid_scopes() {
        let err = Scope::parse_field("scope", "scope.foo")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("scope \"scope.foo\" is not a known scope"),
            "{err}"
        );
        assert!(err.contains("scope.gameClubData"), "{err}");
    }
}
