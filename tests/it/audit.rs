//! The consent audit trail (ListAudit) and the anti-nag policy.

use std::time::Duration;

use consentd::{auth::hash_token, pb};
use tonic::Code;

use crate::{
    fixture::{android, assert_status, location_app, Client, TestDaemon},
    security::{token_of, write_credentials},
};

const LOC: &str = "scope.userLocation";

fn query(app: &str) -> pb::ListAuditRequest {
    pb::ListAuditRequest {
        app_id: app.into(),
        ..Default::default()
    }
}

async fn list(c: &Client, req: pb::ListAuditRequest) -> pb::ListAuditResponse {
    c.auth().list_audit(req).await.unwrap().into_inner()
}

fn actions(r: &pb::ListAuditResponse) -> Vec<(String, String, String)> {
    r.records
        .iter()
        .map(|a| {
            (
                pb::AuditAction::try_from(a.action)
                    .unwrap()
                    .as_str_name()
                    .trim_start_matches("AUDIT_ACTION_")
                    .to_owned(),
                a.user_id.clone(),
                a.scope.clone(),
            )
        })
        .collect()
}

fn s(a: &str, u: &str, sc: &str) -> (String, String, String) {
    (a.into(), u.into(), sc.into())
}

/// Waits until the buffered prompt records are written (the housekeeping
/// tick), i.e. until the trail holds `n` records.
async fn wait_for(c: &Client, app: &str, n: usize) -> pb::ListAuditResponse {
    for _ in 0..200 {
        let r = list(c, query(app)).await;
        if r.records.len() >= n {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the trail of {app} never held {n} records");
}

async fn daemon(tweak: impl FnOnce(&mut consentd::config::Config)) -> TestDaemon {
    TestDaemon::with(|c| {
        c.grants.expiry_check_interval = Duration::from_millis(50);
        tweak(c);
    })
    .await
}

#[tokio::test]
async fn every_kind_of_consent_action_is_recorded_with_who_and_what_client() {
    let creds = tempfile::tempdir().unwrap();
    let path = write_credentials(
        creds.path(),
        &format!(
            "[[principal]]\nname = \"shop\"\nrole = \"runtime\"\napps = [\"wxaudit\"]\ntoken_sha256 = \"{}\"\n",
            hash_token("shop-token-0123456789")
        ),
    );
    let mut h = daemon(|c| c.credentials = Some(path)).await;
    let ops = crate::security::As::new(h.client().channel, Some(&token_of("ops")));
    let shop = crate::security::As::new(h.client().channel, Some("shop-token-0123456789"));
    ops.apps()
        .register_app(pb::RegisterAppRequest {
            app: Some(location_app("wxaudit")),
        })
        .await
        .unwrap();

    // A prompt shown, asked again while the popup is up (one record), answered.
    for _ in 0..3 {
        let d = shop
            .auth()
            .authorize(pb::AuthorizeRequest {
                app_id: "wxaudit".into(),
                user_id: "u1".into(),
                scope: "scope.camera".into(),
                client: Some(android()),
            })
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap();
        assert_eq!(d.outcome, pb::Outcome::Prompt as i32);
    }
    for (scope, answer) in [
        ("scope.camera", pb::Answer::Cancel),
        ("scope.camera", pb::Answer::Allow),
        ("scope.record", pb::Answer::Deny),
    ] {
        shop.auth()
            .record_decision(pb::RecordDecisionRequest {
                app_id: "wxaudit".into(),
                user_id: "u1".into(),
                scope: scope.into(),
                answer: answer.into(),
                client: Some(android()),
                lifetime: None,
            })
            .await
            .unwrap();
    }
    ops.auth()
        .update_setting(pb::UpdateSettingRequest {
            app_id: "wxaudit".into(),
            user_id: "u1".into(),
            auth_setting: [("scope.camera".to_string(), false)].into(),
            location: 0,
            lifetime: None,
        })
        .await
        .unwrap();
    ops.auth()
        .remove_app(pb::RemoveAppRequest {
            app_id: "wxaudit".into(),
            user_id: "u1".into(),
        })
        .await
        .unwrap();

    let ops_client = |r: pb::ListAuditRequest| {
        let ops = ops.clone();
        async move { ops.auth().list_audit(r).await.unwrap().into_inner() }
    };
    let mut all = ops_client(query("wxaudit")).await;
    for _ in 0..100 {
        if all.records.len() >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        all = ops_client(query("wxaudit")).await;
    }
    let mut got = actions(&all);
    // The prompt record is written by the housekeeping tick, so it may come
    // after the answers in the trail: compare it apart.
    let prompt_at = got
        .iter()
        .position(|a| a.0 == "PROMPT_SHOWN")
        .expect("the prompt is recorded");
    let prompt = got.remove(prompt_at);
    assert_eq!(prompt, s("PROMPT_SHOWN", "u1", "scope.camera"));
    assert_eq!(
        got,
        [
            s("OPERATOR_REGISTER_APP", "", ""),
            s("ANSWERED_CANCEL", "u1", "scope.camera"),
            s("ANSWERED_ALLOW", "u1", "scope.camera"),
            s("ANSWERED_DENY", "u1", "scope.record"),
            s("SETTINGS_CHANGED", "u1", "scope.camera"),
            s("APP_REMOVED", "u1", ""),
        ]
    );
    let by_action = |name: &str| {
        all.records
            .iter()
            .find(|r| pb::AuditAction::try_from(r.action).unwrap().as_str_name() == name)
            .unwrap()
            .clone()
    };
    let allow = by_action("AUDIT_ACTION_ANSWERED_ALLOW");
    assert_eq!(allow.principal, "shop");
    let client = allow.client.unwrap();
    assert_eq!(client.platform, pb::Platform::Android as i32);
    assert_eq!(client.host_version, "8.0.5");
    assert!(allow.time.is_some() && allow.revision > 0);
    assert_eq!(by_action("AUDIT_ACTION_SETTINGS_CHANGED").principal, "ops");
    assert_eq!(by_action("AUDIT_ACTION_PROMPT_SHOWN").principal, "shop");
    assert!(all.next_page_token.is_empty());

    // Filters and pages.
    let record_only = ops_client(pb::ListAuditRequest {
        scope: "scope.record".into(),
        ..query("wxaudit")
    })
    .await;
    assert_eq!(
        actions(&record_only),
        [s("ANSWERED_DENY", "u1", "scope.record")]
    );
    let none = ops_client(pb::ListAuditRequest {
        user_id: "u2".into(),
        ..query("wxaudit")
    })
    .await;
    assert!(none.records.is_empty());
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = ops_client(pb::ListAuditRequest {
            page_size: 2,
            page_token: token.clone(),
            ..query("wxaudit")
        })
        .await;
        assert!(page.records.len() <= 2);
        paged.extend(page.records.iter().map(|r| r.seq));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, all.records.iter().map(|r| r.seq).collect::<Vec<_>>());
    let last = all.records.last().unwrap().time.unwrap();
    let since = ops_client(pb::ListAuditRequest {
        since: Some(last),
        ..query("wxaudit")
    })
    .await;
    assert!(!since.records.is_empty() && since.records.len() < all.records.len());

    // Who may read it: operators and observers, not runtimes.
    let denied = shop.auth().list_audit(query("wxaudit")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // The trail survives a restart.
    h.restart().await;
    let ops = crate::security::As::new(h.client().channel, Some(&token_of("ops")));
    let again = ops
        .auth()
        .list_audit(query("wxaudit"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.records, all.records);
    assert_status(
        ops.auth()
            .list_audit(pb::ListAuditRequest {
                page_token: "x".into(),
                ..query("wxaudit")
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    h.stop().await;
}

#[tokio::test]
async fn lapses_sessions_privacy_and_operator_deletes_are_recorded() {
    let h = daemon(|_| {}).await;
    let c = h.client();
    c.register(pb::App {
        privacy: Some(pb::PrivacyGuide {
            name: "Guide".into(),
            info_types: vec!["location".into(), "camera".into()],
            version: 0,
        }),
        ..location_app("wxlife")
    })
    .await;
    c.auth()
        .record_privacy_decision(pb::RecordPrivacyDecisionRequest {
            app_id: "wxlife".into(),
            user_id: "u1".into(),
            agree: true,
        })
        .await
        .unwrap();
    let until = std::time::SystemTime::now() + Duration::from_millis(300);
    let until = until.duration_since(std::time::UNIX_EPOCH).unwrap();
    c.auth()
        .record_decision(pb::RecordDecisionRequest {
            app_id: "wxlife".into(),
            user_id: "u1".into(),
            scope: LOC.into(),
            answer: pb::Answer::Allow.into(),
            client: Some(android()),
            lifetime: Some(pb::GrantLifetime {
                kind: Some(pb::grant_lifetime::Kind::Until(prost_types::Timestamp {
                    seconds: until.as_secs() as i64,
                    nanos: until.subsec_nanos() as i32,
                })),
            }),
        })
        .await
        .unwrap();
    c.auth()
        .end_session(pb::EndSessionRequest {
            app_id: "wxlife".into(),
            user_id: "u1".into(),
            session_id: "s1".into(),
        })
        .await
        .unwrap();
    let trail = wait_for(&c, "wxlife", 5).await;
    let expired = trail
        .records
        .iter()
        .find(|r| r.action == pb::AuditAction::Expired as i32)
        .expect("the lapse is recorded");
    assert_eq!(expired.principal, "consentd");
    assert_eq!(expired.scope, LOC);
    assert_eq!(
        actions(&trail)
            .into_iter()
            .map(|a| a.0)
            .filter(|a| a != "EXPIRED")
            .collect::<Vec<_>>(),
        [
            "OPERATOR_REGISTER_APP",
            "PRIVACY_AGREED",
            "ANSWERED_ALLOW",
            "SESSION_ENDED"
        ]
    );
    assert_eq!(trail.records[1].principal, "local (authentication off)");

    c.apps()
        .delete_app(pb::DeleteAppRequest {
            app_id: "wxlife".into(),
        })
        .await
        .unwrap();
    // The trail outlives the registration.
    let after = list(&c, query("wxlife")).await;
    assert_eq!(
        actions(&after).last().map(|a| a.0.clone()),
        Some("OPERATOR_DELETE_APP".to_string())
    );
    h.stop().await;
}

#[tokio::test]
async fn the_trail_keeps_its_own_retention() {
    let h = daemon(|c| {
        c.audit.retention = consentd::store::Retention {
            max_events: Some(3),
            max_age: None,
        };
        c.compaction_interval = Duration::from_millis(100);
    })
    .await;
    let c = h.client();
    c.register(location_app("wxkeep")).await;
    for scope in [
        "scope.camera",
        "scope.record",
        "scope.bluetooth",
        "scope.werun",
    ] {
        c.answer("wxkeep", "u1", scope, pb::Answer::Deny).await;
    }
    let mut trail = list(&c, query("wxkeep")).await;
    for _ in 0..100 {
        if trail.records.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        trail = list(&c, query("wxkeep")).await;
    }
    assert_eq!(
        actions(&trail).into_iter().map(|a| a.2).collect::<Vec<_>>(),
        ["scope.record", "scope.bluetooth", "scope.werun"]
    );
    // The event log's own retention is untouched: all four denials stay.
    let verify = c.assert_consistent().await;
    assert_eq!(verify.retained_events, 4);
    h.stop().await;
}

#[tokio::test]
async fn anti_nag_embargoes_prompts_after_repeated_cancels_only_when_on() {
    // Off by default: cancel as often as you like, the popup comes back.
    let off = daemon(|_| {}).await;
    let c = off.client();
    c.register(location_app("wxnag")).await;
    for _ in 0..5 {
        c.answer("wxnag", "u1", "scope.camera", pb::Answer::Cancel)
            .await;
    }
    assert_eq!(
        c.decision("wxnag", "u1", "scope.camera").await.outcome,
        pb::Outcome::Prompt as i32
    );
    off.stop().await;

    let on = TestDaemon::with_manual_clock(|c| {
        c.grants.expiry_check_interval = Duration::from_millis(50);
        c.anti_nag = Some(consentd::domain::NagPolicy {
            max_cancels: 2,
            embargo_ms: 800,
        })
    })
    .await;
    let c = on.client();
    c.register(location_app("wxnag")).await;
    c.answer("wxnag", "u1", "scope.camera", pb::Answer::Cancel)
        .await;
    assert_eq!(
        c.decision("wxnag", "u1", "scope.camera").await.outcome,
        pb::Outcome::Prompt as i32
    );
    c.answer("wxnag", "u1", "scope.camera", pb::Answer::Cancel)
        .await;
    let d = c.decision("wxnag", "u1", "scope.camera").await;
    assert_eq!(d.outcome, pb::Outcome::Embargoed as i32, "{d:?}");
    assert_eq!(d.reason, pb::Reason::PromptEmbargoed as i32);
    assert_eq!(d.err_msg, "authorize:fail auth cancel");
    assert!(d.embargo_until.is_some());
    assert!(d.prompt.is_none());
    // Another scope, or another user, is not affected.
    assert_eq!(
        c.decision("wxnag", "u1", "scope.record").await.outcome,
        pb::Outcome::Prompt as i32
    );
    assert_eq!(
        c.decision("wxnag", "u2", "scope.camera").await.outcome,
        pb::Outcome::Prompt as i32
    );
    assert_status(
        c.record("wxnag", "u1", "scope.camera", pb::Answer::Allow, android())
            .await,
        Code::FailedPrecondition,
        "anti-nag",
    );
    // A malformed answer is refused as such, embargo or not (the model test
    // found the embargo answered first).
    assert_status(
        c.record(
            "wxnag",
            "u1",
            "scope.camera",
            pb::Answer::AllowWhileUsing,
            android(),
        )
        .await,
        Code::InvalidArgument,
        "ALLOW_WHILE_USING is only valid for scope.userLocationBackground",
    );
    // Explain runs the same pipeline: it sees the embargo too.
    let explained = c
        .auth()
        .explain(pb::AuthorizeRequest {
            app_id: "wxnag".into(),
            user_id: "u1".into(),
            scope: "scope.camera".into(),
            client: Some(android()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        explained.decision,
        Some(d.clone()),
        "Explain agrees with Authorize"
    );
    let last = explained.steps.last().unwrap();
    assert!(!last.passed && last.check.contains("anti-nag"), "{last:?}");
    on.advance(Duration::from_millis(900));
    assert_eq!(
        c.decision("wxnag", "u1", "scope.camera").await.outcome,
        pb::Outcome::Prompt as i32
    );
    // Deleting the mini program forgets the count too.
    c.answer("wxnag", "u1", "scope.record", pb::Answer::Cancel)
        .await;
    c.answer("wxnag", "u1", "scope.record", pb::Answer::Cancel)
        .await;
    assert_eq!(
        c.decision("wxnag", "u1", "scope.record").await.outcome,
        pb::Outcome::Embargoed as i32
    );
    c.remove("wxnag", "u1").await;
    assert_eq!(
        c.decision("wxnag", "u1", "scope.record").await.outcome,
        pb::Outcome::Prompt as i32
    );
    c.answer("wxnag", "u1", "scope.camera", pb::Answer::Allow)
        .await;
    // Prompt records are written by the housekeeping tick, after the
    // answers: wait until the tick has run since the last read.
    let suppressed = |t: &pb::ListAuditResponse| {
        actions(t)
            .iter()
            .any(|a| a.0 == "PROMPT_SUPPRESSED" && a.2 == "scope.camera")
    };
    let mut trail = wait_for(&c, "wxnag", 6).await;
    for _ in 0..200 {
        if suppressed(&trail) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        trail = list(&c, query("wxnag")).await;
    }
    assert!(suppressed(&trail));
    on.stop().await;
}
