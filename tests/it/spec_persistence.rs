//! Decisions last until changed (SPEC section 2): a graceful restart on the
//! same data dir gives the same answers, and the revision continues.

use std::collections::BTreeMap;

use consentd::pb::{self, Answer, AppKind, LocationOption};

use crate::util::{android, app, location_app, sorted, TestDaemon, BACKGROUND, LOCATION};

const APPS: [&str; 3] = ["wxloc", "wxgame", "wxgone"];
const USERS: [&str; 3] = ["u", "v", "w"];

/// Everything a client can observe, keyed for comparison.
#[derive(Debug, PartialEq)]
struct Snapshot {
    revision: u64,
    apps: BTreeMap<String, Option<pb::App>>,
    settings: BTreeMap<String, Vec<(String, bool)>>,
    decisions: BTreeMap<String, Vec<pb::Decision>>,
}

async fn snapshot(h: &TestDaemon) -> Snapshot {
    let scopes: Vec<String> = h
        .list_scopes(AppKind::Unspecified)
        .await
        .scopes
        .into_iter()
        .map(|s| s.scope)
        .collect();
    let mut snap = Snapshot {
        revision: h.revision().await,
        apps: BTreeMap::new(),
        settings: BTreeMap::new(),
        decisions: BTreeMap::new(),
    };
    for app_id in APPS {
        let registered = h.get_app(app_id).await.ok().and_then(|r| r.app);
        let exists = registered.is_some();
        snap.apps.insert(app_id.into(), registered);
        if !exists {
            continue;
        }
        for user in USERS {
            let key = format!("{app_id}/{user}");
            let setting = h.setting(app_id, user).await;
            snap.settings
                .insert(key.clone(), sorted(&setting.auth_setting));
            let batch = h
                .auth
                .clone()
                .batch_authorize(pb::BatchAuthorizeRequest {
                    app_id: app_id.into(),
                    user_id: user.into(),
                    scopes: scopes.clone(),
                    client: Some(android()),
                })
                .await
                .unwrap()
                .into_inner();
            snap.decisions.insert(key, batch.decisions);
        }
    }
    snap
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_every_answer_and_the_revision_continues() {
    let mut h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.register(app("wxgame", AppKind::MiniGame)).await;
    h.register(location_app("wxgone")).await;
    h.answer("wxloc", "u", BACKGROUND, Answer::Allow).await;
    h.answer("wxloc", "u", "scope.camera", Answer::Deny).await;
    h.answer("wxloc", "v", LOCATION, Answer::Allow).await;
    h.answer("wxloc", "v", "scope.record", Answer::Allow).await;
    h.update_setting(
        "wxloc",
        "v",
        &[("scope.record", false)],
        LocationOption::Unspecified,
    )
    .await
    .unwrap();
    h.answer("wxloc", "w", "scope.werun", Answer::Allow).await;
    h.remove_app("wxloc", "w").await.unwrap();
    h.answer("wxgame", "u", "scope.userInfo", Answer::Allow)
        .await;
    h.answer("wxgame", "v", "scope.WxFriendInteraction", Answer::Deny)
        .await;
    h.answer("wxgone", "u", "scope.camera", Answer::Allow).await;
    h.apps
        .clone()
        .delete_app(pb::DeleteAppRequest {
            app_id: "wxgone".into(),
        })
        .await
        .unwrap();

    let before = snapshot(&h).await;
    assert!(before.revision > 0);
    assert_eq!(before.settings["wxloc/u"].len(), 3, "{before:?}");
    assert_eq!(before.apps["wxgone"], None);

    h.restart().await;
    assert_eq!(snapshot(&h).await, before, "after a restart");
    // Twice, with no write between: still the same.
    h.restart().await;
    assert_eq!(snapshot(&h).await, before, "after a second restart");

    // The next write continues the revision sequence.
    let resp = h.answer("wxloc", "v", "scope.camera", Answer::Allow).await;
    assert!(
        resp.revision > before.revision,
        "revision {} after restart is not above {}",
        resp.revision,
        before.revision
    );
    let registered = h.try_register(location_app("wxnew")).await.unwrap();
    assert!(registered.revision > resp.revision);

    h.restart().await;
    assert_eq!(h.revision().await, registered.revision);
    assert_eq!(
        sorted(&h.setting("wxloc", "v").await.auth_setting),
        crate::util::setting_of(&[
            (LOCATION, true),
            ("scope.record", false),
            ("scope.camera", true)
        ])
    );
    assert!(h.get_app("wxnew").await.is_ok());
    h.stop().await;
}
