//! The operator-facing Apps service: registration, validation, paging, deletion.

use consentd::pb::{self, Answer};
use tonic::Code;

use crate::fixture::{assert_status, bare_app, location_app, TestDaemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_get_update_and_list() {
    let h = TestDaemon::start().await;
    let c = h.client();
    let registered = c.register(location_app("wxloc")).await;
    let app = registered.app.unwrap();
    assert_eq!(app.revision, registered.revision);
    assert!(app.updated_at.is_some());
    assert_eq!(app.required_background_modes, ["location"]);
    assert_eq!(
        app.required_private_infos,
        [
            "getLocation",
            "startLocationUpdate",
            "startLocationUpdateBackground"
        ]
    );
    let got = c
        .apps()
        .get_app(pb::GetAppRequest {
            app_id: "wxloc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.app.unwrap(), app);

    assert_status(
        c.apps()
            .register_app(pb::RegisterAppRequest {
                app: Some(location_app("wxloc")),
            })
            .await,
        Code::AlreadyExists,
        "already registered",
    );
    let mut update = location_app("wxloc");
    update.required_private_infos = vec!["chooseAddress".into(), "chooseAddress".into()];
    let updated = c
        .apps()
        .update_app(pb::UpdateAppRequest { app: Some(update) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        updated.app.unwrap().required_private_infos,
        ["chooseAddress"],
        "duplicates collapse"
    );
    assert!(updated.revision > registered.revision);
    assert_status(
        c.apps()
            .update_app(pb::UpdateAppRequest {
                app: Some(bare_app("wxloc", pb::AppKind::MiniGame)),
            })
            .await,
        Code::FailedPrecondition,
        "kind cannot change",
    );
    assert_status(
        c.apps()
            .update_app(pb::UpdateAppRequest {
                app: Some(location_app("wxnew")),
            })
            .await,
        Code::NotFound,
        "not registered",
    );

    for i in 0..25 {
        c.register(bare_app(&format!("wx{i:02}"), pb::AppKind::MiniGame))
            .await;
    }
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .apps()
            .list_apps(pb::ListAppsRequest {
                page_size: 10,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.apps.len() <= 10);
        ids.extend(page.apps.into_iter().map(|a| a.app_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut want: Vec<String> = (0..25).map(|i| format!("wx{i:02}")).collect();
    want.push("wxloc".into());
    assert_eq!(ids, want);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_are_validated() {
    let h = TestDaemon::start().await;
    let c = h.client();
    let with = |f: &dyn Fn(&mut pb::App)| {
        let mut app = location_app("wxbad");
        f(&mut app);
        pb::RegisterAppRequest { app: Some(app) }
    };
    let cases: Vec<(pb::RegisterAppRequest, &str)> = vec![
        (
            with(&|a| {
                a.required_private_infos = vec!["getFuzzyLocation".into(), "getLocation".into()]
            }),
            "mutually exclusive",
        ),
        (
            with(&|a| {
                a.required_private_infos =
                    vec!["getFuzzyLocation".into(), "onLocationChange".into()]
            }),
            "onLocationChange",
        ),
        (
            with(&|a| a.required_private_infos = vec!["getPhoneNumber".into()]),
            "unknown value \"getPhoneNumber\"",
        ),
        (
            with(&|a| a.required_background_modes = vec!["gps".into()]),
            "app.required_background_modes",
        ),
        (
            with(&|a| {
                a.permission
                    .insert("scope.nope".into(), pb::PermissionDesc { desc: "x".into() });
            }),
            "app.permission \"scope.nope\"",
        ),
        (
            with(&|a| {
                a.permission.insert(
                    "scope.camera".into(),
                    pb::PermissionDesc {
                        desc: String::new(),
                    },
                );
            }),
            "desc must be 1 to 256",
        ),
        (
            with(&|a| a.kind = pb::AppKind::Unspecified.into()),
            "app.kind is required",
        ),
        (with(&|a| a.kind = 7), "app.kind 7"),
        (
            with(&|a| a.app_id = String::new()),
            "app.app_id \"\" is empty",
        ),
        (pb::RegisterAppRequest { app: None }, "app is required"),
    ];
    for (req, needle) in cases {
        assert_status(
            c.apps().register_app(req).await,
            Code::InvalidArgument,
            needle,
        );
    }
    // Mini games have no background location.
    let mut game = bare_app("wxgame", pb::AppKind::MiniGame);
    game.permission.insert(
        "scope.userLocationBackground".into(),
        pb::PermissionDesc { desc: "x".into() },
    );
    assert_status(
        c.apps()
            .register_app(pb::RegisterAppRequest { app: Some(game) })
            .await,
        Code::InvalidArgument,
        "does not exist for mini games",
    );
    assert_eq!(c.revision().await, 0, "nothing was registered");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_app_removes_every_users_decisions() {
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    c.register(location_app("wxkeep")).await;
    for user in ["u1", "u2", "u3"] {
        c.answer("wxloc", user, "scope.camera", Answer::Allow).await;
        c.answer("wxkeep", user, "scope.camera", Answer::Allow)
            .await;
    }
    c.answer("wxloc", "u1", "scope.userLocationBackground", Answer::Allow)
        .await;
    let deleted = c
        .apps()
        .delete_app(pb::DeleteAppRequest {
            app_id: "wxloc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.revoked_decisions, 5);
    assert_status(
        c.apps()
            .get_app(pb::GetAppRequest {
                app_id: "wxloc".into(),
            })
            .await,
        Code::NotFound,
        "not registered",
    );
    assert_status(
        c.authorize("wxloc", "u1", "scope.camera", crate::fixture::android())
            .await,
        Code::NotFound,
        "\"wxloc\"",
    );
    // Registered again, it starts from nothing.
    c.register(location_app("wxloc")).await;
    assert!(c.setting("wxloc", "u1").await.auth_setting.is_empty());
    assert_eq!(c.setting("wxkeep", "u1").await.auth_setting.len(), 1);
    c.assert_consistent().await;
    assert_status(
        c.apps()
            .delete_app(pb::DeleteAppRequest {
                app_id: "wxnone".into(),
            })
            .await,
        Code::NotFound,
        "\"wxnone\"",
    );
    h.stop().await;
}
