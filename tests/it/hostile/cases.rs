//! The flood's malformed requests, one category at a time, with the status
//! each must get.

use consentd::pb::{self, export_record::Record};
use prost::Message;
use tonic::Code;

use crate::{fixture::android, support};

use super::{
    bad_fields::{bad_clients, bad_enums, bad_ids_everywhere, refused_fields, unknown_names},
    bad_frames::{lying_bytes, unknown_methods},
    bad_imports::bad_imports,
    wire::Wire,
};

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
    pub(super) category: &'static str,
}

impl Cases {
    pub(super) fn add(&mut self, label: impl Into<String>, path: String, wire: Wire, code: Code) {
        self.add_with(label, path, wire, code, "");
    }

    pub(super) fn add_with(
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
    pub(super) fn invalid(
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

/// A Watch request with these filters, from the current revision.
pub(super) fn watch(
    app_ids: Vec<String>,
    user_ids: Vec<String>,
    scopes: Vec<String>,
) -> pb::WatchRequest {
    pb::WatchRequest {
        app_ids,
        user_ids,
        scopes,
        start_revision: None,
    }
}

pub(super) fn one(s: &str) -> Vec<String> {
    vec![s.to_owned()]
}

/// Builds every malformed request. `stored_app` is wxloc as exported (an
/// import of it changes nothing).
pub(super) fn cases(stored_app: &pb::App) -> Vec<Case> {
    let mut c = Cases {
        list: Vec::new(),
        category: "bad id",
    };
    bad_ids_everywhere(&mut c);
    unknown_names(&mut c);
    bad_clients(&mut c);
    bad_enums(&mut c);
    refused_fields(&mut c);
    bad_imports(&mut c, stored_app);
    lying_bytes(&mut c);
    unknown_methods(&mut c);
    c.list
}
