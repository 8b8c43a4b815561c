//! The decision state machine: popup answers, settings-page changes and app
//! removal, each planned as a list of [`Change`]s against the current
//! decisions. The store commits a plan atomically; nothing here does I/O.
//!
//! Every plan keeps the invariant "background location GRANTED implies
//! location GRANTED" after each of its changes, in order: grants of location
//! come before grants of background, revocations of background before
//! revocations of location.

use std::collections::BTreeMap;

use super::{
    gates::{self, msg, Outcome, Reason, Verdict},
    rules::Target,
    App, Cause, Change, Decision, DecisionRecords, DecisionState, DomainError, Lifetime, Scope,
    UserDecisions,
};

/// The user's answer to a popup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Allow,
    Deny,
    Cancel,
    /// Background-location popup only: "while using the mini program".
    AllowWhileUsing,
}

/// The settings page's location item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocationOption {
    NotAllowed,
    WhileUsing,
    WhileUsingAndAfterLeaving,
}

/// A planned popup answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerPlan {
    pub changes: Vec<Change>,
    pub err_msg: String,
}

fn state(decisions: &UserDecisions, scope: Scope) -> DecisionState {
    decisions.get(&scope).copied().unwrap_or_default()
}

fn precondition(message: String) -> DomainError {
    DomainError::FailedPrecondition { message }
}

/// Pushes a change for `scope` to `new` unless it is already there.
fn push(
    changes: &mut Vec<Change>,
    decisions: &UserDecisions,
    scope: Scope,
    new: DecisionState,
    cause: Cause,
) {
    let old = state(decisions, scope);
    if old != new {
        changes.push(Change {
            scope,
            old,
            new,
            cause,
        });
    }
}

/// Plans the popup answer for the scope `verdict` is about. `verdict` is
/// what [`super::authorize`] answers this client now: only a popup it could
/// have shown can be answered; a repeated answer that matches the stored
/// decision changes nothing.
/// Whether `answer` is an answer a popup for `scope` can give at all,
/// whatever is stored: ALLOW_WHILE_USING exists only on the background
/// location popup. A malformed answer is INVALID_ARGUMENT before any state
/// is looked at (an embargo, say, is a FAILED_PRECONDITION of well-formed
/// answers only).
pub fn check_answer(scope: Scope, answer: Answer) -> Result<(), DomainError> {
    if answer == Answer::AllowWhileUsing && scope != Scope::UserLocationBackground {
        return Err(DomainError::InvalidArgument {
            field: "answer".into(),
            message: format!(
                "answer ALLOW_WHILE_USING is only valid for {}, not {scope}",
                Scope::UserLocationBackground
            ),
        });
    }
    Ok(())
}

pub fn plan_answer(
    verdict: &Verdict,
    decisions: &UserDecisions,
    answer: Answer,
) -> Result<AnswerPlan, DomainError> {
    let scope = verdict.scope;
    let background = scope == Scope::UserLocationBackground;
    check_answer(scope, answer)?;
    let err = |suffix: &str| gates::err_msg(Target::Authorize, suffix);
    let mut changes = Vec::new();
    let err_msg = match (verdict.outcome, answer) {
        (Outcome::Prompt, Answer::Allow) => {
            if background {
                push(
                    &mut changes,
                    decisions,
                    Scope::UserLocation,
                    DecisionState::Granted,
                    Cause::Popup,
                );
            }
            push(
                &mut changes,
                decisions,
                scope,
                DecisionState::Granted,
                Cause::Popup,
            );
            err(msg::OK)
        }
        (Outcome::Prompt, Answer::AllowWhileUsing) => {
            push(
                &mut changes,
                decisions,
                Scope::UserLocation,
                DecisionState::Granted,
                Cause::Popup,
            );
            err(msg::AUTH_DENY)
        }
        (Outcome::Prompt, Answer::Deny) => {
            push(
                &mut changes,
                decisions,
                scope,
                DecisionState::Denied,
                Cause::Popup,
            );
            err(msg::AUTH_DENY)
        }
        (Outcome::Prompt, Answer::Cancel) => err(msg::AUTH_CANCEL),
        (Outcome::Granted, Answer::Allow) => err(msg::OK),
        (Outcome::Denied, Answer::Deny) => err(msg::AUTH_DENY),
        (_, answer) => return Err(no_popup(verdict, answer)),
    };
    Ok(AnswerPlan { changes, err_msg })
}

fn no_popup(verdict: &Verdict, answer: Answer) -> DomainError {
    let scope = verdict.scope;
    let why = match (verdict.outcome, verdict.reason) {
        (Outcome::Granted, _) => "it is already GRANTED; change it on the settings page".to_owned(),
        (Outcome::Denied, _) => "it is already DENIED; change it on the settings page".to_owned(),
        (
            outcome,
            reason @ (Reason::PrivacyNotDeclared
            | Reason::PrivacyAgreementNeeded
            | Reason::PrivacyDisagreed),
        ) => format!(
            "the privacy gate answers {} ({}), so no popup could have been shown",
            outcome.name(),
            reason.name()
        ),
        (Outcome::Embargoed, _) => format!(
            "the anti-nag policy answers EMBARGOED until {} ms, so no popup could have been shown",
            verdict.embargo_until_ms.unwrap_or_default()
        ),
        (outcome, _) => format!(
            "this client gets outcome {outcome:?} ({:?}{}), so no popup could have been shown",
            verdict.reason,
            verdict
                .rule
                .as_deref()
                .map(|r| format!(", rule {r}"))
                .unwrap_or_default()
        ),
    };
    precondition(format!(
        "cannot record answer {answer:?} for {scope}: {why}"
    ))
}

/// wx.getSetting's authSetting: every decided scope -> granted.
pub fn auth_setting(decisions: &UserDecisions) -> BTreeMap<Scope, bool> {
    decisions
        .iter()
        .filter(|(_, s)| **s != DecisionState::NotDetermined)
        .map(|(scope, s)| (*scope, *s == DecisionState::Granted))
        .collect()
}

/// One item of the settings page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingItem {
    Toggle {
        scope: Scope,
        enabled: bool,
    },
    Location {
        current: LocationOption,
        options: Vec<LocationOption>,
    },
}

fn is_location_item(scope: Scope) -> bool {
    matches!(scope, Scope::UserLocation | Scope::UserLocationBackground)
}

fn location_options(app: &App) -> Vec<LocationOption> {
    let mut options = vec![LocationOption::NotAllowed, LocationOption::WhileUsing];
    if app.declarations.background_location() {
        options.push(LocationOption::WhileUsingAndAfterLeaving);
    }
    options
}

/// The settings page: only asked scopes, in catalog order; location is one
/// three-option item.
pub fn settings_page(app: &App, decisions: &UserDecisions) -> Vec<SettingItem> {
    let mut items = Vec::new();
    let mut location_done = false;
    for (&scope, &s) in decisions {
        if s == DecisionState::NotDetermined {
            continue;
        }
        if is_location_item(scope) {
            if !location_done {
                location_done = true;
                let current = match (
                    state(decisions, Scope::UserLocation),
                    state(decisions, Scope::UserLocationBackground),
                ) {
                    (DecisionState::Granted, DecisionState::Granted) => {
                        LocationOption::WhileUsingAndAfterLeaving
                    }
                    (DecisionState::Granted, _) => LocationOption::WhileUsing,
                    _ => LocationOption::NotAllowed,
                };
                items.push(SettingItem::Location {
                    current,
                    options: location_options(app),
                });
            }
        } else {
            items.push(SettingItem::Toggle {
                scope,
                enabled: s == DecisionState::Granted,
            });
        }
    }
    items
}

/// What the user changed on the settings page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingsUpdate {
    pub toggles: BTreeMap<Scope, bool>,
    pub location: Option<LocationOption>,
}

/// Plans a settings-page change (SPEC section 6).
pub fn plan_settings_update(
    app: &App,
    decisions: &UserDecisions,
    update: &SettingsUpdate,
) -> Result<Vec<Change>, DomainError> {
    let decided = |scope| state(decisions, scope) != DecisionState::NotDetermined;
    let granted = |scope| state(decisions, scope) == DecisionState::Granted;
    let fg = update.toggles.get(&Scope::UserLocation).copied();
    let bg = update.toggles.get(&Scope::UserLocationBackground).copied();
    // Location toggles are the location item in another form.
    let from_toggles = match (fg, bg) {
        (None, None) => None,
        (Some(false), Some(true)) => {
            return Err(DomainError::InvalidArgument {
                field: "auth_setting".into(),
                message: "auth_setting cannot revoke scope.userLocation while granting \
                          scope.userLocationBackground"
                    .into(),
            })
        }
        (_, Some(true)) => Some(LocationOption::WhileUsingAndAfterLeaving),
        (Some(false), _) => Some(LocationOption::NotAllowed),
        (Some(true), Some(false)) => Some(LocationOption::WhileUsing),
        (None, Some(false)) if granted(Scope::UserLocation) => Some(LocationOption::WhileUsing),
        (None, Some(false)) => Some(LocationOption::NotAllowed),
        (Some(true), None) if granted(Scope::UserLocationBackground) => {
            Some(LocationOption::WhileUsingAndAfterLeaving)
        }
        (Some(true), None) => Some(LocationOption::WhileUsing),
    };
    let location = match (update.location, from_toggles) {
        (Some(_), Some(_)) => {
            return Err(DomainError::InvalidArgument {
                field: "location".into(),
                message: "location cannot be set together with scope.userLocation or \
                          scope.userLocationBackground in auth_setting"
                    .into(),
            })
        }
        (explicit, toggles) => explicit.or(toggles),
    };

    let mut changes = Vec::new();
    for (&scope, &enabled) in &update.toggles {
        if is_location_item(scope) {
            continue;
        }
        if !decided(scope) {
            return Err(never_asked(scope));
        }
        let new = if enabled {
            DecisionState::Granted
        } else {
            DecisionState::Denied
        };
        push(&mut changes, decisions, scope, new, Cause::Settings);
    }

    if let Some(option) = location {
        if !decided(Scope::UserLocation) && !decided(Scope::UserLocationBackground) {
            return Err(never_asked(Scope::UserLocation));
        }
        if option == LocationOption::WhileUsingAndAfterLeaving
            && !app.declarations.background_location()
        {
            return Err(precondition(format!(
                "app {} does not declare requiredBackgroundModes \"location\", so the settings \
                 page has no \"while using and after leaving\" option",
                app.id
            )));
        }
        let (fg_new, bg_new) = match option {
            LocationOption::NotAllowed => (DecisionState::Denied, DecisionState::Denied),
            LocationOption::WhileUsing => (DecisionState::Granted, DecisionState::Denied),
            LocationOption::WhileUsingAndAfterLeaving => {
                (DecisionState::Granted, DecisionState::Granted)
            }
        };
        // Grants may create a decision; revocations only touch decided scopes.
        let mut set = |scope, new| {
            if new == DecisionState::Granted || decided(scope) {
                push(&mut changes, decisions, scope, new, Cause::Settings);
            }
        };
        if bg_new == DecisionState::Denied {
            set(Scope::UserLocationBackground, bg_new);
        }
        set(Scope::UserLocation, fg_new);
        if bg_new == DecisionState::Granted {
            set(Scope::UserLocationBackground, bg_new);
        }
    }
    Ok(changes)
}

fn never_asked(scope: Scope) -> DomainError {
    precondition(format!(
        "{scope} was never asked for this user; only asked scopes appear on the settings page"
    ))
}

/// Plans setting one user's decisions to `wanted` (imports). Each wanted
/// state must be GRANTED or DENIED for a scope that takes decisions in this
/// app, and the result must keep background => location. Changes are ordered
/// so that holds after every one: background revocations first, background
/// grants last.
pub fn plan_import(
    app: &App,
    user: &super::UserId,
    before: &UserDecisions,
    wanted: &[(Scope, DecisionState)],
) -> Result<Vec<Change>, DomainError> {
    let invalid = |field: &str, message: String| DomainError::InvalidArgument {
        field: field.into(),
        message,
    };
    let mut after = before.clone();
    for &(scope, new) in wanted {
        if new == DecisionState::NotDetermined {
            return Err(invalid(
                "decision.state",
                format!(
                    "decision.state for {} {user} {scope} must be GRANTED or DENIED",
                    app.id
                ),
            ));
        }
        if scope.availability(app.kind) != super::Availability::Popup {
            return Err(invalid(
                "decision.scope",
                format!(
                    "{scope} takes no decisions for {} like {}",
                    app.kind.name(),
                    app.id
                ),
            ));
        }
        after.insert(scope, new);
    }
    let granted = |s| after.get(&s) == Some(&DecisionState::Granted);
    if granted(Scope::UserLocationBackground) && !granted(Scope::UserLocation) {
        return Err(invalid(
            "decision",
            format!(
                "{} {user}: background location granted without location",
                app.id
            ),
        ));
    }
    let mut changes: Vec<Change> = after
        .iter()
        .filter(|(scope, new)| state(before, **scope) != **new)
        .map(|(&scope, &new)| Change {
            scope,
            old: state(before, scope),
            new,
            cause: Cause::Operator,
        })
        .collect();
    let rank = |c: &Change| match (c.scope, c.new) {
        (Scope::UserLocationBackground, DecisionState::Granted) => 2,
        (Scope::UserLocationBackground, _) => 0,
        _ => 1,
    };
    changes.sort_by_key(rank);
    Ok(changes)
}

/// Plans forgetting every decision (RemoveApp, DeleteApp): background first.
pub fn plan_forget(decisions: &UserDecisions, cause: Cause) -> Vec<Change> {
    let mut changes: Vec<Change> = decisions
        .iter()
        .filter(|(_, s)| **s != DecisionState::NotDetermined)
        .map(|(&scope, &old)| Change {
            scope,
            old,
            new: DecisionState::NotDetermined,
            cause,
        })
        .collect();
    // Catalog order puts userLocation before background: move background first.
    changes.sort_by_key(|c| c.scope != Scope::UserLocationBackground);
    changes
}

/// The states a reader sees at `now_ms`: lapsed grants read as never
/// asked, and background location goes with a lapsed location grant (as
/// its recorded lapse will take it), so readers never see background
/// granted without location.
pub fn effective(records: &DecisionRecords, now_ms: u64) -> UserDecisions {
    let mut live: UserDecisions = records
        .iter()
        .filter_map(|(&scope, d)| {
            let state = d.effective_state(now_ms);
            (state != DecisionState::NotDetermined).then_some((scope, state))
        })
        .collect();
    if location_lapsed(records.get(&Scope::UserLocation), now_ms) {
        live.remove(&Scope::UserLocationBackground);
    }
    live
}

/// Whether a location grant lapsed (recorded or not yet).
pub fn location_lapsed(location: Option<&Decision>, now_ms: u64) -> bool {
    location.is_some_and(|d| d.state == DecisionState::Granted && d.lifetime.lapsed(now_ms))
}

/// Which stored grants lapse now: those whose lifetime ran out by `now_ms`
/// and those `ended` picks (a one-time grant whose session ended). A
/// lapsing `scope.userLocation` takes a granted background location with
/// it, so "background granted implies location granted" holds after every
/// event; background goes first. Each change has cause EXPIRED.
pub fn plan_lapse(
    records: &DecisionRecords,
    now_ms: u64,
    ended: impl Fn(&Lifetime) -> bool,
) -> Vec<Change> {
    let granted = |scope: Scope| {
        records
            .get(&scope)
            .is_some_and(|d| d.state == DecisionState::Granted)
    };
    let mut lapsing: Vec<Scope> = records
        .iter()
        .filter(|(_, d)| {
            d.state == DecisionState::Granted && (d.lifetime.lapsed(now_ms) || ended(&d.lifetime))
        })
        .map(|(&scope, _)| scope)
        .collect();
    if lapsing.contains(&Scope::UserLocation)
        && granted(Scope::UserLocationBackground)
        && !lapsing.contains(&Scope::UserLocationBackground)
    {
        lapsing.push(Scope::UserLocationBackground);
    }
    lapsing.sort_by_key(|s| (*s != Scope::UserLocationBackground, *s));
    lapsing
        .into_iter()
        .map(|scope| Change {
            scope,
            old: DecisionState::Granted,
            new: DecisionState::NotDetermined,
            cause: Cause::Expired,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        authorize::{authorize, Policy, Question, SubjectState},
        AppId, AppKind, Client, Declarations, Platform, RawDeclarations, RuleSet,
    };
    use DecisionState::{Denied as D, Granted as G, NotDetermined as N};

    /// A popup answer planned from the verdict the pipeline gives now.
    fn plan(
        app: &App,
        decisions: &UserDecisions,
        scope: Scope,
        client: &Client,
        rules: &RuleSet,
        answer: Answer,
    ) -> Result<AnswerPlan, DomainError> {
        let state = SubjectState {
            records: decisions
                .iter()
                .map(|(&s, &state)| {
                    let d = Decision {
                        state,
                        cause: Cause::Popup,
                        updated_at_ms: 0,
                        revision: 1,
                        lifetime: Lifetime::Permanent,
                    };
                    (s, d)
                })
                .collect(),
            ..SubjectState::default()
        };
        let policy = Policy {
            nag: None,
            privacy_gap_ms: 0,
        };
        let q = Question {
            app,
            state: &state,
            target: Target::Authorize,
            client,
            rules,
            policy: &policy,
            now_ms: 0,
        };
        plan_answer(&authorize(&q, scope), decisions, answer)
    }
    use Scope::{Camera, UserLocation as Fg, UserLocationBackground as Bg};

    fn app(background: bool) -> App {
        let raw = RawDeclarations {
            privacy: None,
            permission: vec![("scope.userLocation".into(), "nearby".into())],
            background_modes: if background {
                vec!["location".into()]
            } else {
                vec![]
            },
            private_infos: vec![],
        };
        App {
            privacy_version: 0,
            id: AppId::parse("wxapp").unwrap(),
            kind: AppKind::MiniProgram,
            declarations: Declarations::parse(AppKind::MiniProgram, raw).unwrap(),
            revision: 1,
            updated_at_ms: 0,
        }
    }

    /// Decisions written as a table row.
    type States<'a> = &'a [(Scope, DecisionState)];

    fn decisions(entries: States<'_>) -> UserDecisions {
        entries.iter().copied().collect()
    }

    fn apply(d: &UserDecisions, changes: &[Change]) -> UserDecisions {
        let mut out = d.clone();
        for c in changes {
            assert_eq!(
                state(&out, c.scope),
                c.old,
                "change {c:?} starts from the current state"
            );
            if c.new == N {
                out.remove(&c.scope);
            } else {
                out.insert(c.scope, c.new);
            }
            assert!(
                state(&out, Bg) != G || state(&out, Fg) == G,
                "invariant broken after {c:?}"
            );
        }
        out
    }

    fn new_client() -> Client {
        Client {
            platform: Platform::Ios,
            host_version: "8.0.1".parse().unwrap(),
            sdk_version: "3.0".parse().unwrap(),
        }
    }

    #[test]
    fn popup_answers() {
        #[rustfmt::skip]
        type Want<'a> = Result<(States<'a>, &'a str), &'a str>;
        let cases: Vec<(Scope, States, Answer, Want)> = vec![
            (
                Camera,
                &[],
                Answer::Allow,
                Ok((&[(Camera, G)], "authorize:ok")),
            ),
            (
                Camera,
                &[],
                Answer::Deny,
                Ok((&[(Camera, D)], "authorize:fail auth deny")),
            ),
            (
                Camera,
                &[],
                Answer::Cancel,
                Ok((&[], "authorize:fail auth cancel")),
            ),
            (
                Camera,
                &[(Camera, G)],
                Answer::Allow,
                Ok((&[(Camera, G)], "authorize:ok")),
            ),
            (
                Camera,
                &[(Camera, D)],
                Answer::Deny,
                Ok((&[(Camera, D)], "authorize:fail auth deny")),
            ),
            (Camera, &[(Camera, D)], Answer::Allow, Err("already DENIED")),
            (
                Camera,
                &[(Camera, G)],
                Answer::Cancel,
                Err("already GRANTED"),
            ),
            (
                Camera,
                &[],
                Answer::AllowWhileUsing,
                Err("only valid for scope.userLocationBackground"),
            ),
            (
                Bg,
                &[],
                Answer::Allow,
                Ok((&[(Fg, G), (Bg, G)], "authorize:ok")),
            ),
            (
                Bg,
                &[(Fg, D)],
                Answer::Allow,
                Ok((&[(Fg, G), (Bg, G)], "authorize:ok")),
            ),
            (
                Bg,
                &[],
                Answer::AllowWhileUsing,
                Ok((&[(Fg, G)], "authorize:fail auth deny")),
            ),
            (
                Bg,
                &[],
                Answer::Deny,
                Ok((&[(Bg, D)], "authorize:fail auth deny")),
            ),
            (Scope::Address, &[], Answer::Allow, Err("NoAuthNeeded")),
        ];
        for (i, (scope, before, answer, want)) in cases.into_iter().enumerate() {
            let before = decisions(before);
            let got = plan(
                &app(true),
                &before,
                scope,
                &new_client(),
                &RuleSet::default(),
                answer,
            );
            match (got, want) {
                (Ok(plan), Ok((after, err))) => {
                    assert_eq!(apply(&before, &plan.changes), decisions(after), "case {i}");
                    assert_eq!(plan.err_msg, err, "case {i}");
                    assert!(plan.changes.iter().all(|c| c.cause == Cause::Popup));
                }
                (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "case {i}: {e}"),
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn background_popup_needs_a_new_enough_client() {
        let old = Client {
            host_version: "7.9.99".parse().unwrap(),
            ..new_client()
        };
        let err = plan(
            &app(true),
            &decisions(&[]),
            Bg,
            &old,
            &RuleSet::default(),
            Answer::Allow,
        )
        .unwrap_err();
        assert!(
            matches!(err, DomainError::FailedPrecondition { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("background-location-popup"),
            "{err}"
        );
    }

    #[test]
    fn settings_updates_keep_the_location_invariant() {
        use LocationOption::*;
        let loc = |o| SettingsUpdate {
            location: Some(o),
            ..Default::default()
        };
        let tog = |entries: &[(Scope, bool)]| SettingsUpdate {
            toggles: entries.iter().copied().collect(),
            location: None,
        };
        #[rustfmt::skip]
        let cases: Vec<(bool, States, SettingsUpdate, Result<States, &str>)> = vec![
            (true, &[(Fg, G)], loc(WhileUsingAndAfterLeaving), Ok(&[(Fg, G), (Bg, G)])),
            (false, &[(Fg, G)], loc(WhileUsingAndAfterLeaving), Err("does not declare requiredBackgroundModes")),
            (true, &[(Fg, G), (Bg, G)], loc(WhileUsing), Ok(&[(Fg, G), (Bg, D)])),
            (true, &[(Fg, G), (Bg, G)], loc(NotAllowed), Ok(&[(Fg, D), (Bg, D)])),
            (true, &[(Fg, G)], loc(NotAllowed), Ok(&[(Fg, D)])),
            (true, &[(Fg, D)], loc(WhileUsing), Ok(&[(Fg, G)])),
            (true, &[(Bg, D)], loc(NotAllowed), Ok(&[(Bg, D)])),
            (true, &[], loc(WhileUsing), Err("scope.userLocation was never asked")),
            (true, &[(Fg, G), (Bg, G)], tog(&[(Fg, false)]), Ok(&[(Fg, D), (Bg, D)])),
            (true, &[(Fg, D), (Bg, D)], tog(&[(Bg, true)]), Ok(&[(Fg, G), (Bg, G)])),
            (true, &[(Fg, G), (Bg, G)], tog(&[(Bg, false)]), Ok(&[(Fg, G), (Bg, D)])),
            (true, &[(Fg, G)], tog(&[(Fg, true)]), Ok(&[(Fg, G)])),
            (true, &[(Fg, G)], tog(&[(Fg, false), (Bg, true)]), Err("cannot revoke")),
            (true, &[(Fg, G)], SettingsUpdate { toggles: [(Fg, true)].into(), location: Some(NotAllowed) }, Err("cannot be set together")),
            (true, &[(Camera, D)], tog(&[(Camera, true)]), Ok(&[(Camera, G)])),
            (true, &[(Camera, G)], tog(&[(Camera, false)]), Ok(&[(Camera, D)])),
            (true, &[], tog(&[(Camera, true)]), Err("scope.camera was never asked")),
        ];
        for (i, (background, before, update, want)) in cases.into_iter().enumerate() {
            let before = decisions(before);
            match (
                plan_settings_update(&app(background), &before, &update),
                want,
            ) {
                (Ok(changes), Ok(after)) => {
                    assert_eq!(apply(&before, &changes), decisions(after), "case {i}");
                    assert!(changes
                        .iter()
                        .all(|c| c.cause == Cause::Settings && c.old != c.new));
                }
                (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "case {i}: {e}"),
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn settings_page_lists_asked_scopes_with_one_location_item() {
        let page = settings_page(&app(true), &decisions(&[(Fg, G), (Bg, D), (Camera, D)]));
        assert_eq!(
            page,
            vec![
                SettingItem::Location {
                    current: LocationOption::WhileUsing,
                    options: vec![
                        LocationOption::NotAllowed,
                        LocationOption::WhileUsing,
                        LocationOption::WhileUsingAndAfterLeaving
                    ],
                },
                SettingItem::Toggle {
                    scope: Camera,
                    enabled: false
                },
            ]
        );
        let page = settings_page(&app(false), &decisions(&[(Bg, D)]));
        assert_eq!(
            page,
            vec![SettingItem::Location {
                current: LocationOption::NotAllowed,
                options: vec![LocationOption::NotAllowed, LocationOption::WhileUsing]
            }]
        );
        assert!(settings_page(&app(true), &decisions(&[])).is_empty());
    }

    #[test]
    fn imports_change_only_what_differs_and_keep_the_invariant() {
        let user = crate::domain::UserId::parse("u").unwrap();
        let before = decisions(&[(Fg, G), (Bg, G), (Camera, D)]);
        let changes =
            plan_import(&app(true), &user, &before, &[(Fg, D), (Bg, D), (Camera, D)]).unwrap();
        assert_eq!(
            apply(&before, &changes),
            decisions(&[(Fg, D), (Bg, D), (Camera, D)])
        );
        assert_eq!(changes[0].scope, Bg, "background revoked first");
        assert!(changes.iter().all(|c| c.cause == Cause::Operator));
        let grant = plan_import(&app(true), &user, &decisions(&[]), &[(Bg, G), (Fg, G)]).unwrap();
        assert_eq!(grant.last().unwrap().scope, Bg, "background granted last");
        for (wanted, needle) in [
            (vec![(Bg, G), (Fg, D)], "without location"),
            (vec![(Camera, N)], "must be GRANTED or DENIED"),
            (vec![(Scope::Address, G)], "takes no decisions"),
        ] {
            let err = plan_import(&app(true), &user, &before, &wanted)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn forgetting_revokes_background_first() {
        let before = decisions(&[(Fg, G), (Bg, G), (Camera, D)]);
        let changes = plan_forget(&before, Cause::AppRemoved);
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[0].scope, Bg);
        assert!(apply(&before, &changes).is_empty());
        assert_eq!(
            auth_setting(&before),
            [(Fg, true), (Bg, true), (Camera, false)].into()
        );
    }
}

#[cfg(test)]
mod lapse_tests {
    use super::*;
    use crate::domain::{Decision, SessionId};

    fn record(state: DecisionState, lifetime: Lifetime) -> Decision {
        Decision {
            state,
            cause: Cause::Popup,
            updated_at_ms: 0,
            revision: 1,
            lifetime,
        }
    }

    fn until(ms: u64) -> Lifetime {
        Lifetime::Until { expires_at_ms: ms }
    }

    #[test]
    fn lapses_what_ran_out_and_what_the_session_ended() {
        let session = SessionId::parse("s1").unwrap();
        let records: DecisionRecords = [
            (Scope::Camera, record(DecisionState::Granted, until(100))),
            (Scope::Record, record(DecisionState::Granted, until(200))),
            (
                Scope::WritePhotosAlbum,
                record(DecisionState::Granted, Lifetime::Permanent),
            ),
            (
                Scope::Bluetooth,
                record(
                    DecisionState::Granted,
                    Lifetime::Session {
                        session: session.clone(),
                        expires_at_ms: 10_000,
                    },
                ),
            ),
            // A denial never lapses, whatever its record says.
            (
                Scope::AddPhoneContact,
                record(DecisionState::Denied, until(1)),
            ),
        ]
        .into();
        let scopes = |changes: Vec<Change>| changes.iter().map(|c| c.scope).collect::<Vec<_>>();
        assert_eq!(scopes(plan_lapse(&records, 99, |_| false)), []);
        assert_eq!(
            scopes(plan_lapse(&records, 100, |_| false)),
            [Scope::Camera]
        );
        let ended =
            |l: &Lifetime| matches!(l, Lifetime::Session { session: s, .. } if s.as_str() == "s1");
        let all = plan_lapse(&records, 200, ended);
        let mut got = scopes(all.clone());
        got.sort();
        let mut want = vec![Scope::Camera, Scope::Record, Scope::Bluetooth];
        want.sort();
        assert_eq!(got, want);
        assert!(all.iter().all(|c| c.cause == Cause::Expired
            && c.old == DecisionState::Granted
            && c.new == DecisionState::NotDetermined));
    }

    #[test]
    fn a_lapsing_location_takes_background_location_first() {
        let records: DecisionRecords = [
            (
                Scope::UserLocation,
                record(DecisionState::Granted, until(50)),
            ),
            (
                Scope::UserLocationBackground,
                record(DecisionState::Granted, Lifetime::Permanent),
            ),
        ]
        .into();
        let changes = plan_lapse(&records, 60, |_| false);
        assert_eq!(
            changes.iter().map(|c| c.scope).collect::<Vec<_>>(),
            [Scope::UserLocationBackground, Scope::UserLocation]
        );
        // Background alone may lapse and leave location granted.
        let records: DecisionRecords = [
            (
                Scope::UserLocation,
                record(DecisionState::Granted, Lifetime::Permanent),
            ),
            (
                Scope::UserLocationBackground,
                record(DecisionState::Granted, until(50)),
            ),
        ]
        .into();
        assert_eq!(
            plan_lapse(&records, 60, |_| false)
                .iter()
                .map(|c| c.scope)
                .collect::<Vec<_>>(),
            [Scope::UserLocationBackground]
        );
    }
}
