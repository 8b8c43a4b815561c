//! SPEC section 3: the scope catalog, per app kind, through ListScopes,
//! Authorize, BatchAuthorize and CheckApi.

use consentd::pb::{self, AppKind, Availability, Outcome, Reason};
use tonic::Code;

use crate::util::{
    android, app, expect_refused, expect_status, fuzzy_app, location_app, Declare, TestDaemon,
    BACKGROUND, BACKGROUND_DESC, FUZZY, FUZZY_DESC, LOCATION, LOCATION_DESC,
};

use Availability::{Anonymous, NoAuthNeeded as Abolished, Popup, Unsupported};

/// One row of SPEC section 3.
struct Row {
    scope: &'static str,
    /// Empty for scope.WxFriendInteraction ("open-data friend/group
    /// interfaces"): the SPEC names none, the daemon's table does.
    interfaces: &'static [&'static str],
    mini_program: Availability,
    mini_game: Availability,
}

const fn row(
    scope: &'static str,
    interfaces: &'static [&'static str],
    mini_program: Availability,
    mini_game: Availability,
) -> Row {
    Row {
        scope,
        interfaces,
        mini_program,
        mini_game,
    }
}

/// SPEC section 3, in its order.
const SPEC_CATALOG: &[Row] = &[
    row(
        LOCATION,
        &[
            "wx.getLocation",
            "wx.startLocationUpdate",
            "MapContext.moveToLocation",
        ],
        Popup,
        Popup,
    ),
    row(FUZZY, &["wx.getFuzzyLocation"], Popup, Popup),
    row(
        BACKGROUND,
        &["wx.startLocationUpdateBackground"],
        Popup,
        Unsupported,
    ),
    row(
        "scope.record",
        &[
            "live-pusher",
            "wx.startRecord",
            "wx.joinVoIPChat",
            "RecorderManager.start",
        ],
        Popup,
        Popup,
    ),
    row(
        "scope.camera",
        &["camera", "live-pusher", "wx.createVKSession"],
        Popup,
        Popup,
    ),
    row(
        "scope.bluetooth",
        &["wx.openBluetoothAdapter", "wx.createBLEPeripheralServer"],
        Popup,
        Popup,
    ),
    row(
        "scope.writePhotosAlbum",
        &["wx.saveImageToPhotosAlbum", "wx.saveVideoToPhotosAlbum"],
        Popup,
        Popup,
    ),
    row(
        "scope.addPhoneContact",
        &["wx.addPhoneContact"],
        Popup,
        Unsupported,
    ),
    row(
        "scope.addPhoneCalendar",
        &["wx.addPhoneRepeatCalendar", "wx.addPhoneCalendar"],
        Popup,
        Unsupported,
    ),
    row("scope.werun", &["wx.getWeRunData"], Popup, Popup),
    row(
        "scope.address",
        &["wx.chooseAddress"],
        Abolished,
        Unsupported,
    ),
    row(
        "scope.invoiceTitle",
        &["wx.chooseInvoiceTitle"],
        Abolished,
        Unsupported,
    ),
    row(
        "scope.invoice",
        &["wx.chooseInvoice"],
        Abolished,
        Unsupported,
    ),
    row("scope.userInfo", &["wx.getUserInfo"], Anonymous, Popup),
    row("scope.WxFriendInteraction", &[], Unsupported, Popup),
    row(
        "scope.gameClubData",
        &["wx.getGameClubData"],
        Unsupported,
        Popup,
    ),
];

impl Row {
    fn availability(&self, kind: AppKind) -> Availability {
        match kind {
            AppKind::MiniGame => self.mini_game,
            _ => self.mini_program,
        }
    }

    fn is_location(&self) -> bool {
        [LOCATION, FUZZY, BACKGROUND].contains(&self.scope)
    }

    /// The desc a fully declared app (see [`declared_app`]) shows in the popup.
    fn app_desc(&self) -> &'static str {
        match self.scope {
            LOCATION => LOCATION_DESC,
            FUZZY => FUZZY_DESC,
            BACKGROUND => BACKGROUND_DESC,
            _ => "",
        }
    }
}

/// What Authorize answers for a never-asked scope of a fully declared app.
fn expected(availability: Availability) -> (Outcome, Reason, &'static str) {
    match availability {
        Popup => (Outcome::Prompt, Reason::PopupAvailable, ""),
        Abolished => (Outcome::NoAuthNeeded, Reason::AuthorizationAbolished, "ok"),
        Anonymous => (Outcome::NoAuthNeeded, Reason::AnonymousProfile, "ok"),
        _ => (
            Outcome::Unsupported,
            Reason::ScopeNotForAppKind,
            "fail not supported",
        ),
    }
}

/// The errMsg for `suffix` ("ok", "fail not supported"; "" stays empty).
fn err_msg(prefix: &str, suffix: &str) -> String {
    if suffix.is_empty() {
        String::new()
    } else {
        format!("{prefix}:{suffix}")
    }
}

/// A fully declared app of `kind` (precise location; see [`fuzzy_app`]).
fn declared_app(app_id: &str, kind: AppKind) -> pb::App {
    match kind {
        AppKind::MiniGame => app(app_id, kind)
            .desc(LOCATION, LOCATION_DESC)
            .desc(FUZZY, FUZZY_DESC)
            .private_infos(&["getLocation", "startLocationUpdate"]),
        _ => location_app(app_id),
    }
}

const KINDS: [(AppKind, &str, &str); 2] = [
    (AppKind::MiniProgram, "wxprogram", "wxprogram-fuzzy"),
    (AppKind::MiniGame, "wxgame", "wxgame-fuzzy"),
];

async fn register_declared_apps(h: &TestDaemon) {
    for (kind, precise, fuzzy) in KINDS {
        h.register(declared_app(precise, kind)).await;
        h.register(fuzzy_app(fuzzy, kind)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_scopes_returns_the_whole_table_in_spec_order() {
    let h = TestDaemon::start().await;
    let all = h.list_scopes(AppKind::Unspecified).await;
    let names: Vec<&str> = all.scopes.iter().map(|s| s.scope.as_str()).collect();
    let spec: Vec<&str> = SPEC_CATALOG.iter().map(|r| r.scope).collect();
    assert_eq!(names, spec);

    for (info, row) in all.scopes.iter().zip(SPEC_CATALOG) {
        assert_eq!(info.mini_program(), row.mini_program, "{}", row.scope);
        assert_eq!(info.mini_game(), row.mini_game, "{}", row.scope);
        assert_eq!(info.desc_required, row.is_location(), "{}", row.scope);
        assert_eq!(
            info.background_mode_required,
            row.scope == BACKGROUND,
            "{}",
            row.scope
        );
        assert!(
            !info.description.is_empty(),
            "{} has no description",
            row.scope
        );
        let mut listed = info.interfaces.clone();
        listed.sort();
        if row.interfaces.is_empty() {
            assert!(!listed.is_empty(), "{} lists no interface", row.scope);
        } else {
            let mut spec = row.interfaces.to_vec();
            spec.sort();
            assert_eq!(listed, spec, "interfaces of {}", row.scope);
        }
    }
    assert_eq!(
        all.scopes[0].description, "Precise geographical location",
        "the proto's own example"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_scopes_filters_by_kind() {
    let h = TestDaemon::start().await;
    for (kind, _, _) in KINDS {
        let listed: Vec<String> = h
            .list_scopes(kind)
            .await
            .scopes
            .into_iter()
            .map(|s| s.scope)
            .collect();
        let spec: Vec<&str> = SPEC_CATALOG
            .iter()
            .filter(|r| r.availability(kind) != Unsupported)
            .map(|r| r.scope)
            .collect();
        assert_eq!(listed, spec, "{kind:?}");
    }
    h.stop().await;
}

/// Every scope for both kinds: UNSUPPORTED where it does not exist,
/// NO_AUTH_NEEDED where abolished or anonymous, otherwise a popup with the
/// catalog's description and the app's desc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_every_scope_for_both_kinds() {
    let h = TestDaemon::start().await;
    register_declared_apps(&h).await;
    let catalog = h.list_scopes(AppKind::Unspecified).await.scopes;
    for (kind, precise, _) in KINDS {
        for (row, info) in SPEC_CATALOG.iter().zip(&catalog) {
            let d = h.decision(precise, "user-1", row.scope).await;
            let (outcome, reason, suffix) = expected(row.availability(kind));
            let msg = err_msg("authorize", suffix);
            let what = format!("{kind:?} {}", row.scope);
            assert_eq!(d.scope, row.scope, "{what}");
            assert_eq!(
                (d.outcome(), d.reason(), d.err_msg.as_str()),
                (outcome, reason, msg.as_str()),
                "{what}"
            );
            assert_eq!(d.state(), pb::DecisionState::NotDetermined, "{what}");
            if outcome == Outcome::Prompt {
                let prompt = d
                    .prompt
                    .as_ref()
                    .unwrap_or_else(|| panic!("{what}: no prompt"));
                assert_eq!(prompt.scope, row.scope, "{what}");
                assert_eq!(prompt.scope_description, info.description, "{what}");
                assert_eq!(prompt.app_desc, row.app_desc(), "{what}");
                assert_eq!(
                    prompt.background_location,
                    row.scope == BACKGROUND,
                    "{what}"
                );
            } else {
                assert!(d.prompt.is_none(), "{what}: unexpected prompt {d:?}");
            }
        }
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mini_program_user_info_is_anonymous_but_mini_game_user_info_prompts() {
    let h = TestDaemon::start().await;
    h.register(app("wxprogram", AppKind::MiniProgram)).await;
    h.register(app("wxgame", AppKind::MiniGame)).await;
    let mp = h.decision("wxprogram", "u", "scope.userInfo").await;
    crate::util::assert_decision(
        &mp,
        Outcome::NoAuthNeeded,
        Reason::AnonymousProfile,
        "authorize:ok",
    );
    let mg = h.decision("wxgame", "u", "scope.userInfo").await;
    crate::util::assert_decision(&mg, Outcome::Prompt, Reason::PopupAvailable, "");
    // A mini game can grant it; a mini program cannot answer a popup it never gets.
    h.answer("wxgame", "u", "scope.userInfo", pb::Answer::Allow)
        .await;
    assert_eq!(
        h.decision("wxgame", "u", "scope.userInfo").await.outcome(),
        Outcome::Granted
    );
    expect_refused(
        h.record(
            "wxprogram",
            "u",
            "scope.userInfo",
            pb::Answer::Allow,
            android(),
        )
        .await,
        Outcome::NoAuthNeeded,
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_authorize_answers_like_authorize_in_request_order() {
    let h = TestDaemon::start().await;
    register_declared_apps(&h).await;
    h.answer("wxprogram", "u", "scope.camera", pb::Answer::Allow)
        .await;
    h.answer("wxprogram", "u", "scope.record", pb::Answer::Deny)
        .await;
    // Reverse catalog order, to see the request order is kept.
    let scopes: Vec<String> = SPEC_CATALOG.iter().rev().map(|r| r.scope.into()).collect();
    let batch = h
        .auth
        .clone()
        .batch_authorize(pb::BatchAuthorizeRequest {
            app_id: "wxprogram".into(),
            user_id: "u".into(),
            scopes: scopes.clone(),
            client: Some(android()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.decisions.len(), scopes.len());
    for (d, scope) in batch.decisions.iter().zip(&scopes) {
        assert_eq!(d, &h.decision("wxprogram", "u", scope).await, "{scope}");
    }
    assert_eq!(batch.revision, h.revision().await);
    h.stop().await;
}

/// The interfaces to check and the scopes each one needs, in catalog order:
/// from the SPEC table, plus what the daemon lists for the open-data scope.
async fn interfaces(h: &TestDaemon) -> Vec<(String, Vec<&'static str>)> {
    let listed = h.list_scopes(AppKind::Unspecified).await.scopes;
    let mut apis: Vec<String> = Vec::new();
    for (row, info) in SPEC_CATALOG.iter().zip(&listed) {
        let names: Vec<String> = if row.interfaces.is_empty() {
            info.interfaces.clone()
        } else {
            row.interfaces.iter().map(|s| s.to_string()).collect()
        };
        for name in names {
            if !apis.contains(&name) {
                apis.push(name);
            }
        }
    }
    apis.into_iter()
        .map(|api| {
            let scopes = SPEC_CATALOG
                .iter()
                .zip(&listed)
                .filter(|(row, info)| {
                    row.interfaces.contains(&api.as_str())
                        || (row.interfaces.is_empty() && info.interfaces.contains(&api))
                })
                .map(|(row, _)| row.scope)
                .collect();
            (api, scopes)
        })
        .collect()
}

/// The most restrictive outcome decides (notes/semantics.md).
fn severity(o: Outcome) -> u8 {
    match o {
        Outcome::Unsupported => 6,
        Outcome::NotDeclared => 5,
        Outcome::Denied => 4,
        Outcome::SettingsRequired => 3,
        Outcome::Prompt => 2,
        Outcome::Granted => 1,
        _ => 0,
    }
}

/// Every interface of the catalog resolves to exactly its scope(s), for
/// both kinds, with the combined outcome and the interface-prefixed errMsg.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_api_resolves_every_interface_to_its_scopes() {
    let h = TestDaemon::start().await;
    register_declared_apps(&h).await;
    let apis = interfaces(&h).await;
    assert!(apis
        .iter()
        .any(|(api, scopes)| api == "live-pusher" && scopes == &["scope.record", "scope.camera"]));
    for (kind, precise, fuzzy) in KINDS {
        for (api, scopes) in &apis {
            let app_id = if api == "wx.getFuzzyLocation" {
                fuzzy
            } else {
                precise
            };
            let resp = h.check_api(app_id, "user-1", api, android()).await.unwrap();
            let what = format!("{kind:?} {api}");
            assert_eq!(&resp.api, api, "{what}");
            let got: Vec<&str> = resp.decisions.iter().map(|d| d.scope.as_str()).collect();
            assert_eq!(&got, scopes, "{what}: scopes");

            let prefix = api.rsplit('.').next().unwrap();
            let mut worst: Option<(Outcome, &str)> = None;
            for (d, scope) in resp.decisions.iter().zip(scopes) {
                let row = SPEC_CATALOG.iter().find(|r| r.scope == *scope).unwrap();
                let (outcome, reason, suffix) = expected(row.availability(kind));
                let msg = err_msg(prefix, suffix);
                assert_eq!(
                    (d.outcome(), d.reason(), d.err_msg.as_str()),
                    (outcome, reason, msg.as_str()),
                    "{what}: {scope}"
                );
                if worst.is_none_or(|(o, _)| severity(outcome) > severity(o)) {
                    worst = Some((outcome, suffix));
                }
            }
            let (outcome, suffix) = worst.unwrap();
            assert_eq!(resp.outcome(), outcome, "{what}: combined outcome");
            assert_eq!(resp.err_msg, err_msg(prefix, suffix), "{what}: errMsg");
            assert_eq!(resp.revision, h.revision().await, "{what}: revision");
        }
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_api_rejects_unknown_interfaces() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxprogram")).await;
    // Names are matched exactly: no missing prefix, no other case.
    for api in [
        "wx.getLocationX",
        "getLocation",
        "wx.getlocation",
        "Camera",
        "wx.authorize",
        "",
    ] {
        let status = expect_status(
            h.check_api("wxprogram", "u", api, android()).await,
            Code::InvalidArgument,
            "api",
        );
        assert!(
            status.message().contains(&format!("{api:?}")),
            "{api:?} not named in {:?}",
            status.message()
        );
    }
    h.stop().await;
}
