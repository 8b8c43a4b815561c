//! The Apps service (SPEC section 2 "App", notes/semantics.md "Apps"):
//! register, get, list with paging, update, delete, and declaration checks.

use std::collections::BTreeSet;

use consentd::pb::{self, Answer, AppKind, Outcome};
use tonic::Code;

use crate::util::{
    app, expect_status, fuzzy_app, location_app, Declare, TestDaemon, BACKGROUND, FUZZY, LOCATION,
    LOCATION_DESC,
};

/// kind, permission (scope, desc), background modes, private infos.
type Declarations = (
    i32,
    Vec<(String, String)>,
    BTreeSet<String>,
    BTreeSet<String>,
);

/// The declarations of an app, order-insensitive.
fn declarations(a: &pb::App) -> Declarations {
    let mut permission: Vec<_> = a
        .permission
        .iter()
        .map(|(k, v)| (k.clone(), v.desc.clone()))
        .collect();
    permission.sort();
    (
        a.kind,
        permission,
        a.required_background_modes.iter().cloned().collect(),
        a.required_private_infos.iter().cloned().collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_get_update_and_delete() {
    let h = TestDaemon::start().await;
    let declared = location_app("wxloc");
    let before = h.revision().await;
    let registered = h.try_register(declared.clone()).await.unwrap();
    let stored = registered.app.clone().unwrap();
    assert_eq!(stored.app_id, "wxloc");
    assert_eq!(declarations(&stored), declarations(&declared));
    assert!(registered.revision > before);
    assert_eq!(stored.revision, registered.revision);
    assert!(stored.updated_at.is_some(), "{stored:?}");

    let got = h.get_app("wxloc").await.unwrap();
    assert_eq!(got.app.as_ref(), Some(&stored));
    assert_eq!(got.revision, h.revision().await);

    expect_status(h.try_register(declared).await, Code::AlreadyExists, "wxloc");

    // Update replaces the declarations.
    let narrower = app("wxloc", AppKind::MiniProgram)
        .desc(LOCATION, "new desc")
        .private_infos(&["getLocation"]);
    let updated = h.update_app(narrower.clone()).await.unwrap();
    assert!(updated.revision > registered.revision);
    let new = h.get_app("wxloc").await.unwrap().app.unwrap();
    assert_eq!(declarations(&new), declarations(&narrower));
    assert_eq!(new.revision, updated.revision);
    assert_eq!(
        h.decision("wxloc", "u", LOCATION)
            .await
            .prompt
            .unwrap()
            .app_desc,
        "new desc"
    );
    // No background mode any more.
    assert_eq!(
        h.decision("wxloc", "u", BACKGROUND).await.outcome(),
        Outcome::NotDeclared
    );

    expect_status(
        h.update_app(app("wxloc", AppKind::MiniGame)).await,
        Code::FailedPrecondition,
        "kind",
    );
    expect_status(
        h.update_app(app("wxnope", AppKind::MiniProgram)).await,
        Code::NotFound,
        "wxnope",
    );
    assert_eq!(h.get_app("wxloc").await.unwrap().app.unwrap(), new);
    expect_status(h.get_app("wxnope").await, Code::NotFound, "wxnope");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_app_removes_the_registration_and_every_users_decisions() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.register(location_app("wxkept")).await;
    h.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    h.answer("wxloc", "u", "scope.record", Answer::Deny).await;
    h.answer("wxloc", "v", BACKGROUND, Answer::Allow).await; // two decisions
    h.answer("wxkept", "u", "scope.camera", Answer::Allow).await;
    let before = h.revision().await;

    let deleted = h
        .apps
        .clone()
        .delete_app(pb::DeleteAppRequest {
            app_id: "wxloc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.revoked_decisions, 4);
    assert!(deleted.revision > before);
    assert_eq!(h.revision().await, deleted.revision);

    expect_status(h.get_app("wxloc").await, Code::NotFound, "wxloc");
    expect_status(
        h.authorize("wxloc", "u", "scope.camera", crate::util::android())
            .await,
        Code::NotFound,
        r#"app "wxloc" is not registered"#,
    );
    let again = h
        .apps
        .clone()
        .delete_app(pb::DeleteAppRequest {
            app_id: "wxloc".into(),
        })
        .await;
    expect_status(again, Code::NotFound, "wxloc");
    assert_eq!(
        h.decision("wxkept", "u", "scope.camera").await.outcome(),
        Outcome::Granted
    );

    // Registered again, it starts from nothing.
    h.register(location_app("wxloc")).await;
    for user in ["u", "v"] {
        assert!(h.setting("wxloc", user).await.auth_setting.is_empty());
        assert_eq!(
            h.decision("wxloc", user, "scope.camera").await.outcome(),
            Outcome::Prompt
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_apps_pages_through_every_app_once() {
    let h = TestDaemon::start().await;
    let ids: BTreeSet<String> = (0..7).map(|i| format!("wxapp{i}")).collect();
    for id in &ids {
        h.register(app(id, AppKind::MiniGame)).await;
    }
    let list = |page_size: u32, page_token: String| {
        let mut apps = h.apps.clone();
        async move {
            apps.list_apps(pb::ListAppsRequest {
                page_size,
                page_token,
            })
            .await
            .unwrap()
            .into_inner()
        }
    };

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(3, token).await;
        assert_eq!(page.revision, h.revision().await);
        sizes.push(page.apps.len());
        seen.extend(page.apps.into_iter().map(|a| a.app_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(sizes.len() < 10, "paging does not end");
    }
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(seen.len(), ids.len(), "an app listed twice: {seen:?}");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), ids);

    // 0 means the default page size (100): everything at once.
    let all = list(0, String::new()).await;
    assert_eq!(all.apps.len(), 7);
    assert!(all.next_page_token.is_empty());
    h.stop().await;
}

/// Invalid declarations are INVALID_ARGUMENT naming what is wrong, and
/// nothing is registered or changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_are_validated() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxkept")).await;
    let revision = h.revision().await;
    let mp = || app("wxbad", AppKind::MiniProgram);
    let mut unknown_kind = mp();
    unknown_kind.kind = 99;
    let mut cases: Vec<(pb::App, &str)> = vec![
        (app("wxbad", AppKind::Unspecified), "kind"),
        (unknown_kind, "kind"),
        (mp().desc("scope.foo", "x"), "scope.foo"),
        (mp().desc("scope.userlocation", "x"), "scope.userlocation"),
        // A scope that does not exist for a mini game.
        (
            app("wxbad", AppKind::MiniGame).desc(BACKGROUND, "x"),
            BACKGROUND,
        ),
        (mp().desc(LOCATION, ""), "desc"),
        (mp().desc(LOCATION, &"x".repeat(257)), "desc"),
        (mp().private_infos(&["getWifi"]), "getWifi"),
        (mp().private_infos(&["wx.getLocation"]), "wx.getLocation"),
        (mp().background_modes(&["bluetooth"]), "bluetooth"),
        (app("", AppKind::MiniProgram), "app_id"),
    ];
    // getFuzzyLocation excludes every precise location interface.
    for precise in [
        "getLocation",
        "onLocationChange",
        "startLocationUpdate",
        "startLocationUpdateBackground",
    ] {
        cases.push((
            mp().desc(FUZZY, "x")
                .private_infos(&["getFuzzyLocation", precise]),
            "getFuzzyLocation",
        ));
        cases.push((mp().private_infos(&[precise, "getFuzzyLocation"]), precise));
    }
    for (bad, needle) in cases {
        let what = format!("{bad:?}");
        let status = h.try_register(bad.clone()).await;
        assert!(status.is_err(), "registered: {what}");
        expect_status(status, Code::InvalidArgument, needle);
        // The same declarations cannot be set on an existing app either.
        if !bad.app_id.is_empty() && bad.kind == AppKind::MiniProgram as i32 {
            let update = pb::App {
                app_id: "wxkept".into(),
                ..bad
            };
            expect_status(h.update_app(update).await, Code::InvalidArgument, needle);
        }
    }
    expect_status(
        h.apps
            .clone()
            .register_app(pb::RegisterAppRequest { app: None })
            .await,
        Code::InvalidArgument,
        "app",
    );
    assert_eq!(h.revision().await, revision);
    expect_status(h.get_app("wxbad").await, Code::NotFound, "wxbad");
    assert_eq!(
        h.get_app("wxkept").await.unwrap().app.unwrap().permission,
        location_app("wxkept").permission
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_declarations_at_the_edges() {
    let h = TestDaemon::start().await;
    let longest = "d".repeat(256);
    let stored = h
        .register(
            app("wxedge", AppKind::MiniProgram)
                .desc(LOCATION, &longest)
                .background_modes(&["audio", "location"])
                .private_infos(&["getLocation", "chooseAddress", "getLocation"]),
        )
        .await;
    assert_eq!(stored.permission[LOCATION].desc, longest);
    let mut infos = stored.required_private_infos.clone();
    infos.sort();
    assert_eq!(
        infos,
        ["chooseAddress", "getLocation"],
        "duplicates removed"
    );

    // Fuzzy goes with the non-conflicting location interfaces.
    h.register(fuzzy_app("wxfuzzy", AppKind::MiniProgram).private_infos(&[
        "getFuzzyLocation",
        "chooseLocation",
        "choosePoi",
        "chooseAddress",
    ]))
    .await;
    // Mini games declare too.
    h.register(app("wxgame", AppKind::MiniGame).desc(LOCATION, LOCATION_DESC))
        .await;
    h.register(app(&"a".repeat(128), AppKind::MiniGame)).await;
    h.stop().await;
}
