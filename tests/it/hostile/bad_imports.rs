//! Import streams with garbage records: each refused, none applied.

use consentd::pb::{self, export_record::Record};
use prost::Message;
use tonic::Code;

use crate::fixture::bare_app;

use super::{
    bad_fields::{bad_declarations, bad_ids, bad_scopes, BAD_ENUMS},
    cases::{admin, app_record, decision_record, Cases, DENIED, GRANTED},
    wire::{framed, Wire},
};

/// Import streams with garbage records. `stored_app` is wxloc as exported.
pub(super) fn bad_imports(c: &mut Cases, stored_app: &pb::App) {
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
    let declarations = bad_declarations();
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
}
