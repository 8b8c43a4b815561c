//! Model-based test: a reference model of the SPEC's decision semantics, written
//! independently of `consentd::domain`, and random operation sequences applied
//! to both the model and the real daemon (over gRPC), compared after every step,
//! across daemon restarts.
//!
//! `CONSENTD_MODEL_CASES` sets the number of sequences (default 24).

use std::{cell::RefCell, collections::BTreeMap};

use consentd::pb::{self, Answer, LocationOption, Outcome};
use proptest::{prelude::*, test_runner::TestRunner};
use tonic::Code;

use crate::fixture::{client_info, location_app, TestDaemon};

const FG: &str = "scope.userLocation";
const BG: &str = "scope.userLocationBackground";
const SCOPES: [&str; 5] = [FG, BG, "scope.camera", "scope.record", "scope.address"];
const USERS: [&str; 2] = ["alice", "bob"];

#[derive(Clone, Debug)]
enum Op {
    Authorize {
        user: usize,
        scope: usize,
        old_client: bool,
    },
    Record {
        user: usize,
        scope: usize,
        answer: Answer,
        old_client: bool,
    },
    Toggle {
        user: usize,
        scope: usize,
        on: bool,
    },
    Location {
        user: usize,
        option: LocationOption,
    },
    Remove {
        user: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS.len();
    let scope = 0..SCOPES.len();
    let answer = prop_oneof![
        Just(Answer::Allow),
        Just(Answer::Deny),
        Just(Answer::Cancel),
        Just(Answer::AllowWhileUsing)
    ];
    let option = prop_oneof![
        Just(LocationOption::NotAllowed),
        Just(LocationOption::WhileUsing),
        Just(LocationOption::WhileUsingAndAfterLeaving)
    ];
    prop_oneof![
        3 => (user.clone(), scope.clone(), any::<bool>()).prop_map(|(user, scope, old_client)| Op::Authorize { user, scope, old_client }),
        5 => (user.clone(), scope.clone(), answer, prop::bool::weighted(0.2))
            .prop_map(|(user, scope, answer, old_client)| Op::Record { user, scope, answer, old_client }),
        2 => (user.clone(), 0..4usize, any::<bool>()).prop_map(|(user, scope, on)| Op::Toggle { user, scope, on }),
        2 => (user.clone(), option).prop_map(|(user, option)| Op::Location { user, option }),
        1 => user.prop_map(|user| Op::Remove { user }),
        1 => Just(Op::Restart),
    ]
}

/// The reference model: decided scopes per user, `true` = granted.
#[derive(Default, Debug)]
struct Model {
    decided: BTreeMap<(usize, &'static str), bool>,
}

/// What a step should answer: an outcome, or an error code.
#[derive(Debug, PartialEq)]
enum Expect {
    Outcome(Outcome),
    Ok,
    Err(Code),
}

impl Model {
    fn state(&self, user: usize, scope: &'static str) -> Option<bool> {
        self.decided.get(&(user, scope)).copied()
    }

    fn authorize(&self, user: usize, scope: &'static str, old_client: bool) -> Outcome {
        if scope == "scope.address" {
            return Outcome::NoAuthNeeded;
        }
        match self.state(user, scope) {
            Some(true) => Outcome::Granted,
            Some(false) => Outcome::Denied,
            // No background popup below host 8.0.0.
            None if scope == BG && old_client => Outcome::SettingsRequired,
            None => Outcome::Prompt,
        }
    }

    fn record(
        &mut self,
        user: usize,
        scope: &'static str,
        answer: Answer,
        old_client: bool,
    ) -> Expect {
        if answer == Answer::AllowWhileUsing && scope != BG {
            return Expect::Err(Code::InvalidArgument);
        }
        match (self.authorize(user, scope, old_client), answer) {
            (Outcome::Prompt, Answer::Allow) => {
                if scope == BG {
                    self.decided.insert((user, FG), true);
                }
                self.decided.insert((user, scope), true);
            }
            (Outcome::Prompt, Answer::AllowWhileUsing) => {
                self.decided.insert((user, FG), true);
            }
            (Outcome::Prompt, Answer::Deny) => {
                self.decided.insert((user, scope), false);
            }
            (Outcome::Prompt, Answer::Cancel)
            | (Outcome::Granted, Answer::Allow)
            | (Outcome::Denied, Answer::Deny) => {}
            _ => return Expect::Err(Code::FailedPrecondition),
        }
        Expect::Ok
    }

    fn toggle(&mut self, user: usize, scope: &'static str, on: bool) -> Expect {
        if scope == FG || scope == BG {
            // The location item in toggle form.
            let (fg, bg) = (self.state(user, FG), self.state(user, BG));
            if fg.is_none() && bg.is_none() {
                return Expect::Err(Code::FailedPrecondition);
            }
            let option = match (scope, on) {
                (_, true) if scope == BG => LocationOption::WhileUsingAndAfterLeaving,
                (_, false) if scope == FG => LocationOption::NotAllowed,
                (_, true) => {
                    if bg == Some(true) {
                        LocationOption::WhileUsingAndAfterLeaving
                    } else {
                        LocationOption::WhileUsing
                    }
                }
                _ => {
                    if fg == Some(true) {
                        LocationOption::WhileUsing
                    } else {
                        LocationOption::NotAllowed
                    }
                }
            };
            return self.location(user, option);
        }
        if self.state(user, scope).is_none() {
            return Expect::Err(Code::FailedPrecondition);
        }
        self.decided.insert((user, scope), on);
        Expect::Ok
    }

    fn location(&mut self, user: usize, option: LocationOption) -> Expect {
        if self.state(user, FG).is_none() && self.state(user, BG).is_none() {
            return Expect::Err(Code::FailedPrecondition);
        }
        let (fg, bg) = match option {
            LocationOption::WhileUsingAndAfterLeaving => (true, true),
            LocationOption::WhileUsing => (true, false),
            _ => (false, false),
        };
        // Granting creates a decision; revoking only touches decided scopes.
        for (scope, on) in [(FG, fg), (BG, bg)] {
            if on || self.state(user, scope).is_some() {
                self.decided.insert((user, scope), on);
            }
        }
        Expect::Ok
    }

    fn setting(&self, user: usize) -> std::collections::HashMap<String, bool> {
        self.decided
            .iter()
            .filter(|((u, _), _)| *u == user)
            .map(|((_, s), on)| (s.to_string(), *on))
            .collect()
    }
}

fn client(old: bool) -> pb::ClientInfo {
    client_info(
        pb::Platform::Ios,
        if old { "7.0.20" } else { "8.0.5" },
        "3.0.0",
    )
}

fn code<T>(r: Result<T, tonic::Status>) -> Expect {
    match r {
        Ok(_) => Expect::Ok,
        Err(s) => Expect::Err(s.code()),
    }
}

/// A client of the daemon held in the cell (borrowed only for the call).
fn client_of(daemon: &RefCell<Option<TestDaemon>>) -> crate::fixture::Client {
    daemon.borrow().as_ref().expect("daemon").client()
}

#[test]
fn the_daemon_behaves_like_the_model() {
    let cases = std::env::var("CONSENTD_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let daemon = RefCell::new(Some(runtime.block_on(TestDaemon::start())));
    let case = RefCell::new(0u32);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
        // A fresh app per sequence keeps sequences apart on one daemon.
        *case.borrow_mut() += 1;
        let app = format!("wxmodel{}", case.borrow());
        runtime.block_on(async {
            let c = client_of(&daemon);
            c.register(location_app(&app)).await;
            let mut model = Model::default();
            for (step, op) in ops.iter().enumerate() {
                let c = client_of(&daemon);
                let (want, got) = match *op {
                    Op::Authorize {
                        user,
                        scope,
                        old_client,
                    } => {
                        let want =
                            Expect::Outcome(model.authorize(user, SCOPES[scope], old_client));
                        let got = c
                            .outcome(&app, USERS[user], SCOPES[scope], client(old_client))
                            .await;
                        (want, Expect::Outcome(got))
                    }
                    Op::Record {
                        user,
                        scope,
                        answer,
                        old_client,
                    } => {
                        let want = model.record(user, SCOPES[scope], answer, old_client);
                        (
                            want,
                            code(
                                c.record(
                                    &app,
                                    USERS[user],
                                    SCOPES[scope],
                                    answer,
                                    client(old_client),
                                )
                                .await,
                            ),
                        )
                    }
                    Op::Toggle { user, scope, on } => {
                        let want = model.toggle(user, SCOPES[scope], on);
                        let req = pb::UpdateSettingRequest {
                            app_id: app.clone(),
                            user_id: USERS[user].into(),
                            auth_setting: [(SCOPES[scope].to_string(), on)].into(),
                            ..Default::default()
                        };
                        (want, code(c.update(req).await))
                    }
                    Op::Location { user, option } => {
                        let want = model.location(user, option);
                        let req = pb::UpdateSettingRequest {
                            app_id: app.clone(),
                            user_id: USERS[user].into(),
                            location: option.into(),
                            ..Default::default()
                        };
                        (want, code(c.update(req).await))
                    }
                    Op::Remove { user } => {
                        model.decided.retain(|(u, _), _| *u != user);
                        c.remove(&app, USERS[user]).await;
                        (Expect::Ok, Expect::Ok)
                    }
                    Op::Restart => {
                        let mut d = daemon.replace(None).expect("daemon");
                        d.restart().await;
                        daemon.replace(Some(d));
                        (Expect::Ok, Expect::Ok)
                    }
                };
                prop_assert_eq!(&got, &want, "step {} {:?} of {:?}", step, op, ops);
                let c = client_of(&daemon);
                for (u, user) in USERS.iter().enumerate() {
                    prop_assert_eq!(
                        c.setting(&app, user).await.auth_setting,
                        model.setting(u),
                        "after step {} {:?}",
                        step,
                        op
                    );
                }
            }
            Ok(())
        })
    });
    let verify = runtime.block_on(client_of(&daemon).assert_consistent());
    eprintln!(
        "model test: {cases} sequences, {} events checked by Verify",
        verify.retained_events
    );
    if let Some(d) = daemon.into_inner() {
        runtime.block_on(d.stop());
    }
    if let Err(e) = result {
        panic!("{e}");
    }
}
