//! Requests with a bad field: ids everywhere an id goes, unknown scopes and
//! interfaces, clients, enum numbers outside the proto, and fields the
//! domain refuses once parsed.

use consentd::{
    domain::{CATALOG, MAX_ID_LEN},
    grpc::convert,
    pb,
};
use prost::Message;
use tonic::Code;

use crate::{
    fixture::{android, bare_app, location_app},
    support::{update_req, Declare},
};

use super::{
    cases::{
        apps, auth, authorize_req, batch_req, check_req, one, pair, record_req, register_req,
        update_app_req, watch, Cases, ALLOW, BIG_BYTES, BIG_LIST,
    },
    wire::Wire,
};

pub(super) fn bad_ids() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("129 bytes", "x".repeat(MAX_ID_LEN + 1)),
        ("130 bytes in 65 chars", "é".repeat(65)),
        ("64 KiB", "x".repeat(64 * 1024)),
        ("space", "a b".into()),
        ("leading space", " a".into()),
        ("tab", "a\tb".into()),
        ("newline", "a\nb".into()),
        ("crlf", "a\r\n".into()),
        ("nul", "ab\0".into()),
        ("del", "\u{7f}".into()),
        ("ansi escape", "a\u{1b}[31m".into()),
        ("c1 control", "a\u{9f}".into()),
        ("next line", "a\u{85}".into()),
        ("nbsp", "a\u{a0}".into()),
        ("line separator", "x\u{2028}".into()),
        ("ideographic space", "用\u{3000}户".into()),
    ]
}

pub(super) fn bad_scopes() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("unknown", "scope.nope".into()),
        ("upper case", "SCOPE.CAMERA".into()),
        ("trailing space", "scope.camera ".into()),
        ("leading space", " scope.camera".into()),
        ("nul", "scope.camera\0".into()),
        ("prefix only", "scope.".into()),
        ("bare name", "camera".into()),
        ("zero-width space", "scope.user\u{200b}Location".into()),
        ("an interface", "wx.getLocation".into()),
        ("fullwidth", "\u{ff53}cope.camera".into()),
        ("replacement char", "\u{fffd}".into()),
        ("64 KiB", "scope.camera".repeat(5462)),
    ]
}

pub(super) fn bad_versions() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("dot", ".".into()),
        ("trailing dot", "8.".into()),
        ("leading dot", ".8".into()),
        ("empty segment", "8..0".into()),
        ("letters", "a.b".into()),
        ("suffix", "8.0.0-beta".into()),
        ("plus", "+8".into()),
        ("negative", "-1".into()),
        ("space", " 8".into()),
        ("nul", "8.0\0".into()),
        ("hex", "0x10".into()),
        ("exponent", "1e3".into()),
        ("fullwidth digits", "\u{ff18}.0".into()),
        ("arabic-indic digits", "\u{663}.\u{664}".into()),
        ("u32 overflow", "4294967296".into()),
        ("huge", "99999999999999999999.1".into()),
        ("nine segments", "1.2.3.4.5.6.7.8.9".into()),
        ("64 KiB of digits", "1".repeat(64 * 1024)),
        ("32 K segments", "1.".repeat(32 * 1024) + "1"),
    ]
}

pub(super) const BAD_ENUMS: [i32; 5] = [-1, 100, 65_536, i32::MAX, i32::MIN];

/// Bad ids, everywhere an id goes.
pub(super) fn bad_ids_everywhere(c: &mut Cases) {
    // --- Bad ids, everywhere an id goes -------------------------------------
    for (what, id) in bad_ids() {
        let l = |f: &str| format!("{f}: {what}");
        let cam = one("scope.camera");
        for method in ["Authorize", "Explain"] {
            let req = authorize_req(&id, "u", "scope.camera");
            c.invalid(l("app_id"), auth(method), &req, "app_id");
            let req = authorize_req("wxloc", &id, "scope.camera");
            c.invalid(l("user_id"), auth(method), &req, "user_id");
        }
        let req = batch_req(&id, "u", cam.clone());
        c.invalid(l("app_id"), auth("BatchAuthorize"), &req, "app_id");
        let req = batch_req("wxloc", &id, cam.clone());
        c.invalid(l("user_id"), auth("BatchAuthorize"), &req, "user_id");
        let req = check_req(&id, "u", "wx.getLocation");
        c.invalid(l("app_id"), auth("CheckApi"), &req, "app_id");
        let req = check_req("wxloc", &id, "wx.getLocation");
        c.invalid(l("user_id"), auth("CheckApi"), &req, "user_id");
        let req = record_req(&id, "new", "scope.camera", ALLOW);
        c.invalid(l("app_id"), auth("RecordDecision"), &req, "app_id");
        let req = record_req("wxloc", &id, "scope.camera", ALLOW);
        c.invalid(l("user_id"), auth("RecordDecision"), &req, "user_id");
        // GetSetting, OpenSetting and RemoveApp requests share one layout.
        for method in ["GetSetting", "OpenSetting", "RemoveApp"] {
            c.invalid(l("app_id"), auth(method), &pair(&id, "alice"), "app_id");
            c.invalid(l("user_id"), auth(method), &pair("wxloc", &id), "user_id");
        }
        let req = update_req(&id, "alice", &[("scope.camera", false)], 0);
        c.invalid(l("app_id"), auth("UpdateSetting"), &req, "app_id");
        let req = update_req("wxloc", &id, &[("scope.camera", false)], 0);
        c.invalid(l("user_id"), auth("UpdateSetting"), &req, "user_id");
        let req = watch(vec!["wxloc".into(), id.clone()], vec![], vec![]);
        c.invalid(l("app_ids[1]"), auth("Watch"), &req, "app_ids[1]");
        let req = watch(vec![], one(&id), vec![]);
        c.invalid(l("user_ids[0]"), auth("Watch"), &req, "user_ids[0]");
        let req = register_req(bare_app(&id, pb::AppKind::MiniProgram));
        c.invalid(l("app.app_id"), apps("RegisterApp"), &req, "app.app_id");
        let req = update_app_req(bare_app(&id, pb::AppKind::MiniProgram));
        c.invalid(l("app.app_id"), apps("UpdateApp"), &req, "app.app_id");
        let req = pb::GetAppRequest { app_id: id.clone() };
        c.invalid(l("app_id"), apps("GetApp"), &req, "app_id");
        let req = pb::DeleteAppRequest { app_id: id.clone() };
        c.invalid(l("app_id"), apps("DeleteApp"), &req, "app_id");
        if !id.is_empty() {
            let req = pb::ListAppsRequest {
                page_size: 10,
                page_token: id.clone(),
            };
            c.invalid(l("page_token"), apps("ListApps"), &req, "page_token");
        }
    }
}

/// Unknown scopes and interfaces.
pub(super) fn unknown_names(c: &mut Cases) {
    // --- Unknown scopes and interfaces --------------------------------------
    c.category = "unknown scope";
    for (what, scope) in bad_scopes() {
        let l = |f: &str| format!("{f}: {what}");
        for method in ["Authorize", "Explain"] {
            let req = authorize_req("wxloc", "alice", &scope);
            c.invalid(l("scope"), auth(method), &req, "scope");
        }
        let scopes = vec!["scope.camera".into(), "scope.record".into(), scope.clone()];
        let req = batch_req("wxloc", "alice", scopes);
        c.invalid(l("scopes[2]"), auth("BatchAuthorize"), &req, "scopes[2]");
        let req = record_req("wxloc", "new", &scope, ALLOW);
        c.invalid(l("scope"), auth("RecordDecision"), &req, "scope");
        let req = update_req(
            "wxloc",
            "alice",
            &[("scope.camera", false), (&scope, true)],
            0,
        );
        c.invalid(
            l("auth_setting"),
            auth("UpdateSetting"),
            &req,
            "auth_setting",
        );
        let req = watch(vec![], vec![], one(&scope));
        c.invalid(l("scopes[0]"), auth("Watch"), &req, "scopes[0]");
        let req = register_req(location_app("wxfresh").desc(&scope, "a reason"));
        c.invalid(
            l("app.permission"),
            apps("RegisterApp"),
            &req,
            "app.permission",
        );
        let req = update_app_req(location_app("wxloc").desc(&scope, "a reason"));
        c.invalid(
            l("app.permission"),
            apps("UpdateApp"),
            &req,
            "app.permission",
        );
    }
    c.category = "unknown api";
    let long_api = "wx.getLocation".repeat(10_000);
    for api in [
        "",
        "wx.getlocation",
        "getLocation",
        "wx.getLocation ",
        "wx.getLocation\0",
        "scope.userLocation",
        "wx.",
        "wx.authorize",
        "CAMERA",
        "wx.getLocation.wx.getLocation",
        &long_api,
    ] {
        let req = check_req("wxloc", "alice", api);
        c.invalid(format!("api {api:.40?}"), auth("CheckApi"), &req, "api");
    }
}

/// Clients: missing, unknown platforms, unparsable versions.
pub(super) fn bad_clients(c: &mut Cases) {
    // --- Clients: missing, unknown platforms, unparsable versions -----------
    c.category = "bad client";
    let mut clients: Vec<(String, Option<pb::ClientInfo>, &'static str)> =
        vec![("missing".into(), None, "client is required")];
    for p in [0, 7].into_iter().chain(BAD_ENUMS) {
        let info = pb::ClientInfo {
            platform: p,
            ..android()
        };
        clients.push((format!("platform {p}"), Some(info), "client.platform"));
    }
    for (what, v) in bad_versions() {
        let host = pb::ClientInfo {
            host_version: v.clone(),
            ..android()
        };
        clients.push((
            format!("host_version {what}"),
            Some(host),
            "client.host_version",
        ));
        let sdk = pb::ClientInfo {
            sdk_version: v,
            ..android()
        };
        clients.push((
            format!("sdk_version {what}"),
            Some(sdk),
            "client.sdk_version",
        ));
    }
    for (label, client, needle) in clients {
        for method in ["Authorize", "Explain"] {
            let req = pb::AuthorizeRequest {
                client: client.clone(),
                ..authorize_req("wxloc", "alice", "scope.camera")
            };
            c.invalid(&label, auth(method), &req, needle);
        }
        let req = pb::BatchAuthorizeRequest {
            client: client.clone(),
            ..batch_req("wxloc", "alice", one("scope.camera"))
        };
        c.invalid(&label, auth("BatchAuthorize"), &req, needle);
        let req = pb::CheckApiRequest {
            client: client.clone(),
            ..check_req("wxloc", "alice", "camera")
        };
        c.invalid(&label, auth("CheckApi"), &req, needle);
        let req = pb::RecordDecisionRequest {
            client,
            ..record_req("wxloc", "new", "scope.camera", ALLOW)
        };
        c.invalid(&label, auth("RecordDecision"), &req, needle);
    }
}

/// Enum numbers outside the proto.
pub(super) fn bad_enums(c: &mut Cases) {
    // --- Enum numbers outside the proto -------------------------------------
    c.category = "bad enum";
    for n in [0, 5].into_iter().chain(BAD_ENUMS) {
        let req = record_req("wxloc", "new", "scope.camera", n);
        c.invalid(
            format!("answer {n}"),
            auth("RecordDecision"),
            &req,
            "answer",
        );
    }
    for n in [4].into_iter().chain(BAD_ENUMS) {
        let req = update_req("wxloc", "alice", &[], n);
        c.invalid(
            format!("location {n}"),
            auth("UpdateSetting"),
            &req,
            "location",
        );
        let req = pb::ListScopesRequest { kind: n };
        c.invalid(format!("kind {n}"), auth("ListScopes"), &req, "kind");
    }
    for n in [0, 3].into_iter().chain(BAD_ENUMS) {
        let mut app = location_app("wxfresh");
        app.kind = n;
        let req = register_req(app.clone());
        c.invalid(
            format!("app.kind {n}"),
            apps("RegisterApp"),
            &req,
            "app.kind",
        );
        app.app_id = "wxloc".into();
        let req = update_app_req(app);
        c.invalid(format!("app.kind {n}"), apps("UpdateApp"), &req, "app.kind");
    }
}

/// Fields the domain refuses once parsed, lists too long, bad declarations.
pub(super) fn refused_fields(c: &mut Cases) {
    // --- Fields the domain refuses once parsed ------------------------------
    c.category = "bad field";
    let while_using = pb::Answer::AllowWhileUsing as i32;
    let req = record_req("wxloc", "new", "scope.camera", while_using);
    c.invalid(
        "ALLOW_WHILE_USING for camera",
        auth("RecordDecision"),
        &req,
        "answer",
    );
    let req = update_req("wxloc", "alice", &[], 0);
    c.invalid(
        "nothing to change",
        auth("UpdateSetting"),
        &req,
        "both empty",
    );
    let while_using = pb::LocationOption::WhileUsing as i32;
    let req = update_req(
        "wxloc",
        "alice",
        &[("scope.userLocation", false)],
        while_using,
    );
    c.invalid(
        "location item and location toggle",
        auth("UpdateSetting"),
        &req,
        "location",
    );
    let toggles = [
        ("scope.userLocation", false),
        ("scope.userLocationBackground", true),
    ];
    let req = update_req("wxloc", "carol", &toggles, 0);
    c.invalid(
        "background on, location off",
        auth("UpdateSetting"),
        &req,
        "auth_setting",
    );
    let req = pb::WatchRequest {
        start_revision: Some(u64::MAX),
        ..Default::default()
    };
    let wire = Wire::Message(req.encode_to_vec().into());
    c.add(
        "start_revision u64::MAX",
        auth("Watch"),
        wire,
        Code::OutOfRange,
    );
    c.invalid(
        "app missing",
        apps("RegisterApp"),
        &pb::RegisterAppRequest { app: None },
        "app is required",
    );
    c.invalid(
        "app missing",
        apps("UpdateApp"),
        &pb::UpdateAppRequest { app: None },
        "app is required",
    );

    c.category = "too many";
    for n in [0, 65, 1000, BIG_LIST] {
        let scopes = (0..n)
            .map(|i| CATALOG[i % CATALOG.len()].name.to_owned())
            .collect();
        let req = batch_req("wxloc", "alice", scopes);
        c.invalid(
            format!("{n} scopes"),
            auth("BatchAuthorize"),
            &req,
            "scopes must hold",
        );
    }
    for n in [convert::MAX_WATCH_FILTER + 1, BIG_LIST] {
        let many = |s: &str| vec![s.to_owned(); n];
        let req = watch(many("wxloc"), vec![], vec![]);
        c.invalid(format!("{n} app_ids"), auth("Watch"), &req, "app_ids");
        let req = watch(vec![], many("alice"), vec![]);
        c.invalid(format!("{n} user_ids"), auth("Watch"), &req, "user_ids");
        let req = watch(vec![], vec![], many("scope.camera"));
        c.invalid(format!("{n} scopes"), auth("Watch"), &req, "scopes");
    }

    c.category = "bad declarations";
    let declarations = bad_declarations();
    for (label, app, needle) in &declarations {
        let mut fresh = app.clone();
        fresh.app_id = "wxfresh".into();
        c.invalid(*label, apps("RegisterApp"), &register_req(fresh), needle);
        let mut existing = app.clone();
        existing.app_id = "wxloc".into();
        c.invalid(*label, apps("UpdateApp"), &update_app_req(existing), needle);
    }
}

/// Declarations each refused (label, app, what the message names); the
/// import stream cases reuse them.
pub(super) fn bad_declarations() -> Vec<(&'static str, pb::App, &'static str)> {
    let big_desc = "d".repeat(BIG_BYTES);
    let big_mode = "m".repeat(65_536);
    vec![
        (
            "empty desc",
            location_app("wx").desc("scope.camera", ""),
            "app.permission",
        ),
        (
            "blank desc",
            location_app("wx").desc("scope.camera", " \t\u{3000}"),
            "app.permission",
        ),
        (
            "257-char desc",
            location_app("wx").desc("scope.camera", &"é".repeat(257)),
            "app.permission",
        ),
        (
            "control char in desc",
            location_app("wx").desc("scope.camera", "a\u{1b}b"),
            "app.permission",
        ),
        (
            "512 KiB desc",
            location_app("wx").desc("scope.camera", &big_desc),
            "app.permission",
        ),
        (
            "scope not for mini programs",
            location_app("wx").desc("scope.gameClubData", "d"),
            "app.permission",
        ),
        (
            "unknown background mode",
            location_app("wx").background_modes(&["location", "gps"]),
            "app.required_background_modes",
        ),
        (
            "10 000 bad background modes",
            location_app("wx").background_modes(&["x"; 10_000]),
            "app.required_background_modes",
        ),
        (
            "64 KiB background mode",
            location_app("wx").background_modes(&[big_mode.as_str()]),
            "app.required_background_modes",
        ),
        (
            "unknown private info",
            location_app("wx").private_infos(&["getLocation", "getSecrets"]),
            "app.required_private_infos",
        ),
        (
            "fuzzy and precise",
            location_app("wx").private_infos(&["getFuzzyLocation", "getLocation"]),
            "mutually exclusive",
        ),
    ]
}
