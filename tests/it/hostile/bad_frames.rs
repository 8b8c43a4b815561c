//! Bytes that are not protobuf, gRPC frames that lie, oversized messages and
//! unknown methods, against every RPC.

use consentd::pb;
use prost::{bytes::Bytes, Message};
use tonic::Code;

use crate::{
    fixture::{bare_app, location_app},
    support::{update_req, Declare},
};

use super::{
    cases::{
        admin, apps, auth, authorize_req, batch_req, check_req, decision_record, pair, path,
        record_req, register_req, update_app_req, Cases, ADMIN, ALLOW, APPS, AUTH, DENIED, GRANTED,
        OVER_LIMIT,
    },
    wire::{frame, framed, Wire},
};

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

/// Bytes that are not protobuf, frames that lie, oversized messages.
pub(super) fn lying_bytes(c: &mut Cases) {
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
}

/// Unknown methods.
pub(super) fn unknown_methods(c: &mut Cases) {
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
