//! The gates of SPEC section 4: one pure function from (app, scope, client,
//! stored state, rules) to a verdict.

use super::{
    rules::Target, App, Availability, Client, DecisionState, LocationKind, RuleSet, Scope,
};

/// What the runtime must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Granted,
    Denied,
    Prompt,
    SettingsRequired,
    NoAuthNeeded,
    NotDeclared,
    Unsupported,
    /// The user has not agreed to the app's privacy guide (or it gained
    /// types since): show the privacy agreement first.
    PrivacyRequired,
    /// The user disagreed with the privacy guide moments ago: fail without
    /// a popup.
    PrivacyDenied,
    /// A popup would be shown, but the user dismissed it too often lately
    /// (the anti-nag policy): fail without a popup until the embargo ends.
    Embargoed,
}

impl Outcome {
    /// A stable name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Granted => "Granted",
            Outcome::Denied => "Denied",
            Outcome::Prompt => "Prompt",
            Outcome::SettingsRequired => "SettingsRequired",
            Outcome::NoAuthNeeded => "NoAuthNeeded",
            Outcome::NotDeclared => "NotDeclared",
            Outcome::Unsupported => "Unsupported",
            Outcome::PrivacyRequired => "PrivacyRequired",
            Outcome::PrivacyDenied => "PrivacyDenied",
            Outcome::Embargoed => "Embargoed",
        }
    }
}

/// The gate or rule that decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    ScopeNotForAppKind,
    BaseLibraryTooOld,
    AuthorizationAbolished,
    AnonymousProfile,
    MissingPermissionDesc,
    MissingBackgroundMode,
    MissingPrivateInfo,
    StoredGrant,
    StoredDenial,
    PopupAvailable,
    PopupUnavailable,
    PrivacyNotDeclared,
    PrivacyAgreementNeeded,
    PrivacyDisagreed,
    PromptEmbargoed,
}

impl Reason {
    /// A stable name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Reason::ScopeNotForAppKind => "ScopeNotForAppKind",
            Reason::BaseLibraryTooOld => "BaseLibraryTooOld",
            Reason::AuthorizationAbolished => "AuthorizationAbolished",
            Reason::AnonymousProfile => "AnonymousProfile",
            Reason::MissingPermissionDesc => "MissingPermissionDesc",
            Reason::MissingBackgroundMode => "MissingBackgroundMode",
            Reason::MissingPrivateInfo => "MissingPrivateInfo",
            Reason::StoredGrant => "StoredGrant",
            Reason::StoredDenial => "StoredDenial",
            Reason::PopupAvailable => "PopupAvailable",
            Reason::PopupUnavailable => "PopupUnavailable",
            Reason::PrivacyNotDeclared => "PrivacyNotDeclared",
            Reason::PrivacyAgreementNeeded => "PrivacyAgreementNeeded",
            Reason::PrivacyDisagreed => "PrivacyDisagreed",
            Reason::PromptEmbargoed => "PromptEmbargoed",
        }
    }
}

/// The popup the runtime must show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    pub scope: Scope,
    pub scope_description: &'static str,
    pub app_desc: Option<String>,
    /// The two-option background-location popup.
    pub background_location: bool,
}

/// One scope's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub scope: Scope,
    pub outcome: Outcome,
    pub state: DecisionState,
    pub reason: Reason,
    /// The id of the rule that decided, when one did.
    pub rule: Option<String>,
    pub err_msg: String,
    pub prompt: Option<Prompt>,
    /// For an answer from a stored grant: how long it lasts (the broker
    /// fills it in; the gates see only states).
    pub lifetime: super::Lifetime,
    /// The platform errno for errors that have one (privacy: 112, 104).
    pub err_no: u32,
    /// For EMBARGOED: when prompts may be shown again (Unix ms).
    pub embargo_until_ms: Option<u64>,
}

/// The errMsg prefix for a target: "authorize" or the interface's name.
pub fn err_prefix(target: Target<'_>) -> &'static str {
    match target {
        Target::Authorize => "authorize",
        Target::Api(api) => api.err_prefix(),
    }
}

/// The errMsg `<prefix>:<suffix>`, in one allocation of its exact size (a
/// `format!` costs every verdict about a thousand instructions more).
pub fn err_msg(target: Target<'_>, suffix: &str) -> String {
    [err_prefix(target), ":", suffix].concat()
}

/// errMsg suffixes (SPEC section 8), after `<prefix>:`.
pub mod msg {
    pub const OK: &str = "ok";
    pub const AUTH_DENY: &str = "fail auth deny";
    pub const AUTH_CANCEL: &str = "fail auth cancel";
    pub const REQUIRE_DESC: &str = "fail:require permission desc";
    pub const REQUIRE_BACKGROUND_MODE: &str =
        "fail the api need to be declared in the requiredBackgroundModes field in app.json/ext.json";
    pub const REQUIRE_PRIVATE_INFO: &str =
        "fail the api need to be declared in the requiredPrivateInfos field in app.json/ext.json";
    pub const NOT_SUPPORTED: &str = "fail not supported";
}

/// One check a gate made, for explanations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// 1 to 5, as in SPEC section 4.
    pub gate: u8,
    pub check: String,
    /// Whether the check let the request through to the next gate.
    pub passed: bool,
}

/// The gates for `scope` asked through `target`, in order; the first gate
/// that decides wins. Gate 1's malformed-request and unknown-app checks
/// happen before (ids, client and scope are already typed here). `note`
/// hears about each check (lazily, so evaluation without an explanation
/// formats nothing). Only [`super::authorize`] runs it: every verdict goes
/// through that one path.
pub(super) fn walk(
    app: &App,
    scope: Scope,
    target: Target<'_>,
    client: &Client,
    state: DecisionState,
    rules: &RuleSet,
    mut note: impl FnMut(u8, bool, &dyn Fn() -> String),
) -> Verdict {
    let decide = |outcome, reason, rule: Option<&str>, suffix: &str| Verdict {
        scope,
        outcome,
        state,
        reason,
        rule: rule.map(str::to_owned),
        err_msg: if suffix.is_empty() {
            String::new()
        } else {
            err_msg(target, suffix)
        },
        prompt: None,
        lifetime: super::Lifetime::Permanent,
        err_no: 0,
        embargo_until_ms: None,
    };
    let decl = &app.declarations;

    // Gate 1: does the scope (or interface) exist for this app and client?
    let availability = scope.availability(app.kind);
    let exists = availability != Availability::Unsupported;
    note(1, exists, &|| {
        format!("{scope} exists for {}", app.kind.name())
    });
    if !exists {
        return decide(
            Outcome::Unsupported,
            Reason::ScopeNotForAppKind,
            None,
            msg::NOT_SUPPORTED,
        );
    }
    let too_old = rules.failed_min_sdk(scope, target, client);
    note(1, too_old.is_none(), &|| match too_old {
        Some(rule) => format!(
            "base library {} is below {} (rule {})",
            client.sdk_version, rule.min_sdk_version, rule.id
        ),
        None => format!("base library {} meets every minimum", client.sdk_version),
    });
    if let Some(rule) = too_old {
        return decide(
            Outcome::Unsupported,
            Reason::BaseLibraryTooOld,
            Some(&rule.id),
            msg::NOT_SUPPORTED,
        );
    }

    // Gate 2: no authorization needed.
    let needed = availability == Availability::Popup;
    note(2, needed, &|| match availability {
        Availability::NoAuthNeeded => {
            format!("authorization for {scope} was abolished: callable directly")
        }
        Availability::Anonymous => {
            format!("{scope} needs no authorization here: the data is anonymous")
        }
        _ => format!("{scope} needs the user's authorization"),
    });
    match availability {
        Availability::NoAuthNeeded => {
            return decide(
                Outcome::NoAuthNeeded,
                Reason::AuthorizationAbolished,
                None,
                msg::OK,
            )
        }
        Availability::Anonymous => {
            return decide(
                Outcome::NoAuthNeeded,
                Reason::AnonymousProfile,
                None,
                msg::OK,
            )
        }
        Availability::Popup | Availability::Unsupported => {}
    }

    // Gate 3: declarations.
    let location = scope.info().location;
    if location != LocationKind::None {
        let declared = decl.desc(scope).is_some();
        note(3, declared, &|| {
            format!("a `permission` desc for {scope} is declared")
        });
        if !declared {
            return decide(
                Outcome::NotDeclared,
                Reason::MissingPermissionDesc,
                None,
                msg::REQUIRE_DESC,
            );
        }
    }
    if location == LocationKind::Background {
        let declared = decl.background_location();
        note(3, declared, &|| {
            "requiredBackgroundModes contains \"location\"".to_owned()
        });
        if !declared {
            return decide(
                Outcome::NotDeclared,
                Reason::MissingBackgroundMode,
                None,
                msg::REQUIRE_BACKGROUND_MODE,
            );
        }
    }
    if let Target::Api(api) = target {
        if let Some(info) = api.private_info_name() {
            let declared = decl.private_infos.contains(info);
            note(3, declared, &|| {
                format!("requiredPrivateInfos contains {info:?}")
            });
            if !declared {
                return decide(
                    Outcome::NotDeclared,
                    Reason::MissingPrivateInfo,
                    None,
                    msg::REQUIRE_PRIVATE_INFO,
                );
            }
        }
    }

    // Gate 4: the stored decision.
    note(4, state == DecisionState::NotDetermined, &|| {
        format!("the stored decision is {state:?}")
    });
    match state {
        DecisionState::Granted => {
            return decide(Outcome::Granted, Reason::StoredGrant, None, msg::OK)
        }
        DecisionState::Denied => {
            return decide(Outcome::Denied, Reason::StoredDenial, None, msg::AUTH_DENY)
        }
        DecisionState::NotDetermined => {}
    }

    // Gate 5: can this client show the popup?
    let no_popup = rules.failed_popup(scope, client);
    note(5, no_popup.is_none(), &|| match no_popup {
        Some(rule) => format!(
            "{} {} cannot show the popup: rule {} needs {} from {}",
            client.platform,
            client.host_version,
            rule.id,
            rule.platforms
                .iter()
                .map(|p| p.token())
                .collect::<Vec<_>>()
                .join(" or "),
            rule.min_host_version
        ),
        None => format!(
            "{} {} can show the popup",
            client.platform, client.host_version
        ),
    });
    if let Some(rule) = no_popup {
        return decide(
            Outcome::SettingsRequired,
            Reason::PopupUnavailable,
            Some(&rule.id),
            msg::AUTH_DENY,
        );
    }
    Verdict {
        prompt: Some(Prompt {
            scope,
            scope_description: scope.info().description,
            app_desc: decl.desc(scope).map(str::to_owned),
            background_location: location == LocationKind::Background,
        }),
        ..decide(Outcome::Prompt, Reason::PopupAvailable, None, "")
    }
}

/// The combined answer for an interface that needs several scopes
/// (live-pusher: record and camera): the most restrictive verdict decides.
pub fn most_restrictive(verdicts: &[Verdict]) -> Option<&Verdict> {
    fn rank(outcome: Outcome) -> u8 {
        match outcome {
            Outcome::Unsupported => 9,
            Outcome::NotDeclared => 8,
            Outcome::PrivacyDenied => 7,
            Outcome::Denied => 6,
            Outcome::SettingsRequired => 5,
            Outcome::Embargoed => 4,
            Outcome::PrivacyRequired => 3,
            Outcome::Prompt => 2,
            Outcome::Granted => 1,
            Outcome::NoAuthNeeded => 0,
        }
    }
    // max_by_key keeps the last maximum; reverse so the first in catalog order wins ties.
    verdicts.iter().rev().max_by_key(|v| rank(v.outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gates alone (test helper): evaluates the gates for `scope` asked through `target`, in order; the
    /// first gate that decides wins. Gate 1's malformed-request and unknown-app
    /// checks happen before (ids, client and scope are already typed here).
    fn evaluate(
        app: &App,
        scope: Scope,
        target: Target<'_>,
        client: &Client,
        state: DecisionState,
        rules: &RuleSet,
    ) -> Verdict {
        walk(app, scope, target, client, state, rules, |_, _, _| {})
    }

    /// [`evaluate`], plus every check each gate made on the way.
    fn explain(
        app: &App,
        scope: Scope,
        target: Target<'_>,
        client: &Client,
        state: DecisionState,
        rules: &RuleSet,
    ) -> (Verdict, Vec<Step>) {
        let mut steps = Vec::new();
        let verdict = walk(
            app,
            scope,
            target,
            client,
            state,
            rules,
            |gate, passed, check: &dyn Fn() -> String| {
                steps.push(Step {
                    gate,
                    check: check(),
                    passed,
                });
            },
        );
        (verdict, steps)
    }
    use crate::domain::{Api, AppId, AppKind, Declarations, Platform, RawDeclarations};

    /// Convenience: evaluate every scope of `api`.
    fn evaluate_api(
        app: &App,
        api: &Api,
        client: &Client,
        state_of: impl Fn(Scope) -> DecisionState,
        rules: &RuleSet,
    ) -> Vec<Verdict> {
        api.scopes()
            .iter()
            .map(|&scope| evaluate(app, scope, Target::Api(api), client, state_of(scope), rules))
            .collect()
    }

    fn app(kind: AppKind, perm: &[&str], modes: &[&str], infos: &[&str]) -> App {
        let raw = RawDeclarations {
            privacy: None,
            permission: perm
                .iter()
                .map(|s| (s.to_string(), "why".to_string()))
                .collect(),
            background_modes: modes.iter().map(|s| s.to_string()).collect(),
            private_infos: infos.iter().map(|s| s.to_string()).collect(),
        };
        App {
            privacy_version: 0,
            id: AppId::parse("wxapp").unwrap(),
            kind,
            declarations: Declarations::parse(kind, raw).unwrap(),
            revision: 1,
            updated_at_ms: 0,
        }
    }

    fn client(platform: Platform, host: &str, sdk: &str) -> Client {
        Client {
            platform,
            host_version: host.parse().unwrap(),
            sdk_version: sdk.parse().unwrap(),
        }
    }

    use DecisionState::{Denied as D, Granted as G, NotDetermined as N};
    use Outcome::*;

    #[test]
    fn authorize_gates_in_order() {
        let mp = AppKind::MiniProgram;
        let mg = AppKind::MiniGame;
        let full = app(mp, &["scope.userLocation"], &["location"], &["getLocation"]);
        let bare = app(mp, &[], &[], &[]);
        let game = app(mg, &[], &[], &[]);
        let no_mode = app(mp, &["scope.userLocation"], &[], &[]);
        let new = client(Platform::Android, "8.0.5", "3.0.0");
        let old = client(Platform::Android, "7.0.20", "3.0.0");
        let ancient_sdk = client(Platform::Android, "8.0.5", "1.1.0");
        #[rustfmt::skip]
        let cases: Vec<(&App, Scope, &Client, DecisionState, Outcome, Reason, &str)> = vec![
            // Gate 1: kind, then base library.
            (&game, Scope::Address, &new, N, Unsupported, Reason::ScopeNotForAppKind, "authorize:fail not supported"),
            (&game, Scope::UserLocationBackground, &new, G, Unsupported, Reason::ScopeNotForAppKind, "authorize:fail not supported"),
            (&bare, Scope::GameClubData, &new, N, Unsupported, Reason::ScopeNotForAppKind, "authorize:fail not supported"),
            (&full, Scope::Camera, &ancient_sdk, G, Unsupported, Reason::BaseLibraryTooOld, "authorize:fail not supported"),
            // Gate 2 beats stored state and declarations.
            (&bare, Scope::Address, &new, D, NoAuthNeeded, Reason::AuthorizationAbolished, "authorize:ok"),
            (&bare, Scope::Invoice, &new, N, NoAuthNeeded, Reason::AuthorizationAbolished, "authorize:ok"),
            (&bare, Scope::UserInfo, &new, N, NoAuthNeeded, Reason::AnonymousProfile, "authorize:ok"),
            (&game, Scope::UserInfo, &new, N, Prompt, Reason::PopupAvailable, ""),
            // Gate 3 beats stored state.
            (&bare, Scope::UserLocation, &new, G, NotDeclared, Reason::MissingPermissionDesc, "authorize:fail:require permission desc"),
            (&bare, Scope::UserFuzzyLocation, &new, N, NotDeclared, Reason::MissingPermissionDesc, "authorize:fail:require permission desc"),
            (&no_mode, Scope::UserLocationBackground, &new, N, NotDeclared, Reason::MissingBackgroundMode, "authorize:fail the api need to be declared in the requiredBackgroundModes field in app.json/ext.json"),
            // Gate 4.
            (&full, Scope::UserLocation, &new, G, Granted, Reason::StoredGrant, "authorize:ok"),
            (&full, Scope::Camera, &old, D, Denied, Reason::StoredDenial, "authorize:fail auth deny"),
            // Stored decisions win over the popup rule.
            (&full, Scope::UserLocationBackground, &old, G, Granted, Reason::StoredGrant, "authorize:ok"),
            // Gate 5.
            (&full, Scope::Camera, &old, N, Prompt, Reason::PopupAvailable, ""),
            (&full, Scope::UserLocationBackground, &new, N, Prompt, Reason::PopupAvailable, ""),
            (&full, Scope::UserLocationBackground, &old, N, SettingsRequired, Reason::PopupUnavailable, "authorize:fail auth deny"),
        ];
        let rules = RuleSet::default();
        for (i, (app, scope, client, state, outcome, reason, err)) in cases.into_iter().enumerate()
        {
            let v = evaluate(app, scope, Target::Authorize, client, state, &rules);
            assert_eq!(
                (v.outcome, v.reason, v.err_msg.as_str()),
                (outcome, reason, err),
                "case {i}: {scope}"
            );
            assert_eq!(v.state, state);
            assert_eq!(v.prompt.is_some(), outcome == Prompt, "case {i}");
        }
    }

    #[test]
    fn explain_traces_each_gate_up_to_the_deciding_one() {
        let a = app(
            AppKind::MiniProgram,
            &["scope.userLocation"],
            &["location"],
            &[],
        );
        let old = client(Platform::Ios, "7.0.20", "3.0.0");
        let (v, steps) = explain(
            &a,
            Scope::UserLocationBackground,
            Target::Authorize,
            &old,
            N,
            &RuleSet::default(),
        );
        assert_eq!(
            v,
            evaluate(
                &a,
                Scope::UserLocationBackground,
                Target::Authorize,
                &old,
                N,
                &RuleSet::default()
            )
        );
        let gates: Vec<(u8, bool)> = steps.iter().map(|s| (s.gate, s.passed)).collect();
        assert_eq!(
            gates,
            [
                (1, true),
                (1, true),
                (2, true),
                (3, true),
                (3, true),
                (4, true),
                (5, false)
            ]
        );
        assert_eq!(
            steps.last().unwrap().check,
            "ios 7.0.20 cannot show the popup: rule background-location-popup needs android or ios from 8.0.0"
        );
        let (v, steps) = explain(
            &a,
            Scope::Camera,
            Target::Authorize,
            &old,
            G,
            &RuleSet::default(),
        );
        assert_eq!(v.outcome, Granted);
        assert_eq!(
            steps.last().unwrap(),
            &Step {
                gate: 4,
                check: "the stored decision is Granted".into(),
                passed: false
            }
        );
    }

    #[test]
    fn prompt_carries_the_popup_content() {
        let a = app(
            AppKind::MiniProgram,
            &["scope.userLocation"],
            &["location"],
            &[],
        );
        let c = client(Platform::Ios, "8.0.0", "2.8.0");
        let v = evaluate(
            &a,
            Scope::UserLocationBackground,
            Target::Authorize,
            &c,
            N,
            &RuleSet::default(),
        );
        let p = v.prompt.unwrap();
        assert!(p.background_location);
        assert_eq!(p.app_desc.as_deref(), Some("why"));
        assert_eq!(v.rule, None);
        let v = evaluate(
            &a,
            Scope::UserLocationBackground,
            Target::Authorize,
            &client(Platform::Ios, "7.9.99", "2.8.0"),
            N,
            &RuleSet::default(),
        );
        assert_eq!(v.rule.as_deref(), Some("background-location-popup"));
    }

    #[test]
    fn interface_checks_prefix_and_need_private_infos() {
        let rules = RuleSet::default();
        let c = client(Platform::Android, "8.0.5", "3.0.0");
        let undeclared = app(AppKind::MiniProgram, &["scope.userLocation"], &[], &[]);
        let declared = app(
            AppKind::MiniProgram,
            &["scope.userLocation"],
            &[],
            &["getLocation"],
        );
        let api = Api::parse_field("api", "wx.getLocation").unwrap();
        let v = &evaluate_api(&undeclared, &api, &c, |_| G, &rules)[0];
        assert_eq!(v.outcome, NotDeclared);
        assert_eq!(v.err_msg, "getLocation:fail the api need to be declared in the requiredPrivateInfos field in app.json/ext.json");
        let v = &evaluate_api(&declared, &api, &c, |_| D, &rules)[0];
        assert_eq!(v.err_msg, "getLocation:fail auth deny");
        // moveToLocation is not a private info.
        let map = Api::parse_field("api", "MapContext.moveToLocation").unwrap();
        assert_eq!(
            evaluate_api(&undeclared, &map, &c, |_| G, &rules)[0].err_msg,
            "moveToLocation:ok"
        );
        // chooseAddress: abolished scope decides first.
        let addr = Api::parse_field("api", "wx.chooseAddress").unwrap();
        assert_eq!(
            evaluate_api(&undeclared, &addr, &c, |_| N, &rules)[0].outcome,
            NoAuthNeeded
        );
    }

    #[test]
    fn most_restrictive_scope_decides_a_multi_scope_interface() {
        let rules = RuleSet::default();
        let a = app(AppKind::MiniProgram, &[], &[], &[]);
        let c = client(Platform::Android, "8.0.5", "3.0.0");
        let pusher = Api::parse_field("api", "live-pusher").unwrap();
        let cases = [
            ((G, G), Granted),
            ((G, N), Prompt),
            ((N, D), Denied),
            ((D, G), Denied),
            ((N, N), Prompt),
        ];
        for ((record, camera), want) in cases {
            let vs = evaluate_api(
                &a,
                &pusher,
                &c,
                |s| if s == Scope::Record { record } else { camera },
                &rules,
            );
            let top = most_restrictive(&vs).unwrap();
            assert_eq!(top.outcome, want, "{record:?}/{camera:?}");
        }
        let vs = evaluate_api(&a, &pusher, &c, |_| D, &rules);
        assert_eq!(
            most_restrictive(&vs).unwrap().scope,
            Scope::Record,
            "ties go to catalog order"
        );
        assert_eq!(
            most_restrictive(&vs).unwrap().err_msg,
            "live-pusher:fail auth deny"
        );
    }
}
