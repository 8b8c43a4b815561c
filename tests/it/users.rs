//! The user's own view (issue 18) through gRPC: ListUserDecisions against
//! GetSetting, ResetUser and EraseUser events in order (live and replayed,
//! across a restart and a kill -9), erasure leaving nothing that names the
//! user in exports and the audit trail, the index on a format-3 store, bad
//! input.

use std::time::Duration;

use consentd::pb::{self, watch_response::Kind};
use tokio_stream::StreamExt as _;
use tonic::{Code, Streaming};

use crate::{
    crash_support::ChildDaemon,
    fixture::{assert_status, connect, location_app, Client, TestDaemon},
    support::export,
};

const USER: &str = "user-erasable";
const OTHER: &str = "user-bystander";

fn app_id(i: usize) -> String {
    format!("wxuser{i:02}")
}

/// Registers `apps` apps; in each, USER gets location + background (app
/// 0, 3, ...), a denied camera (odd apps) or a granted record (others),
/// and OTHER a granted record. Returns the apps' ids.
async fn seed(c: &Client, apps: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..apps {
        let id = app_id(i);
        let mut app = location_app(&id);
        app.permission.insert(
            "scope.camera".into(),
            pb::PermissionDesc {
                desc: "scan".into(),
            },
        );
        c.register(app).await;
        if i % 3 == 0 {
            c.answer(&id, USER, "scope.userLocationBackground", pb::Answer::Allow)
                .await;
        }
        if i % 2 == 1 {
            c.answer(&id, USER, "scope.camera", pb::Answer::Deny).await;
        } else {
            c.answer(&id, USER, "scope.record", pb::Answer::Allow).await;
        }
        c.answer(&id, OTHER, "scope.record", pb::Answer::Allow)
            .await;
        ids.push(id);
    }
    ids
}

async fn list(
    c: &Client,
    user: &str,
    scope: &str,
    page_size: u32,
    page_token: &str,
) -> Result<pb::ListUserDecisionsResponse, tonic::Status> {
    c.auth()
        .list_user_decisions(pb::ListUserDecisionsRequest {
            user_id: user.into(),
            scope: scope.into(),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Every page, following the tokens.
async fn list_all(
    c: &Client,
    user: &str,
    scope: &str,
    page_size: u32,
) -> Vec<pb::UserAppDecisions> {
    let (mut all, mut token) = (Vec::new(), String::new());
    loop {
        let page = list(c, user, scope, page_size, &token).await.unwrap();
        assert!(page.apps.len() <= page_size as usize);
        all.extend(page.apps);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

/// scope -> granted, per app, as the listing shows it.
fn as_settings(
    listed: &[pb::UserAppDecisions],
) -> std::collections::BTreeMap<String, std::collections::HashMap<String, bool>> {
    listed
        .iter()
        .map(|a| {
            let map = a
                .decisions
                .iter()
                .map(|d| (d.scope.clone(), d.state() == pb::DecisionState::Granted))
                .collect();
            (a.app_id.clone(), map)
        })
        .collect()
}

async fn reset(c: &Client, user: &str) -> pb::ResetUserResponse {
    c.auth()
        .reset_user(pb::ResetUserRequest {
            user_id: user.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn erase(c: &Client, user: &str) -> pb::EraseUserResponse {
    c.admin()
        .erase_user(pb::EraseUserRequest {
            user_id: user.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Events of `stream` up to revision `until`.
async fn events_until(
    stream: &mut Streaming<pb::WatchResponse>,
    until: u64,
) -> Vec<pb::DecisionEvent> {
    let mut out: Vec<pb::DecisionEvent> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events arrive in time")
            .expect("stream open")
            .expect("no error");
        match item.kind {
            Some(Kind::Event(e)) => {
                let last = e.revision;
                out.push(e);
                if last >= until {
                    return out;
                }
            }
            Some(Kind::Progress(p)) if p.revision >= until => return out,
            _ => {}
        }
    }
}

async fn watch_from(
    c: &Client,
    users: &[&str],
    start: Option<u64>,
) -> Streaming<pb::WatchResponse> {
    c.watch(pb::WatchRequest {
        user_ids: users.iter().map(|u| u.to_string()).collect(),
        start_revision: start,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// What a reset (or an erasure) of USER must emit, in order: per app in
/// id order, every stored decision back to never asked, background
/// location before location.
fn expected_revocations(apps: &[String], cause: pb::Cause) -> Vec<(String, String, i32, i32)> {
    let mut out = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        let mut scopes: Vec<(&str, pb::DecisionState)> = Vec::new();
        if i % 3 == 0 {
            scopes.push(("scope.userLocationBackground", pb::DecisionState::Granted));
            scopes.push(("scope.userLocation", pb::DecisionState::Granted));
        }
        if i % 2 == 1 {
            scopes.push(("scope.camera", pb::DecisionState::Denied));
        } else {
            scopes.push(("scope.record", pb::DecisionState::Granted));
        }
        // Catalog order after background (record before camera).
        scopes.sort_by_key(|(s, _)| match *s {
            "scope.userLocationBackground" => 0,
            "scope.userLocation" => 1,
            "scope.record" => 3,
            _ => 4,
        });
        for (scope, old) in scopes {
            out.push((app.clone(), scope.to_owned(), old as i32, cause as i32));
        }
    }
    out
}

fn shape(events: &[pb::DecisionEvent]) -> Vec<(String, String, i32, i32)> {
    events
        .iter()
        .map(|e| {
            assert_eq!(e.new_state(), pb::DecisionState::NotDetermined, "{e:?}");
            (e.app_id.clone(), e.scope.clone(), e.old_state, e.cause)
        })
        .collect()
}

fn assert_contiguous(events: &[pb::DecisionEvent]) {
    for pair in events.windows(2) {
        assert_eq!(pair[1].revision, pair[0].revision + 1, "{pair:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_equals_get_setting_of_every_app_paged_and_per_scope() {
    let h = TestDaemon::start().await;
    let c = h.client();
    let apps = seed(&c, 7).await;
    // One app removed by the user: it leaves the listing.
    c.remove(&apps[4], USER).await;
    let listed = list_all(&c, USER, "", 3).await;
    let mut expected = std::collections::BTreeMap::new();
    for app in &apps {
        let setting = c.setting(app, USER).await.auth_setting;
        if !setting.is_empty() {
            expected.insert(app.clone(), setting);
        }
    }
    assert_eq!(as_settings(&listed), expected);
    assert_eq!(listed.len(), 6);
    let ids: Vec<&str> = listed.iter().map(|a| a.app_id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "stable order by app id");
    // Each row says when it last changed and how.
    let first = &listed[0].decisions[0];
    assert!(first.revision > 0 && first.updated_at.is_some());
    assert_eq!(first.cause(), pb::Cause::Popup);

    // The per-permission page: the apps holding background location.
    let holders = list_all(&c, USER, "scope.userLocationBackground", 2).await;
    let held: Vec<&str> = holders.iter().map(|a| a.app_id.as_str()).collect();
    assert_eq!(held, [apps[0].as_str(), &apps[3], &apps[6]]);
    assert!(holders.iter().all(|a| a.decisions.len() == 1));
    // Another user sees only their own.
    assert_eq!(list_all(&c, OTHER, "", 100).await.len(), 7);
    assert!(list_all(&c, "nobody", "", 100).await.is_empty());
    h.client().assert_consistent().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_emits_one_event_per_decision_in_order_and_holds_across_a_restart() {
    let mut h = TestDaemon::start().await;
    let c = h.client();
    let apps = seed(&c, 5).await;
    let start = c.revision().await;
    let mut live = watch_from(&c, &[USER, OTHER], None).await;
    let done = reset(&c, USER).await;
    assert_eq!(done.apps, 5);
    let expected = expected_revocations(&apps, pb::Cause::UserReset);
    assert_eq!(shape(&done.events), expected);
    assert_contiguous(&done.events);
    let seen = events_until(&mut live, done.revision).await;
    assert_eq!(seen, done.events, "Watch sees exactly these, in order");

    h.restart().await;
    let c = h.client();
    let mut replay = watch_from(&c, &[], Some(start)).await;
    assert_eq!(events_until(&mut replay, done.revision).await, done.events);
    for app in &apps {
        assert!(c.setting(app, USER).await.auth_setting.is_empty());
        assert_eq!(
            c.setting(app, OTHER).await.auth_setting.len(),
            1,
            "others stay"
        );
        // One audit record per app.
        let audit = c
            .auth()
            .list_audit(pb::ListAuditRequest {
                app_id: app.clone(),
                user_id: USER.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        let resets: Vec<_> = audit
            .iter()
            .filter(|r| r.action() == pb::AuditAction::UserReset)
            .collect();
        assert_eq!(resets.len(), 1, "{audit:?}");
    }
    assert!(list_all(&c, USER, "", 100).await.is_empty());
    // Nothing left to reset: no event, no revision.
    let again = reset(&c, USER).await;
    assert!(again.events.is_empty() && again.apps == 0);
    assert_eq!(again.revision, done.revision);
    c.assert_consistent().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_revokes_live_then_nothing_retained_names_the_user() {
    let mut h = TestDaemon::start().await;
    let c = h.client();
    let apps = seed(&c, 4).await;
    // A privacy answer and a timed grant: both go too.
    c.auth()
        .record_decision(pb::RecordDecisionRequest {
            lifetime: Some(pb::GrantLifetime {
                kind: Some(pb::grant_lifetime::Kind::Until(prost_types::Timestamp {
                    seconds: (h.now_ms() / 1000 + 3600) as i64,
                    nanos: 0,
                })),
            }),
            ..crate::support::record_req(
                &apps[1],
                USER,
                "scope.record",
                pb::Answer::Allow,
                crate::support::android(),
            )
        })
        .await
        .unwrap();
    let before_export = export(&c.channel, true).await;
    assert!(format!("{before_export:?}").contains(USER));
    let start = c.revision().await;
    let mut replay = watch_from(&c, &[], Some(0)).await;
    let history = events_until(&mut replay, start).await;
    drop(replay);
    let mut live = watch_from(&c, &[USER], None).await;
    let done = erase(&c, USER).await;
    assert_eq!(done.apps, 4);
    assert!(!done.scrub_pending);
    let seen = events_until(&mut live, done.revision).await;
    // Live: the real user id, so runtimes stop at once.
    assert!(seen.iter().all(|e| e.user_id == USER), "{seen:?}");
    let mut expected = expected_revocations(&apps, pb::Cause::UserErased);
    // apps[1] also holds the timed record grant.
    let at = expected
        .iter()
        .position(|(a, _, _, _)| *a == apps[1])
        .unwrap();
    expected.insert(
        at,
        (
            apps[1].clone(),
            "scope.record".into(),
            pb::DecisionState::Granted as i32,
            pb::Cause::UserErased as i32,
        ),
    );
    assert_eq!(shape(&seen), expected);
    assert_eq!(done.revoked_decisions as usize, expected.len());
    assert!(done.rewritten_records > done.revoked_decisions);

    for round in ["before a restart", "after a restart"] {
        let c = h.client();
        let everything = format!("{:?}", export(&c.channel, true).await);
        assert!(
            !everything.contains(USER),
            "{round}: the export names the user"
        );
        assert!(everything.contains(OTHER));
        // The replayed log: the same events at the same revisions, the
        // pseudonym in the user's place and nowhere else.
        let mut replay = watch_from(&c, &[], Some(0)).await;
        let log = events_until(&mut replay, done.revision).await;
        assert_eq!(log.last().unwrap().revision, done.revision);
        let erased: Vec<_> = log.iter().filter(|e| e.revision > start).collect();
        assert_contiguous(&log[history.len()..]);
        let pseudonym = erased[0].user_id.clone();
        assert!(pseudonym.starts_with("erased-") && pseudonym.len() == 39);
        assert!(erased.iter().all(|e| e.user_id == pseudonym));
        let renamed: Vec<pb::DecisionEvent> = history
            .iter()
            .cloned()
            .map(|mut e| {
                if e.user_id == USER {
                    e.user_id = pseudonym.clone();
                }
                e
            })
            .collect();
        assert_eq!(log[..history.len()], renamed[..], "{round}");
        let pseudonym = &pseudonym;
        for app in &apps {
            let audit = c
                .auth()
                .list_audit(pb::ListAuditRequest {
                    app_id: app.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .records;
            assert!(
                audit.iter().all(|r| r.user_id != USER),
                "{round}: {audit:?}"
            );
            let erasures: Vec<_> = audit
                .iter()
                .filter(|r| r.action() == pb::AuditAction::UserErased)
                .collect();
            assert_eq!(erasures.len(), 1);
            assert_eq!(&erasures[0].user_id, pseudonym);
            assert!(c.setting(app, USER).await.auth_setting.is_empty());
        }
        assert!(list_all(&c, USER, "", 100).await.is_empty());
        c.assert_consistent().await;
        if round == "before a restart" {
            h.restart().await;
        }
    }
    // The user may come back: new state under the real id again.
    let c = h.client();
    c.answer(&apps[0], USER, "scope.record", pb::Answer::Allow)
        .await;
    assert_eq!(list_all(&c, USER, "", 100).await.len(), 1);
    c.assert_consistent().await;
    h.stop().await;
}

/// kill -9 while a reset or an erasure runs, at several moments: after a
/// restart the store holds all of it or none of it, Verify (log, checkpoint,
/// index) holds, and an erasure that committed names the user nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_reset_or_erase_leaves_all_or_nothing() {
    let _turn = crate::fixture::heavy().await;
    for (n, delay_ms) in [0u64, 2, 5, 10, 20].into_iter().enumerate() {
        for erasing in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            let daemon = ChildDaemon::spawn(&data);
            let c = Client {
                channel: connect(daemon.addr).await,
            };
            let apps = seed(&c, 12).await;
            let start = c.revision().await;
            let call = {
                let c = c.clone();
                tokio::spawn(async move {
                    if erasing {
                        c.admin()
                            .erase_user(pb::EraseUserRequest {
                                user_id: USER.into(),
                            })
                            .await
                            .map(|r| r.into_inner().revision)
                    } else {
                        c.auth()
                            .reset_user(pb::ResetUserRequest {
                                user_id: USER.into(),
                            })
                            .await
                            .map(|r| r.into_inner().revision)
                    }
                })
            };
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            tokio::task::spawn_blocking(move || daemon.kill9())
                .await
                .unwrap();
            let acked = call.await.unwrap().ok();
            eprintln!(
                "round {n}: erasing {erasing}, killed after {delay_ms} ms, acknowledged: {acked:?}"
            );

            // The child above is a sled daemon (a kill -9 of its data dir's
            // process); on etcd the erasing write is one etcd transaction and
            // an interrupted scrub resumes on any daemon (etcd_store tests).
            let h = TestDaemon::with(|cfg| {
                cfg.data_dir = data.clone();
                *cfg = crate::support::on_sled(cfg.clone());
            })
            .await;
            let c = h.client();
            let context =
                format!("round {n} (kill after {delay_ms} ms, erasing {erasing}, acked {acked:?})");
            let verify = c.assert_consistent().await;
            assert_eq!(verify.revision, c.revision().await);
            let mut replay = watch_from(&c, &[], Some(start)).await;
            let now = c.revision().await;
            let after = if now > start {
                events_until(&mut replay, now).await
            } else {
                Vec::new()
            };
            let cause = if erasing {
                pb::Cause::UserErased
            } else {
                pb::Cause::UserReset
            };
            let expected = expected_revocations(&apps, cause);
            let listed = list_all(&c, USER, "", 100).await;
            if after.is_empty() {
                assert!(acked.is_none(), "{context}: acknowledged but lost");
                assert_eq!(listed.len(), 12, "{context}: untouched");
            } else {
                assert_eq!(shape(&after), expected, "{context}");
                assert!(listed.is_empty(), "{context}");
                if erasing {
                    let everything = format!("{:?}", export(&c.channel, true).await);
                    assert!(
                        !everything.contains(USER),
                        "{context}: the user is still named"
                    );
                } else {
                    assert!(after.iter().all(|e| e.user_id == USER));
                }
            }
            assert_eq!(list_all(&c, OTHER, "", 100).await.len(), 12, "{context}");
            h.stop().await;
        }
    }
}

/// A data dir of the previous format (4) has no per-user index: opening
/// builds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_format_4_store_builds_the_user_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestDaemon::with(|cfg| *cfg = sled_at(cfg, &data)).await;
    let apps = seed(&h.client(), 3).await;
    h.stop().await;
    {
        // What a format-4 build leaves: no `u/` keys, the old marker.
        let db = crate::startup::open_when_released(&data);
        let tree = db.open_tree("consent").unwrap();
        let keys: Vec<_> = tree.scan_prefix(b"u/").keys().map(|k| k.unwrap()).collect();
        assert_eq!(keys.len(), 6, "two users in three apps");
        for key in keys {
            tree.remove(key).unwrap();
        }
        let previous = consentd::store::FORMAT_VERSION - 1;
        tree.insert(b"m/format", &previous.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let h = TestDaemon::with(|cfg| *cfg = sled_at(cfg, &data)).await;
    let c = h.client();
    let listed = list_all(&c, USER, "", 100).await;
    let ids: Vec<&str> = listed.iter().map(|a| a.app_id.as_str()).collect();
    assert_eq!(ids, apps.iter().map(String::as_str).collect::<Vec<_>>());
    c.assert_consistent().await;
    h.stop().await;
    assert_eq!(
        crate::startup::stored_format(&data),
        consentd::store::FORMAT_VERSION
    );
}

/// Verify covers the index: an entry nothing backs, and state the index
/// lacks, are both reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_an_index_out_of_line_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestDaemon::with(|cfg| *cfg = sled_at(cfg, &data)).await;
    seed(&h.client(), 2).await;
    h.stop().await;
    {
        let db = crate::startup::open_when_released(&data);
        let tree = db.open_tree("consent").unwrap();
        tree.remove([&b"u/"[..], USER.as_bytes(), b"\0wxuser00"].concat())
            .unwrap();
        tree.insert([&b"u/ghost\0"[..], b"wxuser01"].concat(), &[][..])
            .unwrap();
        db.flush().unwrap();
    }
    let h = TestDaemon::with(|cfg| *cfg = sled_at(cfg, &data)).await;
    let v = h
        .client()
        .admin()
        .verify(pb::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!v.consistent);
    let text = v.mismatches.join("\n");
    assert!(text.contains("ghost in wxuser01"), "{text}");
    assert!(
        text.contains("user-erasable has stored state in wxuser00"),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field() {
    let h = TestDaemon::start().await;
    let c = h.client();
    assert_status(
        list(&c, "", "", 0, "").await,
        Code::InvalidArgument,
        "user_id",
    );
    assert_status(
        list(&c, USER, "scope.nope", 0, "").await,
        Code::InvalidArgument,
        "scope.nope",
    );
    assert_status(
        list(&c, USER, "", 0, "bad\ntoken").await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        c.auth()
            .reset_user(pb::ResetUserRequest {
                user_id: "x".repeat(200),
            })
            .await,
        Code::InvalidArgument,
        "user_id",
    );
    assert_status(
        c.admin()
            .erase_user(pb::EraseUserRequest { user_id: "".into() })
            .await,
        Code::InvalidArgument,
        "user_id",
    );
    h.stop().await;
}

/// `consentctl user list|reset|erase`: tables and JSON from the real
/// binary; erase refuses without a terminal unless --yes, and then erases
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consentctl_user_list_reset_and_erase() {
    use crate::support::child::{consentctl, run};
    let h = TestDaemon::start().await;
    let c = h.client();
    let apps = seed(&c, 3).await;
    let addr = h.addr().to_string();
    let ctl = |args: &[&str]| {
        let mut command = consentctl();
        command.arg("--addr").arg(&addr).args(args);
        run(&mut command)
    };
    let table = ctl(&["user", "list", USER]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    for app in &apps {
        assert!(table.stdout.contains(app.as_str()), "{}", table.stdout);
    }
    assert!(table.stdout.contains("scope.userLocationBackground"));
    let json = ctl(&["--json", "user", "list", USER, "--scope", "scope.camera"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["apps"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["apps"][0]["appId"], apps[1]);

    // stdin is not a terminal here: no erasure without --yes.
    let refused = ctl(&["user", "erase", USER]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("stdin is not a terminal"),
        "{}",
        refused.stderr
    );
    assert_eq!(list_all(&c, USER, "", 100).await.len(), 3, "nothing erased");

    let reset = ctl(&["--json", "user", "reset", OTHER]);
    assert_eq!(reset.code, 0, "{}", reset.stderr);
    let v: serde_json::Value = serde_json::from_str(&reset.stdout).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 3, "{v}");
    assert!(list_all(&c, OTHER, "", 100).await.is_empty());

    let erased = ctl(&["user", "erase", USER, "--yes"]);
    assert_eq!(erased.code, 0, "{}", erased.stderr);
    assert!(
        erased.stdout.contains("rewritten_records"),
        "{}",
        erased.stdout
    );
    assert!(list_all(&c, USER, "", 100).await.is_empty());
    h.stop().await;
}

/// `cfg` on the sled store at `data`: for tests that edit the sled data dir
/// itself (its format, its index keys); their etcd equivalents are in
/// `src/store/etcd_store.rs` (`etcd_verify_reports_an_index_out_of_line_both_ways`).
fn sled_at(cfg: &consentd::config::Config, data: &std::path::Path) -> consentd::config::Config {
    let mut cfg = crate::support::on_sled(cfg.clone());
    cfg.data_dir = data.to_path_buf();
    cfg
}
