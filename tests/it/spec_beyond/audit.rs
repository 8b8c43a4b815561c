//! Issue #8, part 3: the consent audit trail (what is recorded, filters and
//! pages, retention, the principal).

use std::time::{Duration, Instant, SystemTime};

use consentd::{
    pb::{self, Answer, AppKind, AuditAction, Cause, LocationOption, Outcome, Platform},
    store::Retention,
};
use tonic::Code;

use crate::{
    support::export,
    util::{
        android, app, client, expect_status, location_app, with_privacy, TestDaemon, BACKGROUND,
    },
};

use AuditAction as A;

use super::{
    allow_for, audit_all, audit_req, audit_until, count, find, next_events, one_time, short_expiry,
    time_of, ts, until, watch, BLUETOOTH, CAMERA, GUIDE, RECORD, WERUN,
};

fn actions(records: &[pb::AuditRecord]) -> Vec<(String, String, AuditAction)> {
    records
        .iter()
        .map(|r| (r.user_id.clone(), r.scope.clone(), r.action()))
        .collect()
}

fn ios() -> pb::ClientInfo {
    client(Platform::Ios, "8.0.44", "2.30.1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_every_prompt_answer_and_change_with_client_and_time() {
    let h = TestDaemon::start().await;
    let t0 = SystemTime::now();
    h.register(location_app("wxaud")).await;

    // Prompts shown: camera on Android (twice: the popup is still up, one
    // record), bluetooth on iOS.
    assert_eq!(
        h.decision("wxaud", "u", CAMERA).await.outcome(),
        Outcome::Prompt
    );
    assert_eq!(
        h.decision("wxaud", "u", CAMERA).await.outcome(),
        Outcome::Prompt
    );
    assert_eq!(
        h.decision_for("wxaud", "u", BLUETOOTH, ios())
            .await
            .outcome(),
        Outcome::Prompt
    );
    let allow = h.answer("wxaud", "u", CAMERA, Answer::Allow).await;
    h.answer("wxaud", "u", RECORD, Answer::Deny).await;
    let cancel = h
        .record("wxaud", "u", BLUETOOTH, Answer::Cancel, ios())
        .await
        .unwrap();
    assert_eq!(cancel.err_msg, "authorize:fail auth cancel");
    h.answer("wxaud", "u", BACKGROUND, Answer::AllowWhileUsing)
        .await;
    // Two scopes changed on the settings page: two records.
    h.update_setting(
        "wxaud",
        "u",
        &[(CAMERA, false), (RECORD, true)],
        LocationOption::Unspecified,
    )
    .await
    .unwrap();
    h.remove_app("wxaud", "u").await.unwrap();
    h.update_app(location_app("wxaud")).await.unwrap();
    h.apps
        .clone()
        .delete_app(pb::DeleteAppRequest {
            app_id: "wxaud".into(),
        })
        .await
        .unwrap();

    // The trail outlives the registration.
    let trail = audit_until(&h, "wxaud", |r| {
        count(r, "u", CAMERA, A::PromptShown) >= 1 && count(r, "u", BLUETOOTH, A::PromptShown) >= 1
    })
    .await;
    let t1 = SystemTime::now();

    let mut committed: Vec<_> = actions(&trail)
        .into_iter()
        .filter(|(_, _, a)| *a != A::PromptShown)
        .collect();
    // RemoveApp may be one record or one per forgotten scope.
    committed.dedup_by(|a, b| a.2 == A::AppRemoved && b.2 == A::AppRemoved);
    let s = |user: &str, scope: &str, a: AuditAction| (user.to_string(), scope.to_string(), a);
    assert_eq!(
        committed.iter().map(|(_, _, a)| *a).collect::<Vec<_>>(),
        vec![
            A::OperatorRegisterApp,
            A::AnsweredAllow,
            A::AnsweredDeny,
            A::AnsweredCancel,
            A::AnsweredAllowWhileUsing,
            A::SettingsChanged,
            A::SettingsChanged,
            A::AppRemoved,
            A::OperatorUpdateApp,
            A::OperatorDeleteApp,
        ],
        "{committed:#?}"
    );
    assert_eq!(
        committed[1..5].to_vec(),
        vec![
            s("u", CAMERA, A::AnsweredAllow),
            s("u", RECORD, A::AnsweredDeny),
            s("u", BLUETOOTH, A::AnsweredCancel),
            s("u", BACKGROUND, A::AnsweredAllowWhileUsing),
        ]
    );
    let mut settings_pair = committed[5..7].to_vec();
    settings_pair.sort();
    assert_eq!(
        settings_pair,
        vec![
            s("u", CAMERA, A::SettingsChanged),
            s("u", RECORD, A::SettingsChanged)
        ]
    );
    assert_eq!(committed[7].0, "u");
    for r in &trail {
        assert_eq!(r.app_id, "wxaud");
    }
    // The same popup asked for twice while up is one record.
    assert_eq!(count(&trail, "u", CAMERA, A::PromptShown), 1, "{trail:#?}");
    assert_eq!(
        count(&trail, "u", BLUETOOTH, A::PromptShown),
        1,
        "{trail:#?}"
    );

    // Positions, times, principals, clients.
    for pair in trail.windows(2) {
        assert!(pair[0].seq < pair[1].seq, "oldest first: {trail:#?}");
    }
    let principal = &trail[0].principal;
    assert!(
        !principal.is_empty() && principal != "consentd",
        "{principal:?}"
    );
    for r in &trail {
        let t = time_of(&r.time);
        assert!(
            t + Duration::from_millis(5) >= t0 && t <= t1,
            "time of {r:?}"
        );
        assert_eq!(
            &r.principal, principal,
            "auth is off: the local operator, {r:?}"
        );
        assert!(r.revision > 0, "{r:?}");
    }
    let with_client = |scope: &str, a: AuditAction| find(&trail, scope, a).client.clone();
    assert_eq!(with_client(CAMERA, A::PromptShown), Some(android()));
    assert_eq!(with_client(BLUETOOTH, A::PromptShown), Some(ios()));
    assert_eq!(with_client(CAMERA, A::AnsweredAllow), Some(android()));
    assert_eq!(with_client(RECORD, A::AnsweredDeny), Some(android()));
    assert_eq!(with_client(BLUETOOTH, A::AnsweredCancel), Some(ios()));
    // The settings page names no client.
    assert_eq!(with_client(CAMERA, A::SettingsChanged), None);
    // Written in the commit of the change: its revision.
    assert_eq!(
        find(&trail, CAMERA, A::AnsweredAllow).revision,
        allow.revision
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_lapses_sessions_privacy_answers_and_imports() {
    let h = TestDaemon::start_with_manual_clock(short_expiry).await;
    h.register(with_privacy(
        app("wxaud", AppKind::MiniProgram),
        GUIDE,
        &["camera", "microphone"],
    ))
    .await;
    h.record_privacy("wxaud", "v", false).await.unwrap();
    h.record_privacy("wxaud", "u", true).await.unwrap();
    let mut live = watch(&h, "wxaud", None).await;
    allow_for(
        &h,
        "wxaud",
        "u",
        CAMERA,
        until(h.now() + Duration::from_millis(300)),
    )
    .await;
    allow_for(&h, "wxaud", "u", RECORD, one_time("s1")).await;
    let mut events = next_events(&mut live, 2, Duration::from_secs(3)).await;
    h.advance(Duration::from_millis(300));
    events.extend(next_events(&mut live, 1, Duration::from_secs(3)).await);
    assert_eq!(events[2].cause(), Cause::Expired);
    let ended = h.end_session("wxaud", "u", "s1").await.unwrap();
    assert_eq!(ended.changes.len(), 1);

    let trail = audit_until(&h, "wxaud", |r| {
        r.iter().any(|r| r.action() == A::SessionEnded)
    })
    .await;
    let v = trail
        .iter()
        .find(|r| r.action() == A::PrivacyDisagreed)
        .unwrap_or_else(|| panic!("no PRIVACY_DISAGREED in {trail:#?}"));
    assert_eq!(v.user_id, "v");
    let u = trail
        .iter()
        .find(|r| r.action() == A::PrivacyAgreed)
        .unwrap_or_else(|| panic!("no PRIVACY_AGREED in {trail:#?}"));
    assert_eq!(u.user_id, "u");
    assert!(v.seq < u.seq);
    let expired = find(&trail, CAMERA, A::Expired);
    assert_eq!(
        (expired.principal.as_str(), expired.user_id.as_str()),
        ("consentd", "u")
    );
    assert_eq!(expired.revision, events[2].revision);
    let session = trail
        .iter()
        .find(|r| r.action() == A::SessionEnded)
        .unwrap();
    assert_eq!(session.user_id, "u");
    assert_ne!(
        session.principal, "consentd",
        "the runtime ended the session"
    );
    assert!(session.seq > expired.seq);

    // An operator import is audited too.
    h.answer("wxaud", "u", CAMERA, Answer::Deny).await;
    let mut admin = h.admin();
    let records = export(&h.channel(), false).await;
    h.apps
        .clone()
        .delete_app(pb::DeleteAppRequest {
            app_id: "wxaud".into(),
        })
        .await
        .unwrap();
    let before_import = audit_all(&h, audit_req("wxaud")).await;
    let imported = admin
        .import(tokio_stream::iter(records))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((imported.apps, imported.decisions), (1, 1));
    let trail = audit_all(&h, audit_req("wxaud")).await;
    let new = &trail[before_import.len()..];
    let import = new
        .iter()
        .find(|r| r.action() == A::OperatorImport)
        .unwrap_or_else(|| panic!("no OPERATOR_IMPORT after an import: {new:#?}"));
    assert!(!import.principal.is_empty() && import.principal != "consentd");
    assert_eq!(
        crate::util::sorted(&h.setting("wxaud", "u").await.auth_setting),
        crate::util::setting_of(&[(CAMERA, false)])
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_audit_filters_by_user_scope_and_time_and_pages() {
    let h = TestDaemon::start_with(|c| c.audit.record_prompts = false).await;
    h.register(app("wxaud", AppKind::MiniProgram)).await;
    h.register(app("wxother", AppKind::MiniProgram)).await;
    h.answer("wxaud", "u", CAMERA, Answer::Allow).await;
    h.answer("wxaud", "v", CAMERA, Answer::Deny).await;
    h.answer("wxaud", "u", RECORD, Answer::Deny).await;
    h.answer("wxother", "u", CAMERA, Answer::Allow).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let since = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.answer("wxaud", "v", RECORD, Answer::Allow).await;
    h.answer("wxaud", "u", BLUETOOTH, Answer::Cancel).await;
    h.update_setting(
        "wxaud",
        "u",
        &[(CAMERA, false)],
        LocationOption::Unspecified,
    )
    .await
    .unwrap();

    let all = audit_all(&h, audit_req("wxaud")).await;
    let s = |user: &str, scope: &str, a: AuditAction| (user.to_string(), scope.to_string(), a);
    assert_eq!(
        actions(&all),
        vec![
            s("", "", A::OperatorRegisterApp),
            s("u", CAMERA, A::AnsweredAllow),
            s("v", CAMERA, A::AnsweredDeny),
            s("u", RECORD, A::AnsweredDeny),
            s("v", RECORD, A::AnsweredAllow),
            s("u", BLUETOOTH, A::AnsweredCancel),
            s("u", CAMERA, A::SettingsChanged),
        ]
    );
    let of = |keep: &dyn Fn(&pb::AuditRecord) -> bool| -> Vec<pb::AuditRecord> {
        all.iter().filter(|r| keep(r)).cloned().collect()
    };

    let req = |user: &str, scope: &str, since: Option<SystemTime>| pb::ListAuditRequest {
        app_id: "wxaud".into(),
        user_id: user.into(),
        scope: scope.into(),
        since: since.map(ts),
        ..Default::default()
    };
    assert_eq!(
        audit_all(&h, req("u", "", None)).await,
        of(&|r| r.user_id == "u")
    );
    assert_eq!(
        audit_all(&h, req("", CAMERA, None)).await,
        of(&|r| r.scope == CAMERA)
    );
    assert_eq!(
        audit_all(&h, req("v", RECORD, None)).await,
        of(&|r| r.user_id == "v" && r.scope == RECORD)
    );
    let recent = audit_all(&h, req("", "", Some(since))).await;
    assert_eq!(recent, all[4..].to_vec());
    assert_eq!(
        audit_all(&h, req("u", "", Some(since))).await,
        all[5..].to_vec()
    );
    assert!(audit_all(&h, req("nobody", "", None)).await.is_empty());
    let other = audit_all(&h, audit_req("wxother")).await;
    assert_eq!(
        actions(&other),
        vec![
            s("", "", A::OperatorRegisterApp),
            s("u", CAMERA, A::AnsweredAllow)
        ]
    );

    // Pages of 2: the same records, in order, then an empty token.
    let mut paged = Vec::new();
    let mut req = pb::ListAuditRequest {
        page_size: 2,
        ..audit_req("wxaud")
    };
    let mut pages = 0;
    loop {
        let page = h.list_audit(req.clone()).await.unwrap();
        pages += 1;
        assert!(page.records.len() <= 2, "{page:?}");
        paged.extend(page.records);
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
        assert!(pages < 10);
    }
    assert_eq!(paged, all);
    assert_eq!(pages, 4);
    // Filters and pages together.
    let filtered_pages = {
        let mut out = Vec::new();
        let mut req = pb::ListAuditRequest {
            page_size: 1,
            user_id: "u".into(),
            ..audit_req("wxaud")
        };
        loop {
            let page = h.list_audit(req.clone()).await.unwrap();
            assert!(page.records.len() <= 1);
            out.extend(page.records);
            if page.next_page_token.is_empty() {
                break out;
            }
            req.page_token = page.next_page_token;
        }
    };
    assert_eq!(filtered_pages, of(&|r| r.user_id == "u"));
    // The default page holds everything here.
    let page = h.list_audit(audit_req("wxaud")).await.unwrap();
    assert_eq!(
        (page.records, page.next_page_token.as_str()),
        (all.clone(), "")
    );
    h.stop().await;
}

/// Audit retention is its own: trimming the trail keeps the Watch log, and
/// trimming the Watch log keeps the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_is_independent_of_the_watch_log() {
    let a = TestDaemon::start_with(|c| {
        c.audit.record_prompts = false;
        c.audit.retention = Retention {
            max_events: Some(3),
            max_age: None,
        };
        c.compaction_interval = Duration::from_millis(100);
    })
    .await;
    let w = TestDaemon::start_with(|c| {
        c.audit.record_prompts = false;
        c.retention = Retention {
            max_events: Some(1),
            max_age: None,
        };
        c.compaction_interval = Duration::from_millis(100);
    })
    .await;
    let r0 = a.revision().await;
    for h in [&a, &w] {
        h.register(app("wxret", AppKind::MiniProgram)).await;
        for scope in [CAMERA, RECORD, BLUETOOTH, WERUN] {
            h.answer("wxret", "u", scope, Answer::Allow).await;
        }
        h.update_setting(
            "wxret",
            "u",
            &[(CAMERA, false)],
            LocationOption::Unspecified,
        )
        .await
        .unwrap();
    }
    // The trail of `a` is trimmed to its newest three records...
    let kept = audit_until(&a, "wxret", |r| r.len() <= 3).await;
    let s = |scope: &str, act: AuditAction| ("u".to_string(), scope.to_string(), act);
    assert_eq!(
        actions(&kept),
        vec![
            s(BLUETOOTH, A::AnsweredAllow),
            s(WERUN, A::AnsweredAllow),
            s(CAMERA, A::SettingsChanged),
        ]
    );
    // ...while its event log (default retention) still replays everything.
    let mut replay = watch(&a, "wxret", Some(r0)).await;
    let events = next_events(&mut replay, 5, Duration::from_secs(2)).await;
    assert_eq!(events.last().unwrap().cause(), Cause::Settings);

    // `w` trimmed its event log to one event...
    let start = Instant::now();
    loop {
        let res = w
            .auth
            .clone()
            .watch(pb::WatchRequest {
                start_revision: Some(r0),
                ..Default::default()
            })
            .await;
        match res {
            Err(status) if status.code() == Code::OutOfRange => break,
            _ => {
                assert!(
                    start.elapsed() < Duration::from_secs(3),
                    "event log never trimmed"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // ...and kept its whole trail.
    let trail = audit_all(&w, audit_req("wxret")).await;
    assert_eq!(trail.len(), 6, "{trail:#?}");
    a.stop().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_older_than_max_age_are_trimmed() {
    let max_age = Duration::from_secs(1);
    let h = TestDaemon::start_with_manual_clock(|c| {
        c.audit.record_prompts = false;
        c.audit.retention = Retention {
            max_events: None,
            max_age: Some(max_age),
        };
        c.compaction_interval = Duration::from_millis(100);
    })
    .await;
    h.register(app("wxage", AppKind::MiniProgram)).await;
    h.answer("wxage", "u", CAMERA, Answer::Allow).await;
    assert_eq!(audit_all(&h, audit_req("wxage")).await.len(), 2);
    // Nothing is trimmed until it is older than max_age: a few compactions
    // (every 100 ms in real time) with the records exactly max_age old.
    h.advance(max_age);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(audit_all(&h, audit_req("wxage")).await.len(), 2);
    h.advance(Duration::from_millis(1));
    h.answer("wxage", "u", RECORD, Answer::Allow).await;
    let kept = audit_until(&h, "wxage", |r| r.len() == 1).await;
    assert_eq!(
        actions(&kept),
        vec![("u".to_string(), RECORD.to_string(), A::AnsweredAllow)]
    );
    h.stop().await;
}

/// With authentication on, each record names the principal that made the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_principal_is_the_authenticated_caller() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let digest = |token: &str| format!("{:x}", Sha256::digest(token.as_bytes()));
    let creds = dir.path().join("credentials.toml");
    std::fs::write(
        &creds,
        format!(
            r#"
[[principal]]
name = "ops"
role = "operator"
token_sha256 = "{}"

[[principal]]
name = "shop-runtime"
role = "runtime"
apps = ["wxauth"]
token_sha256 = "{}"

[[principal]]
name = "settings-page"
role = "settings"
apps = ["*"]
token_sha256 = "{}"
"#,
            digest("ops-token"),
            digest("runtime-token"),
            digest("settings-token"),
        ),
    )
    .unwrap();
    let h = TestDaemon::start_with(|c| c.credentials = Some(creds.clone())).await;
    let channel = h.channel();
    let with = |token: &'static str| {
        let channel = channel.clone();
        pb::authorization_client::AuthorizationClient::with_interceptor(
            channel,
            move |mut req: tonic::Request<()>| {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                Ok(req)
            },
        )
    };
    let mut ops_apps = pb::apps_client::AppsClient::with_interceptor(
        channel.clone(),
        |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("authorization", "Bearer ops-token".parse().unwrap());
            Ok(req)
        },
    );
    ops_apps
        .register_app(pb::RegisterAppRequest {
            app: Some(app("wxauth", AppKind::MiniProgram)),
        })
        .await
        .unwrap();
    with("runtime-token")
        .record_decision(pb::RecordDecisionRequest {
            app_id: "wxauth".into(),
            user_id: "u".into(),
            scope: CAMERA.into(),
            answer: Answer::Allow.into(),
            client: Some(ios()),
            lifetime: None,
        })
        .await
        .unwrap();
    with("settings-token")
        .update_setting(pb::UpdateSettingRequest {
            app_id: "wxauth".into(),
            user_id: "u".into(),
            auth_setting: [(CAMERA.to_string(), false)].into_iter().collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let trail = with("ops-token")
        .list_audit(audit_req("wxauth"))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(
        trail
            .iter()
            .map(|r| (r.action(), r.principal.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (A::OperatorRegisterApp, "ops"),
            (A::AnsweredAllow, "shop-runtime"),
            (A::SettingsChanged, "settings-page"),
        ]
    );
    assert_eq!(trail[1].client, Some(ios()));
    // The runtime may not read the trail.
    expect_status(
        with("runtime-token").list_audit(audit_req("wxauth")).await,
        Code::PermissionDenied,
        "shop-runtime",
    );
    h.stop().await;
}

/// "One record per changed scope": a settings call that changes nothing
/// writes no SETTINGS_CHANGED record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_has_no_settings_record_for_a_settings_call_that_changes_nothing() {
    let h = TestDaemon::start_with(|c| c.audit.record_prompts = false).await;
    h.register(app("wxaud", AppKind::MiniProgram)).await;
    h.answer("wxaud", "u", CAMERA, Answer::Allow).await;
    let before = audit_all(&h, audit_req("wxaud")).await;
    let r = h
        .update_setting("wxaud", "u", &[(CAMERA, true)], LocationOption::Unspecified)
        .await
        .unwrap();
    assert!(r.changes.is_empty());
    assert_eq!(audit_all(&h, audit_req("wxaud")).await, before);
    h.stop().await;
}
