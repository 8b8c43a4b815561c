//! SPEC section 2 "Revision": every response carries one; every committed
//! change strictly increases it; reads and no-op writes report the current one.

use consentd::pb::{self, Answer, AppKind, LocationOption, Outcome};
use tonic::Code;

use crate::util::{android, expect_refused, expect_status, location_app, TestDaemon, LOCATION};

/// The revision every read RPC reports, by RPC name.
async fn read_revisions(h: &TestDaemon) -> Vec<(&'static str, u64)> {
    let mut auth = h.auth.clone();
    let mut apps = h.apps.clone();
    let authorize = || pb::AuthorizeRequest {
        app_id: "wxloc".into(),
        user_id: "u".into(),
        scope: LOCATION.into(),
        client: Some(android()),
    };
    vec![
        (
            "Authorize",
            h.authorize("wxloc", "u", LOCATION, android())
                .await
                .unwrap()
                .revision,
        ),
        (
            "BatchAuthorize",
            auth.batch_authorize(pb::BatchAuthorizeRequest {
                app_id: "wxloc".into(),
                user_id: "u".into(),
                scopes: vec![LOCATION.into(), "scope.camera".into()],
                client: Some(android()),
            })
            .await
            .unwrap()
            .into_inner()
            .revision,
        ),
        (
            "CheckApi",
            h.check_api("wxloc", "u", "camera", android())
                .await
                .unwrap()
                .revision,
        ),
        (
            "Explain",
            auth.explain(authorize())
                .await
                .unwrap()
                .into_inner()
                .revision,
        ),
        ("GetSetting", h.setting("wxloc", "u").await.revision),
        ("OpenSetting", h.open_setting("wxloc", "u").await.revision),
        (
            "ListScopes",
            h.list_scopes(AppKind::Unspecified).await.revision,
        ),
        ("GetRules", h.rules().await.revision),
        ("GetApp", h.get_app("wxloc").await.unwrap().revision),
        (
            "ListApps",
            apps.list_apps(pb::ListAppsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .revision,
        ),
    ]
}

#[track_caller]
fn assert_all_report(reads: &[(&str, u64)], revision: u64, after: &str) {
    for (rpc, got) in reads {
        assert_eq!(*got, revision, "{rpc} after {after}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_increase_the_revision_and_reads_report_it() {
    let h = TestDaemon::start().await;
    let mut last = h.revision().await;
    let mut step = |name: &str, revision: u64| {
        assert!(
            revision > last,
            "{name}: revision {revision} not above {last}"
        );
        last = revision;
        revision
    };

    let r = step(
        "RegisterApp",
        h.try_register(location_app("wxloc"))
            .await
            .unwrap()
            .revision,
    );
    assert_all_report(&read_revisions(&h).await, r, "RegisterApp");

    let r = step(
        "RecordDecision",
        h.answer("wxloc", "u", "scope.camera", Answer::Allow)
            .await
            .revision,
    );
    assert_all_report(&read_revisions(&h).await, r, "RecordDecision");

    let update = h
        .update_setting(
            "wxloc",
            "u",
            &[("scope.camera", false)],
            LocationOption::Unspecified,
        )
        .await
        .unwrap();
    let r = step("UpdateSetting", update.revision);
    assert_all_report(&read_revisions(&h).await, r, "UpdateSetting");

    let r = step(
        "UpdateApp",
        h.update_app(location_app("wxloc")).await.unwrap().revision,
    );
    assert_all_report(&read_revisions(&h).await, r, "UpdateApp");

    let r = step(
        "RemoveApp",
        h.remove_app("wxloc", "u").await.unwrap().revision,
    );
    assert_all_report(&read_revisions(&h).await, r, "RemoveApp");

    h.register(location_app("wxgone")).await;
    let deleted = h
        .apps
        .clone()
        .delete_app(pb::DeleteAppRequest {
            app_id: "wxgone".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = step("DeleteApp", deleted.revision);
    assert_all_report(&read_revisions(&h).await, r, "DeleteApp");
    h.stop().await;
}

/// Writes that change nothing, and refused writes, report the current
/// revision and do not move it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_op_and_refused_writes_do_not_move_the_revision() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    let current = h.revision().await;

    let no_ops = [
        (
            "CANCEL",
            h.answer("wxloc", "u", "scope.record", Answer::Cancel)
                .await
                .revision,
        ),
        (
            "ALLOW again",
            h.answer("wxloc", "u", "scope.camera", Answer::Allow)
                .await
                .revision,
        ),
        (
            "UpdateSetting, same value",
            h.update_setting(
                "wxloc",
                "u",
                &[("scope.camera", true)],
                LocationOption::Unspecified,
            )
            .await
            .unwrap()
            .revision,
        ),
        (
            "RemoveApp, nothing decided",
            h.remove_app("wxloc", "nobody").await.unwrap().revision,
        ),
    ];
    for (what, revision) in no_ops {
        assert_eq!(revision, current, "{what}");
    }
    expect_refused(
        h.record("wxloc", "u", "scope.camera", Answer::Deny, android())
            .await,
        Outcome::Granted,
    );
    expect_status(
        h.try_register(location_app("wxloc")).await,
        Code::AlreadyExists,
        "wxloc",
    );
    assert_all_report(&read_revisions(&h).await, current, "no-op writes");
    h.stop().await;
}
