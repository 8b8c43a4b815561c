//! Shared by the benches: the read scenarios' store (10 apps x 1,000 users,
//! each with a granted camera and a denied record) and their request mixes
//! (Authorize and CheckApi: granted, denied, prompt, settings-required and
//! abolished answers), so that `load` and `readcost` measure the same calls.

use std::net::SocketAddr;

use consentd::pb::{self, authorization_client::AuthorizationClient};
use tonic::transport::Channel;

pub const APPS: usize = 10;
pub const USERS: usize = 1000;

pub fn client_info(host: &str) -> pb::ClientInfo {
    pb::ClientInfo {
        platform: pb::Platform::Android.into(),
        host_version: host.into(),
        sdk_version: "3.0.0".into(),
    }
}

pub async fn channels(addr: SocketAddr, n: usize) -> Vec<Channel> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    v
}

/// Registers the apps and gives every user a granted camera and a denied record.
pub async fn preload(addr: SocketAddr) {
    let chans = channels(addr, 4).await;
    let mut apps = pb::apps_client::AppsClient::new(chans[0].clone());
    for a in 0..APPS {
        let app = pb::App {
            app_id: format!("wxbench{a}"),
            kind: pb::AppKind::MiniProgram.into(),
            permission: [(
                "scope.userLocation".to_string(),
                pb::PermissionDesc {
                    desc: "nearby".into(),
                },
            )]
            .into(),
            required_background_modes: vec!["location".into()],
            ..Default::default()
        };
        apps.register_app(pb::RegisterAppRequest { app: Some(app) })
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let mut auth = AuthorizationClient::new(chans[t % 4].clone());
            tokio::spawn(async move {
                for i in (t..APPS * USERS).step_by(64) {
                    for (scope, answer) in [
                        ("scope.camera", pb::Answer::Allow),
                        ("scope.record", pb::Answer::Deny),
                    ] {
                        auth.record_decision(pb::RecordDecisionRequest {
                            lifetime: None,
                            app_id: format!("wxbench{}", i % APPS),
                            user_id: format!("u{}", i / APPS),
                            scope: scope.into(),
                            answer: answer.into(),
                            client: Some(client_info("8.0.5")),
                        })
                        .await
                        .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// The realistic Authorize mix: granted, denied, prompt, settings-required, abolished.
pub fn mixed_authorize(seq: u64, task: usize) -> pb::AuthorizeRequest {
    let n = seq as usize * 7 + task * 131;
    let (scope, host) = match n % 5 {
        0 => ("scope.camera", "8.0.5"),
        1 => ("scope.record", "8.0.5"),
        2 => ("scope.bluetooth", "8.0.5"),
        3 => ("scope.userLocationBackground", "7.0.20"),
        _ => ("scope.address", "8.0.5"),
    };
    pb::AuthorizeRequest {
        app_id: format!("wxbench{}", n % APPS),
        user_id: format!("u{}", (n / APPS) % USERS),
        scope: scope.into(),
        client: Some(client_info(host)),
    }
}

/// The same mix as [`mixed_authorize`] through the interfaces that need
/// those scopes: granted (camera), denied (wx.startRecord), prompt
/// (wx.openBluetoothAdapter), settings-required (background location on a
/// 7.x client), abolished (wx.chooseAddress).
pub fn mixed_check_api(seq: u64, task: usize) -> pb::CheckApiRequest {
    let n = seq as usize * 7 + task * 131;
    let (api, host) = match n % 5 {
        0 => ("camera", "8.0.5"),
        1 => ("wx.startRecord", "8.0.5"),
        2 => ("wx.openBluetoothAdapter", "8.0.5"),
        3 => ("wx.startLocationUpdateBackground", "7.0.20"),
        _ => ("wx.chooseAddress", "8.0.5"),
    };
    pb::CheckApiRequest {
        app_id: format!("wxbench{}", n % APPS),
        user_id: format!("u{}", (n / APPS) % USERS),
        api: api.into(),
        client: Some(client_info(host)),
    }
}

pub async fn authorize_call(
    task: usize,
    seq: u64,
    mut c: AuthorizationClient<Channel>,
) -> Result<(), tonic::Status> {
    c.authorize(mixed_authorize(seq, task)).await.map(drop)
}

pub async fn check_api_call(
    task: usize,
    seq: u64,
    mut c: AuthorizationClient<Channel>,
) -> Result<(), tonic::Status> {
    c.check_api(mixed_check_api(seq, task)).await.map(drop)
}
