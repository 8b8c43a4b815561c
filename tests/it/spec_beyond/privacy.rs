//! Issue #8, part 1: the privacy-agreement gate (errno 112 for types the
//! guide lacks, asked, recorded, asked again when the guide grows, kept
//! across restarts).

use std::time::Duration;

use consentd::{
    config::Config,
    pb::{Answer, AppKind, Outcome, Reason},
};

use crate::util::{
    android, app, assert_decision, expect_refused, location_app, with_privacy, TestDaemon, LOCATION,
};

use super::{BLUETOOTH, CAMERA, GUIDE, NOT_IN_GUIDE, PRIVACY_DENIED, RECORD, WERUN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_types_missing_from_the_guide_are_not_declared_with_errno_112() {
    let h = TestDaemon::start().await;
    h.register(with_privacy(
        location_app("wxpriv"),
        GUIDE,
        &["location", "camera"],
    ))
    .await;
    let undeclared = [
        RECORD,                   // microphone
        "scope.writePhotosAlbum", // album
        "scope.addPhoneContact",  // contacts
        "scope.addPhoneCalendar", // calendar
        BLUETOOTH,
        WERUN,
    ];
    for agreed in [false, true] {
        for scope in undeclared {
            let d = h.decision("wxpriv", "u", scope).await;
            assert_decision(
                &d,
                Outcome::NotDeclared,
                Reason::PrivacyNotDeclared,
                &format!("authorize:{NOT_IN_GUIDE}"),
            );
            assert_eq!(d.err_no, 112, "{scope} (agreed: {agreed}): {d:?}");
        }
        // CheckApi: the errMsg names the interface.
        for (api, prefix) in [
            ("wx.startRecord", "startRecord"),
            ("wx.saveImageToPhotosAlbum", "saveImageToPhotosAlbum"),
            ("wx.getWeRunData", "getWeRunData"),
        ] {
            let r = h.check_api("wxpriv", "u", api, android()).await.unwrap();
            assert_eq!(
                (r.outcome(), r.err_msg.as_str()),
                (
                    Outcome::NotDeclared,
                    format!("{prefix}:{NOT_IN_GUIDE}").as_str()
                ),
                "{api}: {r:?}"
            );
            assert_eq!(r.decisions.len(), 1, "{r:?}");
            assert_eq!(
                (r.decisions[0].reason(), r.decisions[0].err_no),
                (Reason::PrivacyNotDeclared, 112)
            );
        }
        // Agreeing to the guide does not declare what it does not cover.
        let answer = h.record_privacy("wxpriv", "u", true).await.unwrap();
        assert!(!answer.need_authorization);
    }
    // Declared types pass the privacy gate once agreed.
    let d = h.decision("wxpriv", "u", CAMERA).await;
    assert_decision(&d, Outcome::Prompt, Reason::PopupAvailable, "");
    assert_eq!(d.err_no, 0);
    // A popup answer for an undeclared scope is refused and records nothing.
    expect_refused(
        h.record("wxpriv", "u", RECORD, Answer::Allow, android())
            .await,
        Outcome::NotDeclared,
    );
    assert!(h.setting("wxpriv", "u").await.auth_setting.is_empty());
    h.stop().await;
}

/// The privacy gate runs before the scope gates: its answer wins over the
/// declaration gate (missing desc, missing requiredPrivateInfos).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_gate_runs_before_the_scope_gates() {
    let h = TestDaemon::start().await;
    // No location desc, no requiredPrivateInfos: gate 3 would say NOT_DECLARED.
    h.register(with_privacy(
        app("wxbare", AppKind::MiniProgram),
        GUIDE,
        &["camera"],
    ))
    .await;
    h.register(with_privacy(
        app("wxloc", AppKind::MiniProgram),
        GUIDE,
        &["location"],
    ))
    .await;

    let d = h.decision("wxbare", "u", LOCATION).await;
    assert_decision(
        &d,
        Outcome::NotDeclared,
        Reason::PrivacyNotDeclared,
        &format!("authorize:{NOT_IN_GUIDE}"),
    );
    assert_eq!(d.err_no, 112);
    let r = h
        .check_api("wxbare", "u", "wx.getLocation", android())
        .await
        .unwrap();
    assert_eq!(
        (r.outcome(), r.err_msg.as_str()),
        (
            Outcome::NotDeclared,
            format!("getLocation:{NOT_IN_GUIDE}").as_str()
        )
    );
    assert_eq!(r.decisions[0].err_no, 112);

    // Declared but not agreed: the agreement comes first, not the desc error.
    let d = h.decision("wxloc", "u", LOCATION).await;
    assert_eq!(
        (d.outcome(), d.reason(), d.err_no),
        (Outcome::PrivacyRequired, Reason::PrivacyAgreementNeeded, 0),
        "{d:?}"
    );
    let r = h
        .check_api("wxloc", "u", "wx.getLocation", android())
        .await
        .unwrap();
    assert_eq!(r.outcome(), Outcome::PrivacyRequired, "{r:?}");
    // Agreed: the scope gates decide again, exactly as before.
    h.record_privacy("wxloc", "u", true).await.unwrap();
    let d = h.decision("wxloc", "u", LOCATION).await;
    assert_decision(
        &d,
        Outcome::NotDeclared,
        Reason::MissingPermissionDesc,
        "authorize:fail:require permission desc",
    );
    assert_eq!(d.err_no, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_agreement_is_asked_recorded_and_asked_again_when_the_guide_grows() {
    let h = TestDaemon::start().await;
    let registered = h
        .register(with_privacy(
            location_app("wxpriv"),
            GUIDE,
            &["location", "camera"],
        ))
        .await;
    let guide = registered.privacy.clone().expect("the guide is stored");
    assert_eq!((guide.name.as_str(), guide.info_types.len()), (GUIDE, 2));
    let v1 = guide.version;

    let s = h.get_privacy("wxpriv", "u").await.unwrap();
    assert_eq!(
        (
            s.need_authorization,
            s.privacy_contract_name.as_str(),
            s.err_msg.as_str()
        ),
        (true, GUIDE, "getPrivacySetting:ok")
    );
    for scope in [LOCATION, CAMERA] {
        let d = h.decision("wxpriv", "u", scope).await;
        assert_eq!(
            (d.outcome(), d.reason(), d.err_no),
            (Outcome::PrivacyRequired, Reason::PrivacyAgreementNeeded, 0),
            "{scope}: {d:?}"
        );
    }
    let r = h
        .check_api("wxpriv", "u", "camera", android())
        .await
        .unwrap();
    assert_eq!(r.outcome(), Outcome::PrivacyRequired, "{r:?}");
    // No popup answer before the agreement.
    let before = h.revision().await;
    expect_refused(
        h.record("wxpriv", "u", CAMERA, Answer::Allow, android())
            .await,
        Outcome::PrivacyRequired,
    );
    assert_eq!(h.revision().await, before);

    let agreed = h.record_privacy("wxpriv", "u", true).await.unwrap();
    assert_eq!((agreed.need_authorization, agreed.version), (false, v1));
    let s = h.get_privacy("wxpriv", "u").await.unwrap();
    assert_eq!(
        (s.need_authorization, s.privacy_contract_name.as_str()),
        (false, GUIDE)
    );
    assert_decision(
        &h.decision("wxpriv", "u", LOCATION).await,
        Outcome::Prompt,
        Reason::PopupAvailable,
        "",
    );
    h.answer("wxpriv", "u", LOCATION, Answer::Allow).await;
    let r = h
        .check_api("wxpriv", "u", "wx.getLocation", android())
        .await
        .unwrap();
    assert_eq!(
        (r.outcome(), r.err_msg.as_str()),
        (Outcome::Granted, "getLocation:ok")
    );
    // Per (app, user): another user still has to agree.
    assert!(
        h.get_privacy("wxpriv", "v")
            .await
            .unwrap()
            .need_authorization
    );
    assert_eq!(
        h.decision("wxpriv", "v", LOCATION).await.outcome(),
        Outcome::PrivacyRequired
    );

    // The same guide again: same version, the agreement stands.
    let same = h
        .update_app(with_privacy(
            location_app("wxpriv"),
            GUIDE,
            &["location", "camera"],
        ))
        .await
        .unwrap();
    assert_eq!(same.app.unwrap().privacy.unwrap().version, v1);
    assert!(
        !h.get_privacy("wxpriv", "u")
            .await
            .unwrap()
            .need_authorization
    );

    // The guide gains a type: a newer version the user must agree to again,
    // and the privacy gate comes before the stored grant.
    let grown = h
        .update_app(with_privacy(
            location_app("wxpriv"),
            GUIDE,
            &["location", "camera", "bluetooth"],
        ))
        .await
        .unwrap();
    let v2 = grown.app.unwrap().privacy.unwrap().version;
    assert!(v2 > v1, "version {v2} did not grow from {v1}");
    assert!(
        h.get_privacy("wxpriv", "u")
            .await
            .unwrap()
            .need_authorization
    );
    let d = h.decision("wxpriv", "u", LOCATION).await;
    assert_eq!(
        (d.outcome(), d.reason()),
        (Outcome::PrivacyRequired, Reason::PrivacyAgreementNeeded),
        "{d:?}"
    );
    let again = h.record_privacy("wxpriv", "u", true).await.unwrap();
    assert_eq!((again.need_authorization, again.version), (false, v2));
    assert_decision(
        &h.decision("wxpriv", "u", LOCATION).await,
        Outcome::Granted,
        Reason::StoredGrant,
        "authorize:ok",
    );
    assert_eq!(
        h.decision("wxpriv", "u", BLUETOOTH).await.outcome(),
        Outcome::Prompt
    );

    // README: RemoveApp forgets the agreement with the decisions.
    h.remove_app("wxpriv", "u").await.unwrap();
    assert!(
        h.get_privacy("wxpriv", "u")
            .await
            .unwrap()
            .need_authorization
    );
    assert_eq!(
        h.decision("wxpriv", "u", LOCATION).await.outcome(),
        Outcome::PrivacyRequired
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_disagreement_fails_without_a_popup_for_the_gap() {
    let gap = Duration::from_secs(1);
    let h = TestDaemon::start_with_manual_clock(|c| c.grants.privacy_disagree_gap = gap).await;
    // The default gap (10 s) on a second daemon, disagreed at the same time.
    let d10 = TestDaemon::start_with_manual_clock(|_| {}).await;
    let default_gap = Config::default().grants.privacy_disagree_gap;
    assert_eq!(default_gap, Duration::from_secs(10));
    for d in [&h, &d10] {
        d.register(with_privacy(
            location_app("wxpriv"),
            GUIDE,
            &["location", "camera"],
        ))
        .await;
    }
    let r = h.record_privacy("wxpriv", "u", false).await.unwrap();
    assert!(r.need_authorization);
    d10.record_privacy("wxpriv", "u", false).await.unwrap();

    let d = h.decision("wxpriv", "u", LOCATION).await;
    assert_decision(
        &d,
        Outcome::PrivacyDenied,
        Reason::PrivacyDisagreed,
        &format!("authorize:{PRIVACY_DENIED}"),
    );
    assert_eq!(d.err_no, 104);
    for (api, prefix) in [("wx.getLocation", "getLocation"), ("camera", "camera")] {
        let r = h.check_api("wxpriv", "u", api, android()).await.unwrap();
        assert_eq!(
            (r.outcome(), r.err_msg.as_str()),
            (
                Outcome::PrivacyDenied,
                format!("{prefix}:{PRIVACY_DENIED}").as_str()
            ),
            "{api}"
        );
        assert_eq!(r.decisions[0].err_no, 104, "{r:?}");
    }
    let s = h.get_privacy("wxpriv", "u").await.unwrap();
    assert_eq!(
        (s.need_authorization, s.privacy_contract_name.as_str()),
        (true, GUIDE)
    );
    expect_refused(
        h.record("wxpriv", "u", CAMERA, Answer::Allow, android())
            .await,
        Outcome::PrivacyDenied,
    );
    // Only that user.
    assert_eq!(
        h.decision("wxpriv", "v", LOCATION).await.outcome(),
        Outcome::PrivacyRequired
    );

    // Not a millisecond before the gap ends...
    let ms = Duration::from_millis(1);
    h.advance(gap - ms);
    assert_eq!(
        h.decision("wxpriv", "u", LOCATION).await.outcome(),
        Outcome::PrivacyDenied
    );
    // ...after the gap the agreement is asked for again.
    h.advance(ms);
    let d = h.decision("wxpriv", "u", LOCATION).await;
    assert_eq!(
        (d.outcome(), d.reason(), d.err_no),
        (Outcome::PrivacyRequired, Reason::PrivacyAgreementNeeded, 0),
        "{d:?}"
    );
    // ...while the default 10 s gap still holds on the other daemon, to
    // its last millisecond.
    for by in [gap, default_gap - gap - ms] {
        d10.advance(by);
        let d = d10.decision("wxpriv", "u", LOCATION).await;
        assert_eq!(
            (d.outcome(), d.err_no),
            (Outcome::PrivacyDenied, 104),
            "{d:?}"
        );
    }
    d10.advance(ms);
    assert_eq!(
        d10.decision("wxpriv", "u", LOCATION).await.outcome(),
        Outcome::PrivacyRequired
    );

    h.record_privacy("wxpriv", "u", true).await.unwrap();
    assert_eq!(
        h.decision("wxpriv", "u", LOCATION).await.outcome(),
        Outcome::Prompt
    );
    h.stop().await;
    d10.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_guide_and_agreements_survive_a_restart() {
    let mut h = TestDaemon::start().await;
    h.register(with_privacy(
        location_app("wxpriv"),
        GUIDE,
        &["location", "camera"],
    ))
    .await;
    h.record_privacy("wxpriv", "u", true).await.unwrap();
    h.answer("wxpriv", "u", CAMERA, Answer::Allow).await;
    h.record_privacy("wxpriv", "w", false).await.unwrap();
    let guide = h.get_app("wxpriv").await.unwrap().app.unwrap().privacy;

    h.restart().await;

    assert_eq!(
        h.get_app("wxpriv").await.unwrap().app.unwrap().privacy,
        guide
    );
    assert!(
        !h.get_privacy("wxpriv", "u")
            .await
            .unwrap()
            .need_authorization
    );
    assert_decision(
        &h.decision("wxpriv", "u", CAMERA).await,
        Outcome::Granted,
        Reason::StoredGrant,
        "authorize:ok",
    );
    assert_eq!(
        h.decision("wxpriv", "u", LOCATION).await.outcome(),
        Outcome::Prompt
    );
    // Never answered: still asked.
    assert!(
        h.get_privacy("wxpriv", "v")
            .await
            .unwrap()
            .need_authorization
    );
    assert_eq!(
        h.decision("wxpriv", "v", CAMERA).await.outcome(),
        Outcome::PrivacyRequired
    );
    // Disagreed moments ago (default gap 10 s): still no popup.
    let d = h.decision("wxpriv", "w", CAMERA).await;
    assert_eq!(
        (d.outcome(), d.err_no),
        (Outcome::PrivacyDenied, 104),
        "{d:?}"
    );
    // Undeclared stays undeclared.
    assert_eq!(h.decision("wxpriv", "u", RECORD).await.err_no, 112);

    // The version keeps growing after the restart.
    let v1 = guide.unwrap().version;
    let grown = h
        .update_app(with_privacy(
            location_app("wxpriv"),
            GUIDE,
            &["location", "camera", "werun"],
        ))
        .await
        .unwrap();
    assert!(grown.app.unwrap().privacy.unwrap().version > v1);
    assert!(
        h.get_privacy("wxpriv", "u")
            .await
            .unwrap()
            .need_authorization
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_without_a_guide_behave_as_before() {
    let h = TestDaemon::start().await;
    let registered = h.register(location_app("wxplain")).await;
    assert_eq!(registered.privacy, None);
    let s = h.get_privacy("wxplain", "u").await.unwrap();
    assert_eq!(
        (
            s.need_authorization,
            s.privacy_contract_name.as_str(),
            s.err_msg.as_str()
        ),
        (false, "", "getPrivacySetting:ok")
    );
    for scope in [LOCATION, CAMERA, RECORD, WERUN, BLUETOOTH] {
        let d = h.decision("wxplain", "u", scope).await;
        assert_decision(&d, Outcome::Prompt, Reason::PopupAvailable, "");
        assert_eq!(d.err_no, 0);
    }
    h.answer("wxplain", "u", CAMERA, Answer::Allow).await;
    h.answer("wxplain", "u", RECORD, Answer::Deny).await;
    let r = h
        .check_api("wxplain", "u", "wx.startRecord", android())
        .await
        .unwrap();
    assert_eq!(
        (r.outcome(), r.err_msg.as_str()),
        (Outcome::Denied, "startRecord:fail auth deny")
    );
    let d = h.decision("wxplain", "u", CAMERA).await;
    assert_decision(&d, Outcome::Granted, Reason::StoredGrant, "authorize:ok");
    // Permanent grants carry no lifetime.
    assert_eq!((d.expires_at, d.session_id.as_str()), (None, ""));
    h.stop().await;
}
