//! Model-based test: a reference model of the decision semantics, written
//! from SPEC.md (gates, platform-version rules, popup answers, settings,
//! removal) and the README (timed and one-time grants), independently of
//! `consentd::domain`. Random operation sequences run against the model and
//! the real daemon (over gRPC), across daemon restarts; every step's answer
//! is compared in full (outcome, reason, state, lifetime, errMsg, the
//! changes a write made with their causes, the new authSetting), then every
//! user's settings; and after each sequence the Watch log from its first
//! revision must be exactly the changes the calls returned.
//!
//! Two apps per sequence (a mini program declaring location, and a mini
//! game declaring nothing), two users, eight scopes, six platforms with old
//! and new host and base-library versions. Not covered: the privacy gate
//! and anti-nag (the apps declare no privacy guide; anti-nag is off), and
//! lapses by time (grants are permanent, timed an hour ahead, or one-time
//! until their session ends).
//!
//! `CONSENTD_MODEL_CASES` sets the number of sequences (default 32).

use std::{cell::RefCell, collections::BTreeMap};

use consentd::pb::{
    self, grant_lifetime, watch_response::Kind, Answer, AppKind, Cause, DecisionState,
    LocationOption, Outcome, Platform, Reason,
};
use proptest::{prelude::*, test_runner::TestRunner};
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::{
    fixture::{bare_app, client_info, location_app, Client, TestDaemon},
    support::{key_of_change, key_of_event, EventKey},
};

const FG: &str = "scope.userLocation";
const BG: &str = "scope.userLocationBackground";
const FUZZY: &str = "scope.userFuzzyLocation";
const CAMERA: &str = "scope.camera";
const RECORD: &str = "scope.record";
const ADDRESS: &str = "scope.address";
const USER_INFO: &str = "scope.userInfo";
const FRIENDS: &str = "scope.WxFriendInteraction";
const SCOPES: [&str; 8] = [FG, BG, FUZZY, CAMERA, RECORD, ADDRESS, USER_INFO, FRIENDS];
const USERS: [&str; 2] = ["alice", "bob"];
/// App 0: a mini program declaring location (desc, background mode, and
/// the private infos getLocation, startLocationUpdate,
/// startLocationUpdateBackground). App 1: a mini game declaring nothing.
const KINDS: [AppKind; 2] = [AppKind::MiniProgram, AppKind::MiniGame];
const SESSIONS: [&str; 2] = ["s1", "s2"];

/// Interfaces for CheckApi: (name, scope, private-info name if a location interface).
const APIS: [(&str, &str, Option<&str>); 7] = [
    ("wx.getLocation", FG, Some("getLocation")),
    (
        "wx.startLocationUpdateBackground",
        BG,
        Some("startLocationUpdateBackground"),
    ),
    ("wx.getFuzzyLocation", FUZZY, Some("getFuzzyLocation")),
    ("camera", CAMERA, None),
    ("wx.startRecord", RECORD, None),
    ("wx.chooseAddress", ADDRESS, Some("chooseAddress")),
    ("wx.getUserInfo", USER_INFO, None),
];

#[derive(Clone, Copy, Debug)]
struct Cl {
    platform: Platform,
    host: &'static str,
    sdk: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Life {
    Permanent,
    /// An hour from the call: never lapses within a test.
    Hour,
    Session(usize),
}

#[derive(Clone, Debug)]
enum Op {
    Authorize {
        app: usize,
        user: usize,
        scope: usize,
        client: Cl,
    },
    CheckApi {
        app: usize,
        user: usize,
        api: usize,
        client: Cl,
    },
    Record {
        app: usize,
        user: usize,
        scope: usize,
        answer: Answer,
        client: Cl,
        life: Life,
    },
    Toggle {
        app: usize,
        user: usize,
        scope: usize,
        on: bool,
    },
    Location {
        user: usize,
        option: LocationOption,
    },
    EndSession {
        app: usize,
        user: usize,
        session: usize,
    },
    Remove {
        app: usize,
        user: usize,
    },
    Restart,
}

fn client_strategy() -> impl Strategy<Value = Cl> {
    let platform = prop_oneof![
        Just(Platform::Ios),
        Just(Platform::Android),
        Just(Platform::Ohos),
        Just(Platform::Windows),
        Just(Platform::Mac),
        Just(Platform::Devtools)
    ];
    let any_client = (
        platform,
        prop_oneof![Just("7.0.20"), Just("8.0.0"), Just("8.0.5")],
        prop_oneof![Just("1.1.0"), Just("2.7.9"), Just("2.8.0"), Just("3.0.0")],
    )
        .prop_map(|(platform, host, sdk)| Cl {
            platform,
            host,
            sdk,
        });
    let modern =
        prop_oneof![Just(Platform::Ios), Just(Platform::Android)].prop_map(|platform| Cl {
            platform,
            host: "8.0.5",
            sdk: "3.0.0",
        });
    prop_oneof![4 => modern, 1 => any_client]
}

fn op() -> impl Strategy<Value = Op> {
    // Weighted towards what can be decided: the mini program, popup scopes,
    // clients that can show the popup, ALLOW answers.
    let app = prop_oneof![3 => Just(0usize), 1 => Just(1usize)];
    let user = 0..USERS.len();
    let scope = prop_oneof![
        3 => Just(0usize), 3 => Just(1), 1 => Just(2), 3 => Just(3),
        2 => Just(4), 1 => Just(5), 1 => Just(6), 1 => Just(7)
    ];
    let answer = prop_oneof![
        4 => Just(Answer::Allow),
        2 => Just(Answer::Deny),
        1 => Just(Answer::Cancel),
        1 => Just(Answer::AllowWhileUsing)
    ];
    let life = prop_oneof![
        3 => Just(Life::Permanent),
        1 => Just(Life::Hour),
        2 => (0..SESSIONS.len()).prop_map(Life::Session)
    ];
    let option = prop_oneof![
        Just(LocationOption::NotAllowed),
        Just(LocationOption::WhileUsing),
        Just(LocationOption::WhileUsingAndAfterLeaving)
    ];
    prop_oneof![
        3 => (app.clone(), user.clone(), scope.clone(), client_strategy())
            .prop_map(|(app, user, scope, client)| Op::Authorize { app, user, scope, client }),
        2 => (app.clone(), user.clone(), 0..APIS.len(), client_strategy())
            .prop_map(|(app, user, api, client)| Op::CheckApi { app, user, api, client }),
        8 => (app.clone(), user.clone(), scope.clone(), answer, client_strategy(), life, prop::bool::weighted(0.75))
            .prop_map(|(app, user, scope, answer, client, life, bg)| {
                // "While using" is the background popup's answer: mostly asked there.
                let scope = if answer == Answer::AllowWhileUsing && bg { 1 } else { scope };
                // Lifetimes are for ALLOW answers only.
                let life = if answer == Answer::Allow { life } else { Life::Permanent };
                Op::Record { app, user, scope, answer, client, life }
            }),
        2 => (app.clone(), user.clone(), scope, any::<bool>())
            .prop_map(|(app, user, scope, on)| Op::Toggle { app, user, scope, on }),
        2 => (user.clone(), option).prop_map(|(user, option)| Op::Location { user, option }),
        2 => (app.clone(), user.clone(), 0..SESSIONS.len())
            .prop_map(|(app, user, session)| Op::EndSession { app, user, session }),
        1 => (app, user).prop_map(|(app, user)| Op::Remove { app, user }),
        1 => Just(Op::Restart),
    ]
}

/// A decided scope: granted or denied, and how long a grant lasts.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Decided {
    granted: bool,
    life: Life,
}

/// One change as a write returns it (and as Watch shows it).
type Change = (
    usize,
    usize,
    &'static str,
    DecisionState,
    DecisionState,
    Cause,
);

/// The reference model.
#[derive(Default, Debug)]
struct Model {
    decided: BTreeMap<(usize, usize, &'static str), Decided>,
}

/// Whether `scope` exists for the kind (SPEC section 3), and how it behaves.
#[derive(PartialEq)]
enum Avail {
    Unsupported,
    Popup,
    Abolished,
    Anonymous,
}

fn availability(kind: AppKind, scope: &str) -> Avail {
    let mp = kind == AppKind::MiniProgram;
    match scope {
        BG if !mp => Avail::Unsupported,
        ADDRESS if !mp => Avail::Unsupported,
        ADDRESS => Avail::Abolished,
        USER_INFO if mp => Avail::Anonymous,
        FRIENDS if mp => Avail::Unsupported,
        _ => Avail::Popup,
    }
}

fn version(v: &str) -> Vec<u32> {
    v.split('.').map(|s| s.parse().unwrap()).collect()
}

/// `a < b`, numerically segment by segment, the shorter padded with zeros.
fn older(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (version(a), version(b));
    let n = a.len().max(b.len());
    a.resize(n, 0);
    b.resize(n, 0);
    a < b
}

/// What Authorize (api = None) or CheckApi answers for one scope.
#[derive(Debug, PartialEq)]
struct Verdict {
    outcome: Outcome,
    reason: Reason,
    state: DecisionState,
    err_msg: String,
    session: String,
    expires: bool,
}

impl Model {
    fn get(&self, app: usize, user: usize, scope: &'static str) -> Option<Decided> {
        self.decided.get(&(app, user, scope)).copied()
    }

    fn state(&self, app: usize, user: usize, scope: &'static str) -> DecisionState {
        match self.get(app, user, scope) {
            Some(d) if d.granted => DecisionState::Granted,
            Some(_) => DecisionState::Denied,
            None => DecisionState::NotDetermined,
        }
    }

    /// SPEC section 4's gates, in order; `api` is CheckApi's interface.
    fn verdict(
        &self,
        app: usize,
        user: usize,
        scope: &'static str,
        client: Cl,
        api: Option<(&str, Option<&str>)>,
    ) -> Verdict {
        let kind = KINDS[app];
        let state = self.state(app, user, scope);
        let prefix = match api {
            None => "authorize".to_string(),
            // "wx.getLocation" -> "getLocation"; components keep their tag.
            Some((name, _)) => name.trim_start_matches("wx.").to_string(),
        };
        let verdict = |outcome, reason, suffix: &str| Verdict {
            outcome,
            reason,
            state,
            err_msg: if suffix.is_empty() {
                String::new()
            } else {
                format!("{prefix}:{suffix}")
            },
            session: String::new(),
            expires: false,
        };
        let avail = availability(kind, scope);
        // Gate 1: exists for the kind; base-library minimums (wx.authorize
        // 1.2.0 for Authorize only; background location 2.8.0;
        // getFuzzyLocation 2.25.0).
        if avail == Avail::Unsupported {
            return verdict(
                Outcome::Unsupported,
                Reason::ScopeNotForAppKind,
                "fail not supported",
            );
        }
        let too_old = (api.is_none() && older(client.sdk, "1.2.0"))
            || (scope == BG && older(client.sdk, "2.8.0"))
            || (scope == FUZZY && older(client.sdk, "2.25.0"));
        if too_old {
            return verdict(
                Outcome::Unsupported,
                Reason::BaseLibraryTooOld,
                "fail not supported",
            );
        }
        // Gate 2.
        match avail {
            Avail::Abolished => {
                return verdict(Outcome::NoAuthNeeded, Reason::AuthorizationAbolished, "ok")
            }
            Avail::Anonymous => {
                return verdict(Outcome::NoAuthNeeded, Reason::AnonymousProfile, "ok")
            }
            _ => {}
        }
        // Gate 3: only the mini program declares anything: a desc for
        // userLocation (which background location uses too), the
        // background mode, and three private infos.
        let mp = kind == AppKind::MiniProgram;
        if matches!(scope, FG | BG | FUZZY) && !(mp && scope != FUZZY) {
            return verdict(
                Outcome::NotDeclared,
                Reason::MissingPermissionDesc,
                "fail:require permission desc",
            );
        }
        if let Some((_, Some(info))) = api {
            let declared = mp
                && [
                    "getLocation",
                    "startLocationUpdate",
                    "startLocationUpdateBackground",
                ]
                .contains(&info);
            if !declared {
                return verdict(
                    Outcome::NotDeclared,
                    Reason::MissingPrivateInfo,
                    "fail the api need to be declared in the requiredPrivateInfos field in app.json/ext.json",
                );
            }
        }
        // Gate 4: the stored decision.
        match self.get(app, user, scope) {
            Some(d) if d.granted => {
                let mut v = verdict(Outcome::Granted, Reason::StoredGrant, "ok");
                v.expires = d.life != Life::Permanent;
                if let Life::Session(s) = d.life {
                    v.session = SESSIONS[s].into();
                }
                return v;
            }
            Some(_) => return verdict(Outcome::Denied, Reason::StoredDenial, "fail auth deny"),
            None => {}
        }
        // Gate 5: the background-location popup needs android or ios 8.0.0+.
        let popup = scope != BG
            || (matches!(client.platform, Platform::Android | Platform::Ios)
                && !older(client.host, "8.0.0"));
        if popup {
            verdict(Outcome::Prompt, Reason::PopupAvailable, "")
        } else {
            // No popup: wx.authorize fails as for a denial.
            verdict(
                Outcome::SettingsRequired,
                Reason::PopupUnavailable,
                "fail auth deny",
            )
        }
    }

    /// Sets a scope, returning the change (if any) with `cause`. A scope
    /// already in the wanted state is left alone, lifetime included: only
    /// a change takes the call's lifetime.
    fn set(
        &mut self,
        app: usize,
        user: usize,
        scope: &'static str,
        to: Option<Decided>,
        cause: Cause,
        changes: &mut Vec<Change>,
    ) {
        let old = self.state(app, user, scope);
        let new = match to {
            Some(d) if d.granted => DecisionState::Granted,
            Some(_) => DecisionState::Denied,
            None => DecisionState::NotDetermined,
        };
        if old == new {
            return;
        }
        match to {
            Some(d) => self.decided.insert((app, user, scope), d),
            None => self.decided.remove(&(app, user, scope)),
        };
        changes.push((app, user, scope, old, new, cause));
    }

    /// RecordDecision: Ok((errMsg, state of the scope, changes)) or an error code.
    fn record(
        &mut self,
        app: usize,
        user: usize,
        scope: &'static str,
        answer: Answer,
        client: Cl,
        life: Life,
    ) -> Result<(String, DecisionState, Vec<Change>), Code> {
        if answer == Answer::AllowWhileUsing && scope != BG {
            return Err(Code::InvalidArgument);
        }
        let outcome = self.verdict(app, user, scope, client, None).outcome;
        let mut changes = Vec::new();
        let grant = Some(Decided {
            granted: true,
            life,
        });
        let msg = match (outcome, answer) {
            (Outcome::Prompt, Answer::Allow) => {
                if scope == BG {
                    self.set(app, user, FG, grant, Cause::Popup, &mut changes);
                }
                self.set(app, user, scope, grant, Cause::Popup, &mut changes);
                "authorize:ok"
            }
            (Outcome::Prompt, Answer::AllowWhileUsing) => {
                self.set(app, user, FG, grant, Cause::Popup, &mut changes);
                "authorize:fail auth deny"
            }
            (Outcome::Prompt, Answer::Deny) => {
                let deny = Some(Decided {
                    granted: false,
                    life: Life::Permanent,
                });
                self.set(app, user, scope, deny, Cause::Popup, &mut changes);
                "authorize:fail auth deny"
            }
            (Outcome::Prompt, Answer::Cancel) => "authorize:fail auth cancel",
            // Recording the same decision twice changes nothing.
            (Outcome::Granted, Answer::Allow) => "authorize:ok",
            (Outcome::Denied, Answer::Deny) => "authorize:fail auth deny",
            _ => return Err(Code::FailedPrecondition),
        };
        Ok((msg.into(), self.state(app, user, scope), changes))
    }

    /// The settings page: permanent grants, revocations that keep
    /// "background implies location".
    fn apply_location(
        &mut self,
        app: usize,
        user: usize,
        fg: bool,
        bg: bool,
        changes: &mut Vec<Change>,
    ) {
        let to = |granted| {
            Some(Decided {
                granted,
                life: Life::Permanent,
            })
        };
        // Granting creates a decision; revoking only touches decided scopes.
        for (scope, on) in [(FG, fg), (BG, bg)] {
            match self.get(app, user, scope) {
                Some(d) if d.granted == on => {}
                None if !on => {}
                _ => self.set(app, user, scope, to(on), Cause::Settings, changes),
            }
        }
    }

    fn location(
        &mut self,
        app: usize,
        user: usize,
        option: LocationOption,
    ) -> Result<Vec<Change>, Code> {
        if self.get(app, user, FG).is_none() && self.get(app, user, BG).is_none() {
            return Err(Code::FailedPrecondition);
        }
        let (fg, bg) = match option {
            LocationOption::WhileUsingAndAfterLeaving => (true, true),
            LocationOption::WhileUsing => (true, false),
            _ => (false, false),
        };
        let mut changes = Vec::new();
        self.apply_location(app, user, fg, bg, &mut changes);
        Ok(changes)
    }

    fn toggle(
        &mut self,
        app: usize,
        user: usize,
        scope: &'static str,
        on: bool,
    ) -> Result<Vec<Change>, Code> {
        if KINDS[app] == AppKind::MiniProgram && (scope == FG || scope == BG) {
            // The location item in toggle form.
            let (fg, bg) = (
                self.state(app, user, FG) == DecisionState::Granted,
                self.state(app, user, BG) == DecisionState::Granted,
            );
            let option = match (scope, on) {
                (BG, true) => LocationOption::WhileUsingAndAfterLeaving,
                (FG, false) => LocationOption::NotAllowed,
                (FG, true) if bg => LocationOption::WhileUsingAndAfterLeaving,
                (FG, true) => LocationOption::WhileUsing,
                _ if fg => LocationOption::WhileUsing,
                _ => LocationOption::NotAllowed,
            };
            return self.location(app, user, option);
        }
        let Some(d) = self.get(app, user, scope) else {
            // Only scopes asked before are on the settings page.
            return Err(Code::FailedPrecondition);
        };
        let mut changes = Vec::new();
        if d.granted != on {
            let to = Some(Decided {
                granted: on,
                life: Life::Permanent,
            });
            self.set(app, user, scope, to, Cause::Settings, &mut changes);
        }
        Ok(changes)
    }

    /// EndSession: the session's one-time grants lapse; a lapsing location
    /// grant takes a granted background location with it (background first).
    fn end_session(&mut self, app: usize, user: usize, session: usize) -> Vec<Change> {
        let mut changes = Vec::new();
        let of_session = |m: &Self, scope| matches!(m.get(app, user, scope), Some(d) if d.granted && d.life == Life::Session(session));
        let lapsing: Vec<&'static str> = SCOPES
            .iter()
            .copied()
            .filter(|s| of_session(self, s))
            .collect();
        let location_lapses = lapsing.contains(&FG) || lapsing.contains(&BG);
        if location_lapses && self.state(app, user, BG) == DecisionState::Granted {
            self.set(app, user, BG, None, Cause::Expired, &mut changes);
        }
        for scope in lapsing {
            if scope != BG {
                self.set(app, user, scope, None, Cause::Expired, &mut changes);
            }
        }
        changes
    }

    fn remove(&mut self, app: usize, user: usize) -> Vec<Change> {
        let mut changes = Vec::new();
        for scope in SCOPES {
            self.set(app, user, scope, None, Cause::AppRemoved, &mut changes);
        }
        changes
    }

    fn setting(&self, app: usize, user: usize) -> std::collections::HashMap<String, bool> {
        self.decided
            .iter()
            .filter(|((a, u, _), _)| (*a, *u) == (app, user))
            .map(|((_, _, s), d)| (s.to_string(), d.granted))
            .collect()
    }
}

fn pb_client(c: Cl) -> pb::ClientInfo {
    client_info(c.platform, c.host, c.sdk)
}

fn pb_lifetime(life: Life) -> Option<pb::GrantLifetime> {
    let kind = match life {
        Life::Permanent => return None,
        Life::Hour => grant_lifetime::Kind::Until(prost_types::Timestamp {
            seconds: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                + 3600,
            nanos: 0,
        }),
        Life::Session(s) => grant_lifetime::Kind::SessionId(SESSIONS[s].into()),
    };
    Some(pb::GrantLifetime { kind: Some(kind) })
}

/// What a step answered, comparable between model and daemon.
#[derive(Debug, PartialEq)]
enum Got {
    Verdict(Verdict),
    /// CheckApi: its outcome and errMsg, and the one scope's verdict.
    Api(Outcome, String, Verdict),
    Recorded(String, DecisionState, Vec<(String, String, i32, i32, i32)>),
    Changed(Vec<(String, String, i32, i32, i32)>),
    Setting(
        std::collections::HashMap<String, bool>,
        Vec<(String, String, i32, i32, i32)>,
    ),
    Revision(u64),
    Err(Code),
}

/// Changes as (app, user, scope, old, new, cause), sorted: the order of
/// changes within one call is the daemon's to choose, except where the
/// model says otherwise (checked through revisions below).
fn changes_of(apps: &[String], changes: &[Change]) -> Vec<(String, String, i32, i32, i32)> {
    let mut v: Vec<_> = changes
        .iter()
        .map(|&(a, u, s, old, new, cause)| {
            (
                format!("{}/{}", apps[a], USERS[u]),
                s.to_string(),
                old as i32,
                new as i32,
                cause as i32,
            )
        })
        .collect();
    v.sort();
    v
}

fn wire_changes(
    app: &str,
    user: &str,
    changes: &[pb::DecisionChange],
    log: &mut Vec<EventKey>,
) -> Vec<(String, String, i32, i32, i32)> {
    let mut v: Vec<_> = changes
        .iter()
        .map(|c| {
            log.push(key_of_change(app, user, c));
            (
                format!("{app}/{user}"),
                c.scope.clone(),
                c.old_state,
                c.new_state,
                c.cause,
            )
        })
        .collect();
    v.sort();
    v
}

fn verdict_of(d: &pb::Decision) -> Verdict {
    Verdict {
        outcome: d.outcome(),
        reason: d.reason(),
        state: d.state(),
        err_msg: d.err_msg.clone(),
        session: d.session_id.clone(),
        expires: d.expires_at.is_some(),
    }
}

/// A client of the daemon held in the cell (borrowed only for the call).
fn client_of(daemon: &RefCell<Option<TestDaemon>>) -> Client {
    daemon.borrow().as_ref().expect("daemon").client()
}

/// Every event of `apps` after `start`, until a progress marker at `revision`.
async fn watched(c: &Client, apps: &[String], start: u64, revision: u64) -> Vec<EventKey> {
    let mut stream = c
        .watch(pb::WatchRequest {
            start_revision: Some(start),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut log = Vec::new();
    loop {
        match stream.next().await.unwrap().unwrap().kind {
            Some(Kind::Event(e)) if apps.contains(&e.app_id) => log.push(key_of_event(&e)),
            Some(Kind::Progress(p)) if p.revision >= revision => break,
            _ => {}
        }
    }
    log
}

#[test]
fn the_daemon_behaves_like_the_model() {
    let cases = std::env::var("CONSENTD_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let daemon = RefCell::new(Some(runtime.block_on(TestDaemon::start())));
    let case = RefCell::new(0u32);
    let steps = RefCell::new(0usize);
    // What the steps exercised: (operation, what it answered) -> count.
    let seen: RefCell<BTreeMap<String, usize>> = RefCell::default();
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..64), |ops| {
        // Fresh apps per sequence keep sequences apart on one daemon.
        *case.borrow_mut() += 1;
        let n = *case.borrow();
        let apps = [format!("wxmodel{n}"), format!("wxgame{n}")];
        runtime.block_on(async {
            let c = client_of(&daemon);
            c.register(location_app(&apps[0])).await;
            c.register(bare_app(&apps[1], AppKind::MiniGame)).await;
            let start = c.revision().await;
            let mut model = Model::default();
            let mut log = Vec::new();
            for (step, op) in ops.iter().enumerate() {
                *steps.borrow_mut() += 1;
                let c = client_of(&daemon);
                let (want, got) = match *op {
                    Op::Authorize {
                        app,
                        user,
                        scope,
                        client,
                    } => {
                        let want = model.verdict(app, user, SCOPES[scope], client, None);
                        let got = c
                            .authorize(&apps[app], USERS[user], SCOPES[scope], pb_client(client))
                            .await
                            .unwrap()
                            .decision
                            .unwrap();
                        (Got::Verdict(want), Got::Verdict(verdict_of(&got)))
                    }
                    Op::CheckApi {
                        app,
                        user,
                        api,
                        client,
                    } => {
                        let (name, scope, info) = APIS[api];
                        let want = model.verdict(app, user, scope, client, Some((name, info)));
                        let got = c
                            .auth()
                            .check_api(pb::CheckApiRequest {
                                app_id: apps[app].clone(),
                                user_id: USERS[user].into(),
                                api: name.into(),
                                client: Some(pb_client(client)),
                            })
                            .await
                            .unwrap()
                            .into_inner();
                        prop_assert_eq!(got.decisions.len(), 1, "{} needs one scope", name);
                        (
                            Got::Api(want.outcome, want.err_msg.clone(), want),
                            Got::Api(
                                got.outcome(),
                                got.err_msg.clone(),
                                verdict_of(&got.decisions[0]),
                            ),
                        )
                    }
                    Op::Record {
                        app,
                        user,
                        scope,
                        answer,
                        client,
                        life,
                    } => {
                        let want =
                            match model.record(app, user, SCOPES[scope], answer, client, life) {
                                Ok((msg, state, changes)) => {
                                    Got::Recorded(msg, state, changes_of(&apps, &changes))
                                }
                                Err(code) => Got::Err(code),
                            };
                        let got = c
                            .auth()
                            .record_decision(pb::RecordDecisionRequest {
                                app_id: apps[app].clone(),
                                user_id: USERS[user].into(),
                                scope: SCOPES[scope].into(),
                                answer: answer.into(),
                                client: Some(pb_client(client)),
                                lifetime: pb_lifetime(life),
                            })
                            .await;
                        let got = match got {
                            Ok(r) => {
                                let r = r.into_inner();
                                Got::Recorded(
                                    r.err_msg.clone(),
                                    r.state(),
                                    wire_changes(&apps[app], USERS[user], &r.changes, &mut log),
                                )
                            }
                            Err(s) => Got::Err(s.code()),
                        };
                        (want, got)
                    }
                    Op::Toggle {
                        app,
                        user,
                        scope,
                        on,
                    } => {
                        let want = match model.toggle(app, user, SCOPES[scope], on) {
                            Ok(changes) => {
                                Got::Setting(model.setting(app, user), changes_of(&apps, &changes))
                            }
                            Err(code) => Got::Err(code),
                        };
                        let req = pb::UpdateSettingRequest {
                            app_id: apps[app].clone(),
                            user_id: USERS[user].into(),
                            auth_setting: [(SCOPES[scope].to_string(), on)].into(),
                            ..Default::default()
                        };
                        let got = match c.update(req).await {
                            Ok(r) => Got::Setting(
                                r.auth_setting.clone(),
                                wire_changes(&apps[app], USERS[user], &r.changes, &mut log),
                            ),
                            Err(s) => Got::Err(s.code()),
                        };
                        (want, got)
                    }
                    Op::Location { user, option } => {
                        let want = match model.location(0, user, option) {
                            Ok(changes) => {
                                Got::Setting(model.setting(0, user), changes_of(&apps, &changes))
                            }
                            Err(code) => Got::Err(code),
                        };
                        let req = pb::UpdateSettingRequest {
                            app_id: apps[0].clone(),
                            user_id: USERS[user].into(),
                            location: option.into(),
                            ..Default::default()
                        };
                        let got = match c.update(req).await {
                            Ok(r) => Got::Setting(
                                r.auth_setting.clone(),
                                wire_changes(&apps[0], USERS[user], &r.changes, &mut log),
                            ),
                            Err(s) => Got::Err(s.code()),
                        };
                        (want, got)
                    }
                    Op::EndSession { app, user, session } => {
                        let want =
                            Got::Changed(changes_of(&apps, &model.end_session(app, user, session)));
                        let got = c
                            .auth()
                            .end_session(pb::EndSessionRequest {
                                app_id: apps[app].clone(),
                                user_id: USERS[user].into(),
                                session_id: SESSIONS[session].into(),
                            })
                            .await
                            .unwrap()
                            .into_inner();
                        (
                            want,
                            Got::Changed(wire_changes(
                                &apps[app],
                                USERS[user],
                                &got.changes,
                                &mut log,
                            )),
                        )
                    }
                    Op::Remove { app, user } => {
                        let want = Got::Changed(changes_of(&apps, &model.remove(app, user)));
                        let got = c.remove(&apps[app], USERS[user]).await;
                        (
                            want,
                            Got::Changed(wire_changes(&apps[app], USERS[user], &got, &mut log)),
                        )
                    }
                    Op::Restart => {
                        // Nothing is lost or added by a restart: the revision carries on.
                        let before = c.revision().await;
                        let mut d = daemon.replace(None).expect("daemon");
                        d.restart().await;
                        daemon.replace(Some(d));
                        (
                            Got::Revision(before),
                            Got::Revision(client_of(&daemon).revision().await),
                        )
                    }
                };
                prop_assert_eq!(&got, &want, "step {} {:?} of {:?}", step, op, ops);
                let name = format!("{op:?}");
                let name = name.split([' ', '{']).next().unwrap_or_default();
                let answer = match &got {
                    Got::Verdict(v) | Got::Api(_, _, v) => format!("{:?}", v.outcome),
                    Got::Recorded(_, _, c) | Got::Changed(c) | Got::Setting(_, c) => {
                        format!("ok, {} changes", c.len().min(2))
                    }
                    Got::Revision(_) => "ok".into(),
                    Got::Err(code) => format!("{code:?}"),
                };
                *seen
                    .borrow_mut()
                    .entry(format!("{name}: {answer}"))
                    .or_default() += 1;
                let c = client_of(&daemon);
                for (a, app) in apps.iter().enumerate() {
                    for (u, user) in USERS.iter().enumerate() {
                        prop_assert_eq!(
                            c.setting(app, user).await.auth_setting,
                            model.setting(a, u),
                            "{} {} after step {} {:?}",
                            app,
                            user,
                            step,
                            op
                        );
                    }
                }
            }
            // The events are exactly the changes the calls returned, in
            // revision order: none missing, none extra, causes included.
            let c = client_of(&daemon);
            let revision = c.revision().await;
            log.sort();
            let events = watched(&c, &apps, start, revision).await;
            prop_assert_eq!(events, log, "the Watch log of {:?}", ops);
            Ok(())
        })
    });
    let verify = runtime.block_on(client_of(&daemon).assert_consistent());
    eprintln!(
        "model test: {cases} sequences, {} steps, {} events checked by Verify",
        steps.borrow(),
        verify.retained_events
    );
    eprintln!("model test: steps by operation and answer (\"2 changes\" = 2 or more):");
    for (what, n) in seen.borrow().iter() {
        eprintln!("  {what}: {n}");
    }
    if let Some(d) = daemon.into_inner() {
        runtime.block_on(d.stop());
    }
    if let Err(e) = result {
        panic!("{e}");
    }
}
