//! The scope catalog (SPEC section 3) over the API: every scope, both kinds,
//! every interface.

use consentd::pb::{self, Availability as A, Outcome as O};
use tonic::Code;

use crate::fixture::{android, assert_status, TestDaemon};

/// (scope, mini program, mini game, interfaces) exactly as SPEC section 3 lists them.
const CATALOG: &[(&str, A, A, &[&str])] = &[
    (
        "scope.userLocation",
        A::Popup,
        A::Popup,
        &[
            "wx.getLocation",
            "wx.startLocationUpdate",
            "MapContext.moveToLocation",
        ],
    ),
    (
        "scope.userFuzzyLocation",
        A::Popup,
        A::Popup,
        &["wx.getFuzzyLocation"],
    ),
    (
        "scope.userLocationBackground",
        A::Popup,
        A::Unsupported,
        &["wx.startLocationUpdateBackground"],
    ),
    (
        "scope.record",
        A::Popup,
        A::Popup,
        &[
            "live-pusher",
            "wx.startRecord",
            "wx.joinVoIPChat",
            "RecorderManager.start",
        ],
    ),
    (
        "scope.camera",
        A::Popup,
        A::Popup,
        &["camera", "live-pusher", "wx.createVKSession"],
    ),
    (
        "scope.bluetooth",
        A::Popup,
        A::Popup,
        &["wx.openBluetoothAdapter", "wx.createBLEPeripheralServer"],
    ),
    (
        "scope.writePhotosAlbum",
        A::Popup,
        A::Popup,
        &["wx.saveImageToPhotosAlbum", "wx.saveVideoToPhotosAlbum"],
    ),
    (
        "scope.addPhoneContact",
        A::Popup,
        A::Unsupported,
        &["wx.addPhoneContact"],
    ),
    (
        "scope.addPhoneCalendar",
        A::Popup,
        A::Unsupported,
        &["wx.addPhoneRepeatCalendar", "wx.addPhoneCalendar"],
    ),
    ("scope.werun", A::Popup, A::Popup, &["wx.getWeRunData"]),
    (
        "scope.address",
        A::NoAuthNeeded,
        A::Unsupported,
        &["wx.chooseAddress"],
    ),
    (
        "scope.invoiceTitle",
        A::NoAuthNeeded,
        A::Unsupported,
        &["wx.chooseInvoiceTitle"],
    ),
    (
        "scope.invoice",
        A::NoAuthNeeded,
        A::Unsupported,
        &["wx.chooseInvoice"],
    ),
    (
        "scope.userInfo",
        A::Anonymous,
        A::Popup,
        &["wx.getUserInfo"],
    ),
    (
        "scope.WxFriendInteraction",
        A::Unsupported,
        A::Popup,
        &[
            "wx.getFriendCloudStorage",
            "wx.getGroupCloudStorage",
            "wx.getPotentialFriendList",
            "wx.getUserInteractiveStorage",
        ],
    ),
    (
        "scope.gameClubData",
        A::Unsupported,
        A::Popup,
        &["wx.getGameClubData"],
    ),
];

/// Apps declaring every location statement their kind allows.
async fn catalog_daemon() -> TestDaemon {
    let h = TestDaemon::start().await;
    let desc = |s: &str| (s.to_string(), pb::PermissionDesc { desc: "why".into() });
    let mp = pb::App {
        app_id: "wxmp".into(),
        kind: pb::AppKind::MiniProgram.into(),
        permission: [
            desc("scope.userLocation"),
            desc("scope.userFuzzyLocation"),
            desc("scope.userLocationBackground"),
        ]
        .into(),
        required_background_modes: vec!["location".into()],
        ..Default::default()
    };
    let mg = pb::App {
        app_id: "wxmg".into(),
        kind: pb::AppKind::MiniGame.into(),
        permission: [desc("scope.userLocation"), desc("scope.userFuzzyLocation")].into(),
        ..Default::default()
    };
    h.client().register(mp).await;
    h.client().register(mg).await;
    h
}

fn expected_outcome(availability: A) -> O {
    match availability {
        A::Popup => O::Prompt,
        A::NoAuthNeeded | A::Anonymous => O::NoAuthNeeded,
        A::Unsupported | A::Unspecified => O::Unsupported,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_scopes_is_the_whole_table() {
    let h = TestDaemon::start().await;
    let all = h
        .client()
        .auth()
        .list_scopes(pb::ListScopesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = all
        .scopes
        .iter()
        .map(|s| {
            (
                s.scope.as_str(),
                s.mini_program(),
                s.mini_game(),
                s.interfaces.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        })
        .collect();
    let want: Vec<_> = CATALOG
        .iter()
        .map(|(s, mp, mg, i)| (*s, *mp, *mg, i.to_vec()))
        .collect();
    assert_eq!(got, want);
    let flags: Vec<_> = all
        .scopes
        .iter()
        .filter(|s| s.desc_required)
        .map(|s| s.scope.as_str())
        .collect();
    assert_eq!(
        flags,
        [
            "scope.userLocation",
            "scope.userFuzzyLocation",
            "scope.userLocationBackground"
        ]
    );
    let bg: Vec<_> = all
        .scopes
        .iter()
        .filter(|s| s.background_mode_required)
        .map(|s| s.scope.as_str())
        .collect();
    assert_eq!(bg, ["scope.userLocationBackground"]);

    for (kind, pick) in [(pb::AppKind::MiniProgram, 1), (pb::AppKind::MiniGame, 2)] {
        let listed = h
            .client()
            .auth()
            .list_scopes(pb::ListScopesRequest { kind: kind.into() })
            .await
            .unwrap()
            .into_inner();
        let names: Vec<_> = listed.scopes.iter().map(|s| s.scope.clone()).collect();
        let want: Vec<_> = CATALOG
            .iter()
            .filter(|row| if pick == 1 { row.1 } else { row.2 } != A::Unsupported)
            .map(|row| row.0.to_string())
            .collect();
        assert_eq!(names, want, "{kind:?}");
    }
    assert_status(
        h.client()
            .auth()
            .list_scopes(pb::ListScopesRequest { kind: 9 })
            .await,
        Code::InvalidArgument,
        "kind 9",
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scope_for_both_kinds() {
    let h = catalog_daemon().await;
    let c = h.client();
    for (scope, mp, mg, _) in CATALOG {
        for (app, availability) in [("wxmp", *mp), ("wxmg", *mg)] {
            let d = c.decision(app, "fresh-user", scope).await;
            assert_eq!(d.outcome(), expected_outcome(availability), "{app} {scope}");
            assert_eq!(d.state(), pb::DecisionState::NotDetermined, "{app} {scope}");
            let reason = match availability {
                A::Popup => pb::Reason::PopupAvailable,
                A::NoAuthNeeded => pb::Reason::AuthorizationAbolished,
                A::Anonymous => pb::Reason::AnonymousProfile,
                _ => pb::Reason::ScopeNotForAppKind,
            };
            assert_eq!(d.reason(), reason, "{app} {scope}");
        }
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_api_resolves_every_interface_to_its_scopes() {
    let h = catalog_daemon().await;
    let c = h.client();
    let declared = pb::App {
        app_id: "wxall".into(),
        kind: pb::AppKind::MiniProgram.into(),
        permission: [(
            "scope.userLocation".to_string(),
            pb::PermissionDesc { desc: "why".into() },
        )]
        .into(),
        required_private_infos: vec!["getLocation".into(), "startLocationUpdate".into()],
        ..Default::default()
    };
    c.register(declared).await;
    for (_, _, _, interfaces) in CATALOG {
        for api in *interfaces {
            let scopes: Vec<&str> = CATALOG
                .iter()
                .filter(|row| row.3.contains(api))
                .map(|row| row.0)
                .collect();
            let r = c.check("wxmg", "u", api, android()).await.unwrap();
            assert_eq!(r.api, *api);
            assert_eq!(
                r.decisions
                    .iter()
                    .map(|d| d.scope.as_str())
                    .collect::<Vec<_>>(),
                scopes,
                "{api}"
            );
        }
    }
    for bad in [
        "getLocation",
        "wx.getlocation",
        "Camera",
        "wx.authorize",
        " wx.getLocation",
        "",
    ] {
        assert_status(
            c.check("wxmg", "u", bad, android()).await,
            Code::InvalidArgument,
            "api",
        );
    }
    h.stop().await;
}
