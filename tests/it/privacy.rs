//! The privacy-agreement gate: apps that declare a privacy guide need the
//! user's agreement before the scope gates; apps without one are unchanged.

use std::time::Duration;

use consentd::pb;
use tonic::Code;

use crate::fixture::{android, assert_status, location_app, Client, TestDaemon};

const LOC: &str = "scope.userLocation";

fn guided_app(id: &str, types: &[&str]) -> pb::App {
    pb::App {
        privacy: Some(pb::PrivacyGuide {
            name: "Shop Privacy Guide".into(),
            info_types: types.iter().map(|t| t.to_string()).collect(),
            version: 0,
        }),
        ..location_app(id)
    }
}

async fn privacy_setting(c: &Client, app: &str) -> pb::GetPrivacySettingResponse {
    c.auth()
        .get_privacy_setting(pb::GetPrivacySettingRequest {
            app_id: app.into(),
            user_id: "u1".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn answer_privacy(c: &Client, app: &str, agree: bool) -> pb::RecordPrivacyDecisionResponse {
    c.auth()
        .record_privacy_decision(pb::RecordPrivacyDecisionRequest {
            app_id: app.into(),
            user_id: "u1".into(),
            agree,
        })
        .await
        .unwrap()
        .into_inner()
}

#[track_caller]
fn assert_decision(d: &pb::Decision, outcome: pb::Outcome, err_msg: &str, err_no: u32) {
    assert_eq!(d.outcome, outcome as i32, "{d:?}");
    assert_eq!(d.err_msg, err_msg, "{d:?}");
    assert_eq!(d.err_no, err_no, "{d:?}");
}

#[tokio::test]
async fn apps_without_a_guide_behave_as_before() {
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(location_app("wxplain")).await;
    let setting = privacy_setting(&c, "wxplain").await;
    assert!(!setting.need_authorization);
    assert_eq!(setting.privacy_contract_name, "");
    assert_eq!(setting.err_msg, "getPrivacySetting:ok");
    assert_decision(
        &c.decision("wxplain", "u1", LOC).await,
        pb::Outcome::Prompt,
        "",
        0,
    );
    let status = c
        .auth()
        .record_privacy_decision(pb::RecordPrivacyDecisionRequest {
            app_id: "wxplain".into(),
            user_id: "u1".into(),
            agree: true,
        })
        .await;
    assert_status(
        status,
        Code::FailedPrecondition,
        "declares no privacy guide",
    );
    h.stop().await;
}

#[tokio::test]
async fn the_gate_from_undeclared_to_agreed_and_again_when_the_guide_grows() {
    let mut h = TestDaemon::with_manual_clock(|c| {
        c.grants.privacy_disagree_gap = Duration::from_millis(700)
    })
    .await;
    let c = h.client();
    let registered = c.register(guided_app("wxguide", &["location"])).await;
    assert_eq!(registered.app.unwrap().privacy.unwrap().version, 1);

    // A scope whose information type the guide does not declare.
    assert_decision(
        &c.decision("wxguide", "u1", "scope.camera").await,
        pb::Outcome::NotDeclared,
        "authorize:fail api scope is not declared in the privacy agreement",
        112,
    );
    let check = c
        .check("wxguide", "u1", "wx.getLocation", android())
        .await
        .unwrap();
    assert_eq!(check.outcome, pb::Outcome::PrivacyRequired as i32);

    // Declared but not agreed: the privacy agreement comes first.
    let d = c.decision("wxguide", "u1", LOC).await;
    assert_decision(&d, pb::Outcome::PrivacyRequired, "", 0);
    assert_eq!(d.reason, pb::Reason::PrivacyAgreementNeeded as i32);
    let setting = privacy_setting(&c, "wxguide").await;
    assert!(setting.need_authorization);
    assert_eq!(setting.privacy_contract_name, "Shop Privacy Guide");
    assert_status(
        c.record("wxguide", "u1", LOC, pb::Answer::Allow, android())
            .await,
        Code::FailedPrecondition,
        "privacy gate",
    );

    // Disagreed: calls fail without a popup for the gap, then ask again.
    let answered = answer_privacy(&c, "wxguide", false).await;
    assert!(answered.need_authorization);
    assert_decision(
        &c.decision("wxguide", "u1", LOC).await,
        pb::Outcome::PrivacyDenied,
        "authorize:fail privacy permission is not authorized",
        104,
    );
    h.advance(Duration::from_millis(800));
    assert_decision(
        &c.decision("wxguide", "u1", LOC).await,
        pb::Outcome::PrivacyRequired,
        "",
        0,
    );

    // Agreed: the scope gates take over.
    let answered = answer_privacy(&c, "wxguide", true).await;
    assert!(!answered.need_authorization);
    assert_eq!(answered.version, 1);
    assert!(!privacy_setting(&c, "wxguide").await.need_authorization);
    assert_decision(
        &c.decision("wxguide", "u1", LOC).await,
        pb::Outcome::Prompt,
        "",
        0,
    );
    c.answer("wxguide", "u1", LOC, pb::Answer::Allow).await;
    assert_decision(
        &c.decision("wxguide", "u1", LOC).await,
        pb::Outcome::Granted,
        "authorize:ok",
        0,
    );

    // The guide gains a type: everyone agrees again; decisions are kept.
    let updated = c
        .apps()
        .update_app(pb::UpdateAppRequest {
            app: Some(guided_app("wxguide", &["location", "camera"])),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.app.unwrap().privacy.unwrap().version, 2);
    assert!(privacy_setting(&c, "wxguide").await.need_authorization);
    assert_decision(
        &c.decision("wxguide", "u1", LOC).await,
        pb::Outcome::PrivacyRequired,
        "",
        0,
    );
    assert_eq!(answer_privacy(&c, "wxguide", true).await.version, 2);

    // Both the guide and the answer survive a restart.
    h.restart().await;
    let c = h.client();
    assert!(!privacy_setting(&c, "wxguide").await.need_authorization);
    assert_decision(
        &c.decision("wxguide", "u1", LOC).await,
        pb::Outcome::Granted,
        "authorize:ok",
        0,
    );
    let app = c
        .apps()
        .get_app(pb::GetAppRequest {
            app_id: "wxguide".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .app
        .unwrap();
    assert_eq!(app.privacy.unwrap().info_types, ["location", "camera"]);

    // Deleting the mini program forgets the agreement too.
    c.remove("wxguide", "u1").await;
    assert!(privacy_setting(&c, "wxguide").await.need_authorization);
    h.stop().await;
}

#[tokio::test]
async fn explain_names_the_privacy_gate_and_bad_guides_are_refused() {
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(guided_app("wxguide", &["location"])).await;
    let explained = c
        .auth()
        .explain(pb::AuthorizeRequest {
            app_id: "wxguide".into(),
            user_id: "u1".into(),
            scope: LOC.into(),
            client: Some(android()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explained.steps.len(), 1);
    assert_eq!(explained.steps[0].gate, 0);
    assert!(!explained.steps[0].passed);
    assert!(explained.steps[0].check.contains("privacy guide"));

    for (types, needle) in [
        (vec!["telepathy"], "unknown type"),
        (vec!["location", "🙂"], "unknown type"),
    ] {
        let status = c
            .apps()
            .register_app(pb::RegisterAppRequest {
                app: Some(guided_app("wxbad", &types)),
            })
            .await;
        assert_status(status, Code::InvalidArgument, needle);
    }
    let unnamed = pb::App {
        privacy: Some(pb::PrivacyGuide {
            name: " ".into(),
            info_types: vec!["camera".into()],
            version: 0,
        }),
        ..location_app("wxbad")
    };
    assert_status(
        c.apps()
            .register_app(pb::RegisterAppRequest { app: Some(unnamed) })
            .await,
        Code::InvalidArgument,
        "app.privacy.name",
    );
    h.stop().await;
}

#[tokio::test]
async fn a_guide_dropped_and_declared_again_needs_a_new_agreement() {
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(guided_app("wxagain", &["location"])).await;
    answer_privacy(&c, "wxagain", true).await;
    assert!(!privacy_setting(&c, "wxagain").await.need_authorization);
    let update = |app: pb::App| {
        let c = c.clone();
        async move {
            c.apps()
                .update_app(pb::UpdateAppRequest { app: Some(app) })
                .await
                .unwrap()
                .into_inner()
                .app
                .unwrap()
        }
    };
    // Without a guide the gate is off...
    let plain = update(location_app("wxagain")).await;
    assert!(plain.privacy.is_none());
    assert!(!privacy_setting(&c, "wxagain").await.need_authorization);
    // ...and a new guide is a new version: the old agreement does not count.
    let again = update(guided_app("wxagain", &["location", "camera"])).await;
    assert_eq!(again.privacy.unwrap().version, 2);
    assert!(privacy_setting(&c, "wxagain").await.need_authorization);
    assert_eq!(
        c.decision("wxagain", "u1", LOC).await.outcome,
        pb::Outcome::PrivacyRequired as i32
    );
    h.stop().await;
}
