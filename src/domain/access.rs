//! Who may call what: principals, roles, the role x RPC matrix and the app
//! binding. Plain data and pure functions; authentication (tokens,
//! certificates) happens at the edge, which hands a [`Principal`] in here.

use std::{collections::BTreeSet, fmt};

use super::{AppId, EventFilter};

/// The RPCs of every consentd service, named as in the proto.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    Authorize,
    BatchAuthorize,
    CheckApi,
    Explain,
    RecordDecision,
    GetSetting,
    OpenSetting,
    UpdateSetting,
    RemoveApp,
    ListScopes,
    GetRules,
    Watch,
    EndSession,
    GetPrivacySetting,
    RecordPrivacyDecision,
    ListAudit,
    RegisterApp,
    UpdateApp,
    GetApp,
    ListApps,
    DeleteApp,
    Compact,
    Verify,
    Export,
    Import,
    ListUserDecisions,
    ResetUser,
    EraseUser,
}

impl Rpc {
    pub const ALL: [Rpc; 28] = [
        Rpc::Authorize,
        Rpc::BatchAuthorize,
        Rpc::CheckApi,
        Rpc::Explain,
        Rpc::RecordDecision,
        Rpc::GetSetting,
        Rpc::OpenSetting,
        Rpc::UpdateSetting,
        Rpc::RemoveApp,
        Rpc::ListScopes,
        Rpc::GetRules,
        Rpc::Watch,
        Rpc::EndSession,
        Rpc::GetPrivacySetting,
        Rpc::RecordPrivacyDecision,
        Rpc::ListAudit,
        Rpc::RegisterApp,
        Rpc::UpdateApp,
        Rpc::GetApp,
        Rpc::ListApps,
        Rpc::DeleteApp,
        Rpc::Compact,
        Rpc::Verify,
        Rpc::Export,
        Rpc::Import,
        Rpc::ListUserDecisions,
        Rpc::ResetUser,
        Rpc::EraseUser,
    ];

    /// The gRPC service and method of each RPC, as the proto names them
    /// (package `consent.v1`): the one table the access layer, metrics and
    /// handlers read.
    pub const fn service_method(self) -> (&'static str, &'static str) {
        match self {
            Rpc::Authorize => ("Authorization", "Authorize"),
            Rpc::BatchAuthorize => ("Authorization", "BatchAuthorize"),
            Rpc::CheckApi => ("Authorization", "CheckApi"),
            Rpc::Explain => ("Authorization", "Explain"),
            Rpc::RecordDecision => ("Authorization", "RecordDecision"),
            Rpc::GetSetting => ("Authorization", "GetSetting"),
            Rpc::OpenSetting => ("Authorization", "OpenSetting"),
            Rpc::UpdateSetting => ("Authorization", "UpdateSetting"),
            Rpc::RemoveApp => ("Authorization", "RemoveApp"),
            Rpc::ListScopes => ("Authorization", "ListScopes"),
            Rpc::GetRules => ("Authorization", "GetRules"),
            Rpc::Watch => ("Authorization", "Watch"),
            Rpc::EndSession => ("Authorization", "EndSession"),
            Rpc::GetPrivacySetting => ("Authorization", "GetPrivacySetting"),
            Rpc::RecordPrivacyDecision => ("Authorization", "RecordPrivacyDecision"),
            Rpc::ListAudit => ("Authorization", "ListAudit"),
            Rpc::RegisterApp => ("Apps", "RegisterApp"),
            Rpc::UpdateApp => ("Apps", "UpdateApp"),
            Rpc::GetApp => ("Apps", "GetApp"),
            Rpc::ListApps => ("Apps", "ListApps"),
            Rpc::DeleteApp => ("Apps", "DeleteApp"),
            Rpc::Compact => ("Admin", "Compact"),
            Rpc::Verify => ("Admin", "Verify"),
            Rpc::Export => ("Admin", "Export"),
            Rpc::Import => ("Admin", "Import"),
            Rpc::ListUserDecisions => ("Authorization", "ListUserDecisions"),
            Rpc::ResetUser => ("Authorization", "ResetUser"),
            Rpc::EraseUser => ("Admin", "EraseUser"),
        }
    }

    /// The RPC a request path (`/consent.v1.<Service>/<Method>`) names;
    /// `None` for any other path (health, reflection, unknown methods).
    pub fn from_path(path: &str) -> Option<Rpc> {
        let (service, method) = path.strip_prefix("/consent.v1.")?.split_once('/')?;
        // Method names tell most RPCs apart: compare them first.
        Rpc::ALL.into_iter().find(|rpc| {
            let (s, m) = rpc.service_method();
            m == method && s == service
        })
    }

    /// Calls that change nothing.
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            Rpc::Authorize
                | Rpc::BatchAuthorize
                | Rpc::CheckApi
                | Rpc::Explain
                | Rpc::GetSetting
                | Rpc::ListScopes
                | Rpc::GetRules
                | Rpc::Watch
                | Rpc::GetPrivacySetting
                | Rpc::ListAudit
                | Rpc::GetApp
                | Rpc::ListApps
                | Rpc::ListUserDecisions
        )
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, including app registration, export/import, compaction.
    Operator,
    /// A mini-program runtime: checks, popup answers, its settings, Watch.
    Runtime,
    /// The settings page: reads and changes settings, removes apps.
    Settings,
    /// Read-only calls and Watch.
    Observer,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Runtime => "runtime",
            Role::Settings => "settings",
            Role::Observer => "observer",
        }
    }

    /// The role x RPC matrix.
    pub fn may_call(self, rpc: Rpc) -> bool {
        match self {
            Role::Operator => true,
            Role::Runtime => matches!(
                rpc,
                Rpc::Authorize
                    | Rpc::BatchAuthorize
                    | Rpc::CheckApi
                    | Rpc::RecordDecision
                    | Rpc::GetSetting
                    | Rpc::Watch
                    | Rpc::EndSession
                    | Rpc::GetPrivacySetting
                    | Rpc::RecordPrivacyDecision
            ),
            Role::Settings => matches!(
                rpc,
                Rpc::GetSetting
                    | Rpc::OpenSetting
                    | Rpc::UpdateSetting
                    | Rpc::RemoveApp
                    | Rpc::GetPrivacySetting
                    | Rpc::ListUserDecisions
                    | Rpc::ResetUser
            ),
            Role::Observer => rpc.is_read_only(),
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "operator" => Ok(Role::Operator),
            "runtime" => Ok(Role::Runtime),
            "settings" => Ok(Role::Settings),
            "observer" => Ok(Role::Observer),
            _ => Err(format!(
                "unknown role {s:?} (expected operator, runtime, settings or observer)"
            )),
        }
    }
}

/// The apps a principal covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppBinding {
    All,
    Only(BTreeSet<AppId>),
}

impl AppBinding {
    pub fn covers(&self, app: &AppId) -> bool {
        match self {
            AppBinding::All => true,
            AppBinding::Only(apps) => apps.contains(app),
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The name from the credentials file; what logs show.
    pub name: String,
    pub role: Role,
    pub apps: AppBinding,
}

/// Why a call was refused. Carries no secret: safe to log and to return.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("principal {principal:?} (role {role}) may not call {rpc}")]
    Role {
        principal: String,
        role: &'static str,
        rpc: Rpc,
    },
    #[error(
        "principal {principal:?} may not call {rpc} for app {app:?}: it is bound to other apps"
    )]
    App {
        principal: String,
        rpc: Rpc,
        app: String,
    },
    #[error("principal {principal:?} may not call {rpc}: it spans every app and the principal is bound to some")]
    AllApps { principal: String, rpc: Rpc },
}

impl Principal {
    /// What the daemon acts as when authentication is off (loopback and
    /// unix sockets only).
    pub fn unauthenticated_local() -> Principal {
        Principal {
            name: "local (authentication off)".into(),
            role: Role::Operator,
            apps: AppBinding::All,
        }
    }

    /// The role check, before anything is decoded.
    pub fn may_call(&self, rpc: Rpc) -> Result<(), Denied> {
        if self.role.may_call(rpc) {
            Ok(())
        } else {
            Err(Denied::Role {
                principal: self.name.clone(),
                role: self.role.name(),
                rpc,
            })
        }
    }

    /// The app binding, once the request names its app.
    pub fn may_touch(&self, rpc: Rpc, app: &AppId) -> Result<(), Denied> {
        self.may_call(rpc)?;
        if self.apps.covers(app) {
            Ok(())
        } else {
            Err(Denied::App {
                principal: self.name.clone(),
                rpc,
                app: app.as_str().to_owned(),
            })
        }
    }

    /// For calls that span every app (listing them, exporting).
    pub fn may_span_all_apps(&self, rpc: Rpc) -> Result<(), Denied> {
        self.may_call(rpc)?;
        match self.apps {
            AppBinding::All => Ok(()),
            AppBinding::Only(_) => Err(Denied::AllApps {
                principal: self.name.clone(),
                rpc,
            }),
        }
    }

    /// Narrows a Watch filter to the principal's apps, whatever it asked
    /// for. Asking only for apps outside the binding is refused (an empty
    /// app set would otherwise mean "every app").
    pub fn narrow_watch(&self, filter: &mut EventFilter) -> Result<(), Denied> {
        self.may_call(Rpc::Watch)?;
        let AppBinding::Only(bound) = &self.apps else {
            return Ok(());
        };
        if filter.apps.is_empty() {
            filter.apps = bound.iter().cloned().collect();
            return Ok(());
        }
        let asked = filter.apps.len();
        filter.apps.retain(|app| bound.contains(app));
        if filter.apps.is_empty() {
            return Err(Denied::App {
                principal: self.name.clone(),
                rpc: Rpc::Watch,
                app: format!("{asked} requested app(s)"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_rpc_has_one_path_and_back() {
        let mut paths = std::collections::BTreeSet::new();
        for rpc in Rpc::ALL {
            let (service, method) = rpc.service_method();
            let path = format!("/consent.v1.{service}/{method}");
            assert_eq!(Rpc::from_path(&path), Some(rpc), "{path}");
            assert_eq!(method, rpc.to_string(), "the method is the RPC's name");
            assert!(paths.insert(path), "one path per RPC");
        }
        for other in [
            "/grpc.health.v1.Health/Check",
            "/consent.v1.Authorization/Nope",
            "/consent.v1.Authorization",
            "/consent.v2.Authorization/Authorize",
        ] {
            assert_eq!(Rpc::from_path(other), None, "{other}");
        }
    }

    use super::*;

    fn app(s: &str) -> AppId {
        AppId::parse(s).unwrap()
    }

    fn bound(role: Role, apps: &[&str]) -> Principal {
        Principal {
            name: "p".into(),
            role,
            apps: AppBinding::Only(apps.iter().map(|a| app(a)).collect()),
        }
    }

    #[test]
    fn the_matrix() {
        let allowed = |role: Role| -> Vec<Rpc> {
            Rpc::ALL.into_iter().filter(|r| role.may_call(*r)).collect()
        };
        assert_eq!(allowed(Role::Operator), Rpc::ALL.to_vec());
        assert_eq!(
            allowed(Role::Runtime),
            [
                Rpc::Authorize,
                Rpc::BatchAuthorize,
                Rpc::CheckApi,
                Rpc::RecordDecision,
                Rpc::GetSetting,
                Rpc::Watch,
                Rpc::EndSession,
                Rpc::GetPrivacySetting,
                Rpc::RecordPrivacyDecision
            ]
        );
        assert_eq!(
            allowed(Role::Settings),
            [
                Rpc::GetSetting,
                Rpc::OpenSetting,
                Rpc::UpdateSetting,
                Rpc::RemoveApp,
                Rpc::GetPrivacySetting,
                Rpc::ListUserDecisions,
                Rpc::ResetUser
            ]
        );
        let observer = allowed(Role::Observer);
        assert!(observer.iter().all(|r| r.is_read_only()));
        assert!(!observer.contains(&Rpc::RecordDecision));
        assert!(!observer.contains(&Rpc::Export));
        assert_eq!(observer.len(), 13);
        assert!(!observer.contains(&Rpc::ResetUser) && !observer.contains(&Rpc::EraseUser));
    }

    #[test]
    fn app_binding() {
        let p = bound(Role::Runtime, &["wxa"]);
        assert!(p.may_touch(Rpc::Authorize, &app("wxa")).is_ok());
        let err = p.may_touch(Rpc::Authorize, &app("wxb")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "principal \"p\" may not call Authorize for app \"wxb\": it is bound to other apps"
        );
        // The role check comes first.
        assert!(matches!(
            p.may_touch(Rpc::RemoveApp, &app("wxa")),
            Err(Denied::Role { .. })
        ));
        assert!(p.may_span_all_apps(Rpc::Watch).is_err());
        assert!(Principal::unauthenticated_local()
            .may_span_all_apps(Rpc::Export)
            .is_ok());
    }

    #[test]
    fn watch_is_narrowed_to_the_binding() {
        let p = bound(Role::Runtime, &["wxa", "wxb"]);
        let mut all = EventFilter::default();
        p.narrow_watch(&mut all).unwrap();
        assert_eq!(all.apps, [app("wxa"), app("wxb")].into());

        let mut mixed = EventFilter {
            apps: [app("wxa"), app("wxz")].into(),
            ..EventFilter::default()
        };
        p.narrow_watch(&mut mixed).unwrap();
        assert_eq!(mixed.apps, [app("wxa")].into());

        let mut foreign = EventFilter {
            apps: [app("wxz")].into(),
            ..EventFilter::default()
        };
        assert!(p.narrow_watch(&mut foreign).is_err());

        let everyone = Principal {
            apps: AppBinding::All,
            ..bound(Role::Observer, &[])
        };
        let mut open = EventFilter::default();
        everyone.narrow_watch(&mut open).unwrap();
        assert!(open.apps.is_empty());
        assert!(bound(Role::Settings, &["wxa"])
            .narrow_watch(&mut EventFilter::default())
            .is_err());
    }
}
