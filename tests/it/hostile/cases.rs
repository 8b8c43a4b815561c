//! The flood's malformed requests, one category at a time, with the status
//! each must get.

use consentd::{
    domain::{CATALOG, MAX_ID_LEN},
    grpc::convert,
    pb::{self, export_record::Record},
};
use prost::{bytes::Bytes, Message};
use tonic::Code;

use crate::{
    fixture::{android, bare_app, location_app},
    support::{self, update_req, Declare},
};

use super::wire::{frame, framed, Wire};

pub(super) struct Case {
    /// The malformation category, for the summary.
    pub(super) category: &'static str,
    /// What is wrong with this request, for failure messages.
    pub(super) label: String,
    pub(super) path: String,
    pub(super) wire: Wire,
    pub(super) code: Code,
    /// A substring the status message must contain ("" for none).
    pub(super) needle: &'static str,
}

pub(super) const AUTH: &str = "consent.v1.Authorization";
pub(super) const APPS: &str = "consent.v1.Apps";
pub(super) const ADMIN: &str = "consent.v1.Admin";

/// Over tonic's default limit on a decoded request message (4 MiB) and the
/// daemon's own (at most that).
pub(super) const OVER_LIMIT: usize = 4 * 1024 * 1024 + 1;
/// Large fields that still fit any message limit of 1 MiB or more.
pub(super) const BIG_BYTES: usize = 512 * 1024;
/// Repeated fields that long still fit a 1 MiB message.
pub(super) const BIG_LIST: usize = 30_000;

pub(super) fn path(service: &str, method: &str) -> String {
    format!("/{service}/{method}")
}

/// A deterministic generator (splitmix64), so the flood is the same each run.
pub(super) struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

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

/// Payloads that are not protobuf whatever the message type.
pub(super) fn garbage() -> Vec<(&'static str, Vec<u8>)> {
    let mut deep = vec![0x0B; 200]; // 200 nested groups, never closed
    deep.push(0x0C);
    vec![
        ("wire type 7", vec![0x0F]),
        ("wire type 6", vec![0x0E, 0x01]),
        ("field number 0", vec![0x00, 0x01]),
        ("truncated varint", vec![0x08, 0xFF]),
        (
            "11-byte varint",
            [&[0x08][..], &[0xFF; 10], &[0x01]].concat(),
        ),
        ("length past the end", vec![0x0A, 0x10, b'a']),
        ("4 GiB length", vec![0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]),
        ("end group without start", vec![0x0C]),
        ("unclosed group", vec![0x0B, 0x08, 0x01]),
        ("groups nested 200 deep", deep),
    ]
}

pub(super) fn authorize_req(app: &str, user: &str, scope: &str) -> pb::AuthorizeRequest {
    support::authorize_req(app, user, scope, android())
}

pub(super) fn decision_record(app: &str, user: &str, scope: &str, state: i32) -> pb::ExportRecord {
    pb::ExportRecord {
        record: Some(Record::Decision(pb::StoredDecision {
            app_id: app.into(),
            user_id: user.into(),
            scope: scope.into(),
            state,
            ..Default::default()
        })),
    }
}

pub(super) const GRANTED: i32 = pb::DecisionState::Granted as i32;
pub(super) const DENIED: i32 = pb::DecisionState::Denied as i32;

/// The flood's requests, one category at a time.
pub(super) struct Cases {
    list: Vec<Case>,
    category: &'static str,
}

impl Cases {
    fn add(&mut self, label: impl Into<String>, path: String, wire: Wire, code: Code) {
        self.add_with(label, path, wire, code, "");
    }

    fn add_with(
        &mut self,
        label: impl Into<String>,
        path: String,
        wire: Wire,
        code: Code,
        needle: &'static str,
    ) {
        self.list.push(Case {
            category: self.category,
            label: label.into(),
            path,
            wire,
            code,
            needle,
        });
    }

    /// A well-formed message with a bad field: INVALID_ARGUMENT naming `needle`.
    fn invalid(
        &mut self,
        label: impl Into<String>,
        path: String,
        m: &impl Message,
        needle: &'static str,
    ) {
        let wire = Wire::Message(m.encode_to_vec().into());
        self.add_with(label, path, wire, Code::InvalidArgument, needle);
    }
}

pub(super) fn auth(method: &str) -> String {
    path(AUTH, method)
}

pub(super) fn apps(method: &str) -> String {
    path(APPS, method)
}

pub(super) fn admin(method: &str) -> String {
    path(ADMIN, method)
}

pub(super) fn pair(app: &str, user: &str) -> pb::GetSettingRequest {
    pb::GetSettingRequest {
        app_id: app.into(),
        user_id: user.into(),
    }
}

pub(super) fn batch_req(app: &str, user: &str, scopes: Vec<String>) -> pb::BatchAuthorizeRequest {
    pb::BatchAuthorizeRequest {
        app_id: app.into(),
        user_id: user.into(),
        scopes,
        client: Some(android()),
    }
}

pub(super) fn check_req(app: &str, user: &str, api: &str) -> pb::CheckApiRequest {
    support::check_req(app, user, api, android())
}

pub(super) fn record_req(
    app: &str,
    user: &str,
    scope: &str,
    answer: i32,
) -> pb::RecordDecisionRequest {
    support::record_req(app, user, scope, answer, android())
}

pub(super) fn register_req(app: pb::App) -> pb::RegisterAppRequest {
    pb::RegisterAppRequest { app: Some(app) }
}

pub(super) fn update_app_req(app: pb::App) -> pb::UpdateAppRequest {
    pb::UpdateAppRequest { app: Some(app) }
}

pub(super) fn app_record(app: pb::App) -> pb::ExportRecord {
    pb::ExportRecord {
        record: Some(Record::App(app)),
    }
}

pub(super) const ALLOW: i32 = pb::Answer::Allow as i32;

/// Builds every malformed request. `stored_app` is wxloc as exported (an
/// import of it changes nothing).
pub(super) fn cases(stored_app: &pb::App) -> Vec<Case> {
    let mut c = Cases {
        list: Vec::new(),
        category: "bad id",
    };
    let watch =
        |app_ids: Vec<String>, user_ids: Vec<String>, scopes: Vec<String>| pb::WatchRequest {
            app_ids,
            user_ids,
            scopes,
            start_revision: None,
        };
    let one = |s: &str| vec![s.to_owned()];

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
    let big_desc = "d".repeat(BIG_BYTES);
    let big_mode = "m".repeat(65_536);
    let declarations: Vec<(&str, pb::App, &'static str)> = vec![
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
    ];
    for (label, app, needle) in &declarations {
        let mut fresh = app.clone();
        fresh.app_id = "wxfresh".into();
        c.invalid(*label, apps("RegisterApp"), &register_req(fresh), needle);
        let mut existing = app.clone();
        existing.app_id = "wxloc".into();
        c.invalid(*label, apps("UpdateApp"), &update_app_req(existing), needle);
    }

    // --- Import streams with garbage records ----------------------------------
    let mut imports: Vec<(String, Vec<pb::ExportRecord>, Code, &'static str)> = Vec::new();
    let invalid = Code::InvalidArgument;
    let header = |format| pb::ExportRecord {
        record: Some(Record::Header(pb::ExportHeader {
            revision: 1,
            format,
        })),
    };
    imports.push((
        "header format 99".into(),
        vec![header(99)],
        invalid,
        "format",
    ));
    imports.push((
        "header format u64::MAX".into(),
        vec![header(u64::MAX)],
        invalid,
        "format",
    ));
    // The app as stored changes nothing; what follows it is refused.
    let unchanged = app_record(stored_app.clone());
    for (label, app, needle) in &declarations {
        let mut app = app.clone();
        app.app_id = "wxloc".into();
        let records = vec![unchanged.clone(), app_record(app)];
        imports.push((format!("app: {label}"), records, invalid, needle));
    }
    for (what, id) in bad_ids() {
        let records = vec![app_record(bare_app(&id, pb::AppKind::MiniGame))];
        imports.push((format!("app id: {what}"), records, invalid, "app.app_id"));
        let rows = vec![
            decision_record("wxloc", "alice", "scope.camera", GRANTED),
            decision_record(&id, "alice", "scope.camera", GRANTED),
        ];
        imports.push((
            format!("decision app_id: {what}"),
            rows,
            invalid,
            "decision.app_id",
        ));
        let rows = vec![decision_record("wxloc", &id, "scope.camera", DENIED)];
        imports.push((
            format!("decision user_id: {what}"),
            rows,
            invalid,
            "decision.user_id",
        ));
    }
    for (what, scope) in bad_scopes() {
        let rows = vec![decision_record("wxloc", "alice", &scope, GRANTED)];
        imports.push((
            format!("decision scope: {what}"),
            rows,
            invalid,
            "decision.scope",
        ));
    }
    // A pending (changing) row, then a bad one: the batch is never written.
    for n in [0, 1].into_iter().chain(BAD_ENUMS) {
        let rows = vec![
            decision_record("wxloc", "alice", "scope.camera", DENIED),
            decision_record("wxloc", "bob", "scope.record", n),
        ];
        imports.push((
            format!("decision state {n}"),
            rows,
            invalid,
            "decision.state",
        ));
    }
    for scope in ["scope.userInfo", "scope.address", "scope.gameClubData"] {
        let rows = vec![decision_record("wxloc", "alice", scope, GRANTED)];
        imports.push((
            format!("{scope} for a mini program"),
            rows,
            invalid,
            "takes no decisions",
        ));
    }
    let rows = vec![
        decision_record("wxloc", "alice", "scope.camera", DENIED),
        decision_record("wxloc", "erin", "scope.userLocationBackground", GRANTED),
    ];
    imports.push((
        "background without location".into(),
        rows,
        invalid,
        "without location",
    ));
    let rows = vec![decision_record("wxghost", "alice", "scope.camera", GRANTED)];
    imports.push(("unknown app".into(), rows, Code::NotFound, "wxghost"));
    c.category = "bad import record";
    for (label, records, code, needle) in imports {
        let body: Vec<u8> = records
            .iter()
            .flat_map(|r| framed(&r.encode_to_vec()))
            .collect();
        c.add_with(
            label,
            admin("Import"),
            Wire::Body(body.into(), &[]),
            code,
            needle,
        );
    }

    // --- Bytes that are not protobuf, frames that lie -------------------------
    let mut rng = Rng(0x5eed);
    let exact = |body: Vec<u8>| Wire::Body(body.into(), &[]);
    for (method, template, client_streaming) in templates() {
        let p = || path(method.0, method.1);
        let l = |what: &str| format!("{}/{}: {what}", method.0, method.1);
        let internal = Code::Internal;
        c.category = "not protobuf";
        for (what, bytes) in garbage() {
            c.add(l(what), p(), Wire::Message(bytes.into()), internal);
        }
        // A valid (often state-changing) request followed by garbage: the
        // valid part must never run.
        for i in 0..48 {
            let mut bytes = template.clone();
            bytes.push([0x0F, 0x0E, 0x07, 0x0B][i % 4]);
            let n = rng.next() as usize % 64;
            bytes.extend(rng.bytes(n));
            c.add(
                l(&format!("valid request + garbage #{i}")),
                p(),
                Wire::Message(bytes.into()),
                internal,
            );
        }
        c.category = "lying frame";
        let len = template.len() as u32;
        c.add(
            l("length prefix 16 bytes too long"),
            p(),
            exact(frame(0, len + 16, &template)),
            internal,
        );
        let mut body = framed(&template);
        body.extend([0, 0, 0]);
        c.add(l("3 bytes after the frame"), p(), exact(body), internal);
        let mut body = framed(&template);
        body.extend(frame(0, 1, &[0x0F]));
        c.add(l("a garbage second frame"), p(), exact(body), internal);
        c.add(
            l("half a frame header"),
            p(),
            exact(vec![0, 0, 0]),
            internal,
        );
        c.add(
            l("compressed flag, no grpc-encoding"),
            p(),
            exact(frame(1, len, &template)),
            internal,
        );
        c.add(
            l("compressed flag 2"),
            p(),
            exact(frame(2, len, &template)),
            internal,
        );
        c.add(
            l("compressed flag 255"),
            p(),
            exact(frame(0xFF, len, &template)),
            internal,
        );
        let identity = Wire::Body(
            frame(1, len, &template).into(),
            &[("grpc-encoding", "identity")],
        );
        c.add(
            l("compressed flag, grpc-encoding identity"),
            p(),
            identity,
            internal,
        );
        if !client_streaming {
            // An empty Import stream is a valid empty import.
            c.add(l("no message at all"), p(), exact(Vec::new()), internal);
        }
        c.category = "unsupported encoding";
        let gzip = Wire::Body(
            frame(1, len, &template).into(),
            &[("grpc-encoding", "gzip")],
        );
        c.add(l("grpc-encoding gzip"), p(), gzip, Code::Unimplemented);
        let br = Wire::Body(frame(0, len, &template).into(), &[("grpc-encoding", "br")]);
        c.add(l("grpc-encoding br"), p(), br, Code::Unimplemented);
        c.category = "oversized";
        let huge = exact(frame(0, u32::MAX, &template));
        c.add(l("length prefix u32::MAX"), p(), huge, Code::OutOfRange);
        let over = exact(frame(0, OVER_LIMIT as u32, &template));
        c.add(l("length prefix 4 MiB + 1"), p(), over, Code::OutOfRange);
    }
    // Messages over the decoding limit, sent for real.
    c.category = "oversized";
    let huge = "x".repeat(OVER_LIMIT);
    let requests: [(&str, String, Vec<u8>); 3] = [
        (
            "4 MiB app_id",
            auth("Authorize"),
            authorize_req(&huge, "u", "scope.camera").encode_to_vec(),
        ),
        (
            "4 MiB desc",
            apps("RegisterApp"),
            register_req(location_app("wxfresh").desc("scope.camera", &huge)).encode_to_vec(),
        ),
        (
            "4 MiB import record",
            admin("Import"),
            decision_record("wxloc", &huge, "scope.camera", GRANTED).encode_to_vec(),
        ),
    ];
    for (label, path, bytes) in requests {
        c.add_with(
            label,
            path,
            Wire::Message(bytes.into()),
            Code::OutOfRange,
            "too large",
        );
    }

    // --- Unknown methods ------------------------------------------------------
    c.category = "unknown method";
    let long = format!("/{AUTH}/{}", "A".repeat(4096));
    for p in [
        "/consent.v1.Authorization/Nope",
        "/consent.v1.Authorization/authorize",
        "/consent.v1.Authorization/",
        "/consent.v1.Authorization/Authorize/extra",
        "/consent.v1.Nope/Authorize",
        "/consent.v2.Authorization/Authorize",
        "/consent.v1.Apps/Export",
        "/consent.v1.Admin/Authorize",
        "/grpc.health.v1.Health/Nope",
        "/",
        "/%00",
        &long,
    ] {
        let label = format!("{p:.60}");
        c.add(
            label,
            p.to_owned(),
            Wire::Message(Bytes::new()),
            Code::Unimplemented,
        );
    }
    c.list
}

/// Every RPC with a valid encoded request (state-changing where the RPC
/// changes state), and whether it is client-streaming.
pub(super) fn templates() -> Vec<((&'static str, &'static str), Vec<u8>, bool)> {
    let bytes = |m: &dyn DynMessage| m.encoded().to_vec();
    let authorize = bytes(&authorize_req("wxloc", "alice", "scope.camera"));
    let scopes = vec!["scope.camera".into(), "scope.record".into()];
    let export = pb::ExportRequest {
        include_events: true,
    };
    let list = pb::ListAppsRequest {
        page_size: 5,
        page_token: String::new(),
    };
    let kind = pb::ListScopesRequest {
        kind: pb::AppKind::MiniGame.into(),
    };
    let wxloc = pb::GetAppRequest {
        app_id: "wxloc".into(),
    };
    vec![
        ((AUTH, "Authorize"), authorize.clone(), false),
        ((AUTH, "Explain"), authorize, false),
        (
            (AUTH, "BatchAuthorize"),
            bytes(&batch_req("wxloc", "alice", scopes)),
            false,
        ),
        (
            (AUTH, "CheckApi"),
            bytes(&check_req("wxloc", "alice", "wx.getLocation")),
            false,
        ),
        (
            (AUTH, "RecordDecision"),
            bytes(&record_req("wxloc", "new", "scope.camera", ALLOW)),
            false,
        ),
        ((AUTH, "GetSetting"), bytes(&pair("wxloc", "alice")), false),
        ((AUTH, "OpenSetting"), bytes(&pair("wxloc", "alice")), false),
        (
            (AUTH, "UpdateSetting"),
            bytes(&update_req("wxloc", "alice", &[("scope.camera", false)], 0)),
            false,
        ),
        ((AUTH, "RemoveApp"), bytes(&pair("wxloc", "alice")), false),
        ((AUTH, "ListScopes"), bytes(&kind), false),
        ((AUTH, "GetRules"), Vec::new(), false),
        ((AUTH, "Watch"), Vec::new(), false),
        (
            (APPS, "RegisterApp"),
            bytes(&register_req(location_app("wxfresh"))),
            false,
        ),
        (
            (APPS, "UpdateApp"),
            bytes(&update_app_req(bare_app("wxloc", pb::AppKind::MiniProgram))),
            false,
        ),
        ((APPS, "GetApp"), bytes(&wxloc), false),
        ((APPS, "ListApps"), bytes(&list), false),
        ((APPS, "DeleteApp"), bytes(&wxloc), false),
        ((ADMIN, "Compact"), Vec::new(), false),
        ((ADMIN, "Verify"), Vec::new(), false),
        ((ADMIN, "Export"), bytes(&export), false),
        (
            (ADMIN, "Import"),
            bytes(&decision_record("wxloc", "alice", "scope.camera", DENIED)),
            true,
        ),
    ]
}

/// Object-safe encoding, so one helper takes any request type.
pub(super) trait DynMessage {
    fn encoded(&self) -> Bytes;
}

impl<M: Message> DynMessage for M {
    fn encoded(&self) -> Bytes {
        self.encode_to_vec().into()
    }
}
