use proptest::prelude::*;

use super::*;
use crate::domain::{
    AppId, AppKind, Cause, Decision, Declarations, InfoType, Platform, RawDeclarations, SessionId,
    CATALOG,
};

fn app(kind: AppKind, raw: RawDeclarations, privacy_version: u64) -> App {
    App {
        id: AppId::parse("wxprop").unwrap(),
        kind,
        declarations: Declarations::parse(kind, raw).unwrap(),
        revision: 1,
        updated_at_ms: 0,
        privacy_version,
    }
}

fn client(platform: Platform, host: &str, sdk: &str) -> Client {
    Client {
        platform,
        host_version: host.parse().unwrap(),
        sdk_version: sdk.parse().unwrap(),
    }
}

fn decision(state: DecisionState, lifetime: Lifetime) -> Decision {
    Decision {
        state,
        cause: Cause::Popup,
        updated_at_ms: 0,
        revision: 1,
        lifetime,
    }
}

/// The bug this module's single path fixed: with `max_cancels = 1`, after
/// one CANCEL Authorize answered EMBARGOED while Explain answered PROMPT.
#[test]
fn explain_sees_the_embargo_authorize_sees() {
    let app = app(
        AppKind::MiniProgram,
        RawDeclarations {
            permission: vec![("scope.userLocation".into(), "nearby".into())],
            ..RawDeclarations::default()
        },
        0,
    );
    let state = SubjectState {
        nag: [(
            Scope::UserLocation,
            NagState {
                cancels: 0,
                embargo_until_ms: 5_000,
            },
        )]
        .into(),
        ..SubjectState::default()
    };
    let policy = Policy {
        nag: Some(NagPolicy {
            max_cancels: 1,
            embargo_ms: 5_000,
        }),
        privacy_gap_ms: 10_000,
    };
    let client = client(Platform::Android, "8.0.50", "3.0.0");
    let rules = RuleSet::default();
    let q = Question {
        app: &app,
        state: &state,
        target: Target::Authorize,
        client: &client,
        rules: &rules,
        policy: &policy,
        now_ms: 1_000,
    };
    let verdict = authorize(&q, Scope::UserLocation);
    assert_eq!(verdict.outcome, Outcome::Embargoed);
    assert_eq!(verdict.reason, Reason::PromptEmbargoed);
    assert_eq!(verdict.embargo_until_ms, Some(5_000));
    let (explained, steps) = explain(&q, Scope::UserLocation);
    assert_eq!(explained, verdict);
    let last = steps.last().unwrap();
    assert!(!last.passed && last.check.contains("anti-nag"), "{last:?}");
    // Once the embargo is over, both prompt again.
    let later = Question { now_ms: 5_000, ..q };
    assert_eq!(
        authorize(&later, Scope::UserLocation).outcome,
        Outcome::Prompt
    );
    assert_eq!(
        explain(&later, Scope::UserLocation).0.outcome,
        Outcome::Prompt
    );
}

#[test]
fn background_goes_with_a_lapsed_location_grant() {
    let app = app(
        AppKind::MiniProgram,
        RawDeclarations {
            permission: vec![("scope.userLocation".into(), "nearby".into())],
            background_modes: vec!["location".into()],
            ..RawDeclarations::default()
        },
        0,
    );
    let state = SubjectState {
        records: [
            (
                Scope::UserLocation,
                decision(
                    DecisionState::Granted,
                    Lifetime::Until { expires_at_ms: 100 },
                ),
            ),
            (
                Scope::UserLocationBackground,
                decision(DecisionState::Granted, Lifetime::Permanent),
            ),
        ]
        .into(),
        ..SubjectState::default()
    };
    assert_eq!(
        state.live(Scope::UserLocationBackground, 99),
        (DecisionState::Granted, Lifetime::Permanent)
    );
    assert_eq!(
        state.live(Scope::UserLocationBackground, 100),
        (DecisionState::NotDetermined, Lifetime::Permanent)
    );
    let policy = Policy {
        nag: None,
        privacy_gap_ms: 0,
    };
    let q = StateQuery::for_verdicts(&app, &[Scope::UserLocationBackground], &policy);
    assert_eq!(
        q.scopes,
        Some(vec![Scope::UserLocation, Scope::UserLocationBackground]),
        "background location reads location too"
    );
    assert!(!q.privacy && !q.nag);
}

const HOSTS: [&str; 6] = ["7.0.0", "7.9.99", "8.0.0", "8.0.1", "9.1", "6.5.3"];
const SDKS: [&str; 5] = ["1.0.0", "2.10.0", "2.25.3", "3.0.0", "2.4.0"];
const INTERFACES: [&str; 6] = [
    "wx.getLocation",
    "wx.startLocationUpdateBackground",
    "camera",
    "live-pusher",
    "wx.chooseAddress",
    "wx.getWeRunData",
];

fn arb_app() -> impl Strategy<Value = App> {
    (
        prop::bool::ANY,
        prop::collection::vec(prop::bool::ANY, 4),
        prop::option::of(prop::collection::btree_set(0..InfoType::ALL.len(), 0..5)),
        0u64..3,
    )
        .prop_filter_map(
            "declarations this kind accepts",
            |(game, flags, guide, version)| {
                let kind = if game {
                    AppKind::MiniGame
                } else {
                    AppKind::MiniProgram
                };
                let mut raw = RawDeclarations::default();
                if flags[0] {
                    raw.permission
                        .push(("scope.userLocation".into(), "nearby shops".into()));
                }
                if flags[1] {
                    raw.background_modes.push("location".into());
                }
                if flags[2] {
                    raw.private_infos.push("getLocation".into());
                }
                if flags[3] {
                    raw.private_infos.push("chooseAddress".into());
                }
                raw.privacy = guide.map(|types| {
                    (
                        "Guide".to_owned(),
                        types
                            .into_iter()
                            .map(|i| InfoType::ALL[i].name().to_owned())
                            .collect(),
                    )
                });
                let privacy_version = if raw.privacy.is_some() {
                    version + 1
                } else {
                    0
                };
                Some(App {
                    id: AppId::parse("wxprop").unwrap(),
                    kind,
                    declarations: Declarations::parse(kind, raw).ok()?,
                    revision: 1,
                    updated_at_ms: 0,
                    privacy_version,
                })
            },
        )
}

fn arb_lifetime() -> impl Strategy<Value = Lifetime> {
    prop_oneof![
        Just(Lifetime::Permanent),
        (0u64..2_000).prop_map(|expires_at_ms| Lifetime::Until { expires_at_ms }),
        (0u64..2_000).prop_map(|expires_at_ms| Lifetime::Session {
            session: SessionId::parse("s1").unwrap(),
            expires_at_ms,
        }),
    ]
}

fn arb_state() -> impl Strategy<Value = SubjectState> {
    let record = (
        prop_oneof![Just(DecisionState::Granted), Just(DecisionState::Denied)],
        arb_lifetime(),
    )
        .prop_map(|(state, lifetime)| {
            let lifetime = if state == DecisionState::Granted {
                lifetime
            } else {
                Lifetime::Permanent
            };
            decision(state, lifetime)
        });
    let privacy = prop::option::of((prop::bool::ANY, 0u64..4, 0u64..2_000)).prop_map(|p| {
        p.map(|(agreed, version, at_ms)| PrivacyState {
            agreed,
            version,
            at_ms,
        })
    });
    let nag = (0u32..3, 0u64..2_000).prop_map(|(cancels, embargo_until_ms)| NagState {
        cancels,
        embargo_until_ms,
    });
    (
        prop::collection::btree_map(0..CATALOG.len(), record, 0..6),
        privacy,
        prop::collection::btree_map(0..CATALOG.len(), nag, 0..4),
    )
        .prop_map(|(records, privacy, nag)| SubjectState {
            records: records
                .into_iter()
                .map(|(i, d)| (CATALOG[i].scope, d))
                .collect(),
            privacy,
            nag: nag
                .into_iter()
                .map(|(i, n)| (CATALOG[i].scope, n))
                .collect(),
        })
}

fn arb_client() -> impl Strategy<Value = Client> {
    (0..Platform::ALL.len(), 0..HOSTS.len(), 0..SDKS.len())
        .prop_map(|(p, h, s)| client(Platform::ALL[p], HOSTS[h], SDKS[s]))
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    (prop::option::of((1u32..4, 1u64..2_000)), 0u64..2_000).prop_map(|(nag, privacy_gap_ms)| {
        Policy {
            nag: nag.map(|(max_cancels, embargo_ms)| NagPolicy {
                max_cancels,
                embargo_ms,
            }),
            privacy_gap_ms,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Explain is Authorize with a recorder: the same verdict for every
    /// state, client and policy, and its last step is the one that decided.
    /// CheckApi's verdicts are Authorize's for the interface as target.
    #[test]
    fn explain_and_check_api_agree_with_authorize(
        app in arb_app(),
        state in arb_state(),
        client in arb_client(),
        policy in arb_policy(),
        scope in 0..CATALOG.len(),
        interface in 0..INTERFACES.len(),
        now_ms in 0u64..2_500,
    ) {
        let rules = RuleSet::default();
        let q = Question {
            app: &app,
            state: &state,
            target: Target::Authorize,
            client: &client,
            rules: &rules,
            policy: &policy,
            now_ms,
        };
        let scope = CATALOG[scope].scope;
        let verdict = authorize(&q, scope);
        let (explained, steps) = explain(&q, scope);
        prop_assert_eq!(&explained, &verdict);
        // Only a prompt gets past every check.
        let last = steps.last().expect("at least one check");
        prop_assert_eq!(last.passed, verdict.outcome == Outcome::Prompt, "{:?}", steps);

        let api = Api::parse_field("api", INTERFACES[interface]).unwrap();
        let checked = check_api(&q, api.clone()).expect("every interface has scopes");
        let target = Question { target: Target::Api(&api), ..q };
        for (&s, v) in api.scopes().iter().zip(&checked.verdicts) {
            prop_assert_eq!(v, &authorize(&target, s));
            prop_assert_eq!(v, &explain(&target, s).0);
        }
        let decisive = gates::most_restrictive(&checked.verdicts).unwrap();
        prop_assert_eq!(checked.outcome, decisive.outcome);
    }
}
