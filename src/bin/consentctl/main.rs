//! consentctl: a command-line client for every consentd RPC.
//!
//! Exit codes: 0 success; 1 a negative answer (authorize, check-api and
//! explain when the interface cannot run and no popup can fix it: DENIED,
//! SETTINGS_REQUIRED, NOT_DECLARED, UNSUPPORTED; verify when inconsistent;
//! health when not serving); a closed stdout (`| head -1`) ends with 0;
//! 2 an error (bad arguments, transport failure or a gRPC error status,
//! printed with its code and message).
//!
//! Connecting (addresses, TLS, the bearer token) is `consentd::client`.

mod app_json;
mod args;
mod canonical;
mod dump;
mod render;
mod stdout;

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use consentd::{
    client::{ClientChannel, ClientError, ConnectOptions},
    pb::{
        self, admin_client::AdminClient, apps_client::AppsClient,
        authorization_client::AuthorizationClient, watch_response::Kind,
    },
};
use serde_json::{json, Value};
use tokio_stream::StreamExt as _;
use tonic::{Code, Status};

use args::{AppArgs, AppsCommand, Cli, Command, TokenCommand, UserCommand};

/// The clap command, with the connection flags hidden from the commands that
/// talk to no daemon: each gets hidden local copies, which keep clap from
/// propagating the global ones into it.
fn command() -> clap::Command {
    use clap::CommandFactory as _;
    fn hide_connection(mut c: clap::Command, hidden: &[clap::Arg]) -> clap::Command {
        for arg in hidden {
            c = c.arg(arg.clone());
        }
        let names: Vec<String> = c
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for name in names {
            c = c.mut_subcommand(name, |sub| hide_connection(sub, hidden));
        }
        c
    }
    let mut cmd = Cli::command();
    let hidden: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| args::CONNECTION_ARGS.contains(&a.get_id().as_str()))
        .map(|a| a.clone().global(false).hide(true))
        .collect();
    for name in ["completions", "man", "token"] {
        cmd = cmd.mut_subcommand(name, |sub| hide_connection(sub, &hidden));
    }
    cmd
}

fn main() -> ExitCode {
    use clap::FromArgMatches as _;
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(Answer::Positive) => ExitCode::SUCCESS,
        Ok(Answer::Negative) => ExitCode::from(1),
        // The reader went away (`| head -1`): nothing is wrong.
        Err(e) if stdout::closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e, &cli);
            ExitCode::from(2)
        }
    }
}

/// Writes to stdout; an error (a closed pipe) ends the command.
fn out(text: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = stdout::Stdout;
    stdout.write_fmt(text)?;
    stdout.flush()
}

fn report(e: &anyhow::Error, cli: &Cli) {
    eprintln!("error: {}", describe(e));
    if let Some(hint) = hint(e, cli) {
        eprintln!("hint: {hint}");
    }
}

fn hint(e: &anyhow::Error, cli: &Cli) -> Option<String> {
    if let Some(cause) = tls_failure(e) {
        let advice = if cause.contains("CertificateRequired") {
            "consentd requires a client certificate (--tls-cert, --tls-key)"
        } else if cause.starts_with("invalid peer certificate") {
            "consentd's certificate did not verify: check --tls-ca, and --tls-domain when the \
             address is not a name in the certificate"
        } else {
            "consentd refused the client certificate (--tls-cert, --tls-key)"
        };
        return Some(if describe(e).contains(&cause) {
            format!("TLS handshake failed: {advice}")
        } else {
            format!("TLS handshake failed ({cause}): {advice}")
        });
    }
    let status = e.downcast_ref::<Status>();
    match status.map(Status::code) {
        Some(Code::Unauthenticated) if cli.conn.token.is_some() => {
            return Some(
                "consentd did not accept the bearer token (CONSENTCTL_TOKEN or --token)".into(),
            )
        }
        Some(Code::Unauthenticated) => {
            return Some(
                "consentd requires credentials: set CONSENTCTL_TOKEN (or pass --token), \
                 or present a client certificate (--tls-cert, --tls-key)"
                    .into(),
            )
        }
        Some(Code::PermissionDenied) => {
            return Some("the credentials were accepted but do not allow this call".into())
        }
        _ => {}
    }
    // Only for a failed connection: a daemon answering UNAVAILABLE is running.
    let unreachable = e.downcast_ref::<tonic::transport::Error>().is_some()
        || status.is_some_and(|s| {
            s.code() == Code::Unavailable
                && (s.message().contains("transport error") || s.message().contains("connect"))
        });
    unreachable.then(|| format!("is consentd running at {}?", cli.conn.addr))
}

/// The cause of a failed TLS handshake; such failures hide below a generic
/// "transport error".
fn tls_failure(e: &anyhow::Error) -> Option<String> {
    e.chain().map(ToString::to_string).find(|c| {
        c.starts_with("received fatal alert") || c.starts_with("invalid peer certificate")
    })
}

/// `Code: message` for statuses and connection failures (as `Unavailable`),
/// the error chain otherwise.
fn describe(e: &anyhow::Error) -> String {
    if let Some(status) = e.downcast_ref::<Status>() {
        return format!("{:?}: {}", status.code(), status.message());
    }
    // Transport errors repeat themselves down the chain ("tcp connect error:
    // tcp connect error: ..."); print each distinct cause once.
    let mut causes: Vec<String> = e.chain().map(ToString::to_string).collect();
    causes.dedup();
    let chain = causes.join(": ");
    if e.downcast_ref::<tonic::transport::Error>().is_some() {
        format!("{:?}: {chain}", Code::Unavailable)
    } else {
        chain
    }
}

/// Streams (`stream`) get no per-call deadline.
async fn connect(cli: &Cli, stream: bool) -> Result<ClientChannel> {
    let c = &cli.conn;
    let timeout = Duration::from_secs(c.timeout);
    let options = ConnectOptions {
        addr: c.addr.clone(),
        token: c.token.clone(),
        tls_ca: c.tls_ca.clone(),
        tls_cert: c.tls_cert.clone(),
        tls_key: c.tls_key.clone(),
        tls_domain: c.tls_domain.clone(),
        connect_timeout: Some(timeout),
        timeout: (!stream).then_some(timeout),
    };
    match consentd::client::connect(&options).await {
        Ok(channel) => Ok(channel),
        // As a bare transport error: reported as Unavailable with the hint,
        // and `watch` retries it.
        Err(ClientError::Connect { source, .. }) => Err(source.into()),
        Err(e) => Err(e.into()),
    }
}

/// Whether the command's answer was a "no" (exit code 1).
enum Answer {
    Positive,
    Negative,
}

fn answer_of(command: &Command, value: &Value) -> Answer {
    let outcome = match command {
        Command::Authorize { .. } | Command::CheckApi { .. } => &value["outcome"],
        Command::Explain { .. } => &value["decision"]["outcome"],
        Command::Verify if value["consistent"] == false => return Answer::Negative,
        _ => return Answer::Positive,
    };
    match outcome.as_str() {
        Some(
            "DENIED" | "SETTINGS_REQUIRED" | "NOT_DECLARED" | "UNSUPPORTED" | "PRIVACY_DENIED"
            | "EMBARGOED",
        ) => Answer::Negative,
        _ => Answer::Positive,
    }
}

async fn run(cli: &Cli) -> Result<Answer> {
    if let Command::Completions { shell } = &cli.command {
        // Into a buffer first: clap_complete panics on a failed write.
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut command(), "consentctl", &mut script);
        out(format_args!("{}", String::from_utf8_lossy(&script)))?;
        return Ok(Answer::Positive);
    }
    if let Command::Man { dir } = &cli.command {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        clap_mangen::generate_to(command(), dir)
            .with_context(|| format!("writing man pages into {}", dir.display()))?;
        eprintln!("man pages written to {}", dir.display());
        return Ok(Answer::Positive);
    }
    if let Command::Version = &cli.command {
        out(format_args!("consentctl {}\n", consentd::VERSION))?;
        let channel = connect(cli, false).await?;
        let (daemon, _) = health(channel, "").await?;
        out(format_args!("consentd   {daemon}\n"))?;
        return Ok(Answer::Positive);
    }
    if let Command::Health { service } = &cli.command {
        let channel = connect(cli, false).await?;
        let (_, status) = health(channel, service.as_deref().unwrap_or("")).await?;
        let value = json!({ "status": status });
        render::print(&value, cli.json)?;
        return Ok(if status == "SERVING" {
            Answer::Positive
        } else {
            Answer::Negative
        });
    }
    if let Command::Token(command) = &cli.command {
        token_command(command)?;
        return Ok(Answer::Positive);
    }
    if let Command::User(UserCommand::Erase { user, yes: false }) = &cli.command {
        confirm_erasure(user)?;
    }
    if let Command::Watch {
        apps,
        users,
        scopes,
        from,
    } = &cli.command
    {
        let filter = pb::WatchRequest {
            app_ids: apps.clone(),
            user_ids: users.clone(),
            scopes: scopes.clone(),
            start_revision: *from,
        };
        return watch(cli, filter).await.map(|()| Answer::Positive);
    }
    if let Command::Export { events, output } = &cli.command {
        let (apps, decisions, logged) =
            dump::export(connect(cli, true).await?, *events, output.as_deref()).await?;
        eprintln!("exported {apps} apps, {decisions} decisions, {logged} events");
        return Ok(Answer::Positive);
    }
    if let Command::Import { file } = &cli.command {
        let r = dump::import(connect(cli, true).await?, file).await?;
        if cli.json {
            render::print(&canonical::json(&r, "ImportResponse")?, true)?;
        } else {
            let value = json!({ "apps": r.apps, "decisions": r.decisions, "changed": r.changed, "revision": r.revision });
            render::print(&value, false)?;
        }
        return Ok(Answer::Positive);
    }
    let channel = connect(cli, false).await?;
    let mut auth = AuthorizationClient::new(channel.clone());
    let mut apps = AppsClient::new(channel.clone());
    let mut admin = AdminClient::new(channel);
    // What --json prints: the response in the canonical mapping; tables and
    // the exit code read `value`.
    let canonical: Option<Value>;
    let value: Value = match &cli.command {
        Command::Authorize {
            app,
            user,
            scope,
            client,
        } => {
            let req = authorize_request(app, user, scope, client);
            let r = auth.authorize(req).await?.into_inner();
            canonical = Some(canonical::json(&r, "AuthorizeResponse")?);
            with_revision(
                r.decision.as_ref().map_or(Value::Null, render::decision),
                r.revision,
            )
        }
        Command::Explain {
            app,
            user,
            scope,
            client,
        } => {
            let req = authorize_request(app, user, scope, client);
            let r = auth.explain(req).await?.into_inner();
            canonical = Some(canonical::json(&r, "ExplainResponse")?);
            json!({
                "steps": r.steps.iter().map(|s| json!({
                    "gate": s.gate,
                    "check": s.check,
                    "result": if s.passed { "pass" } else { "DECIDES" },
                })).collect::<Vec<_>>(),
                "decision": r.decision.as_ref().map_or(Value::Null, render::decision),
                "revision": r.revision,
            })
        }
        Command::BatchAuthorize {
            app,
            user,
            scopes,
            client,
        } => {
            let req = pb::BatchAuthorizeRequest {
                app_id: app.clone(),
                user_id: user.clone(),
                scopes: scopes.clone(),
                client: Some(client.to_pb()),
            };
            let r = auth.batch_authorize(req).await?.into_inner();
            canonical = Some(canonical::json(&r, "BatchAuthorizeResponse")?);
            json!({ "decisions": r.decisions.iter().map(render::decision).collect::<Vec<_>>(), "revision": r.revision })
        }
        Command::CheckApi {
            app,
            user,
            api,
            client,
        } => {
            let req = pb::CheckApiRequest {
                app_id: app.clone(),
                user_id: user.clone(),
                api: api.clone(),
                client: Some(client.to_pb()),
            };
            let r = auth.check_api(req).await?.into_inner();
            canonical = Some(canonical::json(&r, "CheckApiResponse")?);
            json!({
                "api": r.api,
                "outcome": render::outcome(r.outcome),
                "err_msg": r.err_msg,
                "decisions": r.decisions.iter().map(render::decision).collect::<Vec<_>>(),
                "revision": r.revision,
            })
        }
        Command::Record {
            app,
            user,
            scope,
            answer,
            client,
            lifetime,
        } => {
            let req = pb::RecordDecisionRequest {
                app_id: app.clone(),
                user_id: user.clone(),
                scope: scope.clone(),
                answer: answer.to_pb().into(),
                client: Some(client.to_pb()),
                lifetime: lifetime.to_pb(),
            };
            let r = auth.record_decision(req).await?.into_inner();
            canonical = Some(canonical::json(&r, "RecordDecisionResponse")?);
            json!({
                "err_msg": r.err_msg,
                "state": render::state(r.state),
                "changes": r.changes.iter().map(render::change).collect::<Vec<_>>(),
                "revision": r.revision,
            })
        }
        Command::Settings { app, user } => {
            let r = auth
                .get_setting(pb::GetSettingRequest {
                    app_id: app.clone(),
                    user_id: user.clone(),
                })
                .await?
                .into_inner();
            canonical = Some(canonical::json(&r, "GetSettingResponse")?);
            json!({ "auth_setting": render::auth_setting(&r.auth_setting), "err_msg": r.err_msg, "revision": r.revision })
        }
        Command::SettingsPage { app, user } => {
            let r = auth
                .open_setting(pb::OpenSettingRequest {
                    app_id: app.clone(),
                    user_id: user.clone(),
                })
                .await?
                .into_inner();
            canonical = Some(canonical::json(&r, "OpenSettingResponse")?);
            json!({
                "items": r.items.iter().map(render::setting_item).collect::<Vec<_>>(),
                "auth_setting": render::auth_setting(&r.auth_setting),
                "err_msg": r.err_msg,
                "revision": r.revision,
            })
        }
        Command::UpdateSettings {
            app,
            user,
            toggles,
            location,
            lifetime,
        } => {
            let req = pb::UpdateSettingRequest {
                app_id: app.clone(),
                user_id: user.clone(),
                auth_setting: toggles.iter().cloned().collect(),
                location: location
                    .map_or(pb::LocationOption::Unspecified, |l| l.to_pb())
                    .into(),
                lifetime: lifetime.to_pb(),
            };
            let r = auth.update_setting(req).await?.into_inner();
            canonical = Some(canonical::json(&r, "UpdateSettingResponse")?);
            json!({
                "auth_setting": render::auth_setting(&r.auth_setting),
                "changes": r.changes.iter().map(render::change).collect::<Vec<_>>(),
                "err_msg": r.err_msg,
                "revision": r.revision,
            })
        }
        Command::Audit {
            app,
            user,
            scope,
            since_secs,
            limit,
            page_token,
        } => {
            let since = since_secs.map(|secs| {
                let at = std::time::SystemTime::now()
                    .checked_sub(Duration::from_secs(secs))
                    .unwrap_or(std::time::UNIX_EPOCH)
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                prost_types::Timestamp {
                    seconds: i64::try_from(at.as_secs()).unwrap_or(0),
                    nanos: i32::try_from(at.subsec_nanos()).unwrap_or(0),
                }
            });
            let r = auth
                .list_audit(pb::ListAuditRequest {
                    app_id: app.clone(),
                    user_id: user.clone().unwrap_or_default(),
                    scope: scope.clone().unwrap_or_default(),
                    since,
                    page_size: *limit,
                    page_token: page_token.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            canonical = Some(canonical::json(&r, "ListAuditResponse")?);
            json!({
                "records": r.records.iter().map(render::audit_record).collect::<Vec<_>>(),
                "next_page_token": r.next_page_token,
                "revision": r.revision,
            })
        }
        Command::EndSession { app, user, session } => {
            let r = auth
                .end_session(pb::EndSessionRequest {
                    app_id: app.clone(),
                    user_id: user.clone(),
                    session_id: session.clone(),
                })
                .await?
                .into_inner();
            canonical = Some(canonical::json(&r, "EndSessionResponse")?);
            json!({
                "changes": r.changes.iter().map(render::change).collect::<Vec<_>>(),
                "revision": r.revision,
            })
        }
        Command::RemoveApp { app, user } => {
            let r = auth
                .remove_app(pb::RemoveAppRequest {
                    app_id: app.clone(),
                    user_id: user.clone(),
                })
                .await?
                .into_inner();
            canonical = Some(canonical::json(&r, "RemoveAppResponse")?);
            json!({ "changes": r.changes.iter().map(render::change).collect::<Vec<_>>(), "revision": r.revision })
        }
        Command::Apps(command) => {
            let (value, json) = apps_command(&mut apps, command).await?;
            canonical = Some(json);
            value
        }
        Command::User(command) => {
            let (value, json) = user_command(&mut auth, &mut admin, command).await?;
            canonical = Some(json);
            value
        }
        Command::Scopes { kind } => {
            let kind = kind.map_or(pb::AppKind::Unspecified, |k| k.to_pb());
            let r = auth
                .list_scopes(pb::ListScopesRequest { kind: kind.into() })
                .await?
                .into_inner();
            canonical = Some(canonical::json(&r, "ListScopesResponse")?);
            json!({ "scopes": r.scopes.iter().map(render::scope).collect::<Vec<_>>(), "revision": r.revision })
        }
        Command::Rules => {
            let r = auth.get_rules(pb::GetRulesRequest {}).await?.into_inner();
            canonical = Some(canonical::json(&r, "GetRulesResponse")?);
            render::rules(&r)
        }
        Command::Compact => {
            let r = admin.compact(pb::CompactRequest {}).await?.into_inner();
            canonical = Some(canonical::json(&r, "CompactResponse")?);
            json!({ "removed_events": r.removed_events, "compacted_through": r.compacted_through, "revision": r.revision })
        }
        Command::Verify => {
            let r = admin.verify(pb::VerifyRequest {}).await?.into_inner();
            canonical = Some(canonical::json(&r, "VerifyResponse")?);
            json!({
                "consistent": r.consistent,
                "decisions": r.decisions,
                "retained_events": r.retained_events,
                "compacted_through": r.compacted_through,
                "mismatches": r.mismatches,
                "revision": r.revision,
            })
        }
        Command::Watch { .. }
        | Command::Token(_)
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Version
        | Command::Health { .. }
        | Command::Export { .. }
        | Command::Import { .. } => {
            anyhow::bail!("internal: not a unary call")
        }
    };
    match canonical {
        Some(json) if cli.json => render::print(&json, true)?,
        _ => render::print(&value, cli.json)?,
    }
    Ok(answer_of(&cli.command, &value))
}

fn authorize_request(
    app: &str,
    user: &str,
    scope: &str,
    client: &args::ClientArgs,
) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        app_id: app.to_owned(),
        user_id: user.to_owned(),
        scope: scope.to_owned(),
        client: Some(client.to_pb()),
    }
}

fn with_revision(mut value: Value, revision: u64) -> Value {
    value["revision"] = json!(revision);
    value
}

/// The app as the flags or the app.json/game.json describe it, and whether
/// it came from such a file (then registering updates an existing app).
fn app_request(a: &AppArgs) -> Result<(pb::App, bool)> {
    let from_file = match (&a.app_json, &a.game_json) {
        (Some(file), _) => Some(app_json::read(file, &a.app, pb::AppKind::MiniProgram)?),
        (None, Some(file)) => Some(app_json::read(file, &a.app, pb::AppKind::MiniGame)?),
        (None, None) => None,
    };
    if let Some(mut app) = from_file {
        // The privacy guide lives outside app.json: the flags add it.
        app.privacy = privacy_of(a);
        return Ok((app, true));
    }
    let kind = a.kind.map_or(pb::AppKind::Unspecified, |k| k.to_pb());
    Ok((app_from_flags(a, kind), false))
}

fn privacy_of(a: &AppArgs) -> Option<pb::PrivacyGuide> {
    a.privacy_guide.as_ref().map(|name| pb::PrivacyGuide {
        name: name.clone(),
        info_types: a.privacy_types.clone(),
        version: 0,
    })
}

fn app_from_flags(a: &AppArgs, kind: pb::AppKind) -> pb::App {
    pb::App {
        app_id: a.app.clone(),
        kind: kind.into(),
        permission: a
            .permissions
            .iter()
            .map(|(s, d)| (s.clone(), pb::PermissionDesc { desc: d.clone() }))
            .collect(),
        required_background_modes: a.background_modes.clone(),
        required_private_infos: a.private_infos.clone(),
        privacy: privacy_of(a),
        ..Default::default()
    }
}

/// Erasing cannot be undone: the operator types the user id again. Without
/// a terminal to ask on, only --yes will do.
fn confirm_erasure(user: &str) -> Result<()> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!(
            "refusing to erase user {user:?} without confirmation: stdin is not a terminal (add --yes)"
        );
    }
    eprint!(
        "Erase user {user:?} from every app? This cannot be undone. Type the user id to confirm: "
    );
    std::io::stderr().flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    if line.trim_end_matches(['\r', '\n']) != user {
        anyhow::bail!("not confirmed: nothing was erased");
    }
    Ok(())
}

async fn user_command(
    auth: &mut AuthorizationClient<ClientChannel>,
    admin: &mut AdminClient<ClientChannel>,
    command: &UserCommand,
) -> Result<(Value, Value)> {
    Ok(match command {
        UserCommand::List { user, scope } => {
            let mut all = Vec::new();
            let mut token = String::new();
            let revision = loop {
                let r = auth
                    .list_user_decisions(pb::ListUserDecisionsRequest {
                        user_id: user.clone(),
                        scope: scope.clone().unwrap_or_default(),
                        page_size: 1000,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                all.extend(r.apps);
                if r.next_page_token.is_empty() {
                    break r.revision;
                }
                token = r.next_page_token;
            };
            let every = pb::ListUserDecisionsResponse {
                apps: all,
                next_page_token: String::new(),
                revision,
            };
            (
                json!({ "decisions": render::user_rows(&every.apps), "revision": revision }),
                canonical::json(&every, "ListUserDecisionsResponse")?,
            )
        }
        UserCommand::Reset { user } => {
            let r = auth
                .reset_user(pb::ResetUserRequest {
                    user_id: user.clone(),
                })
                .await?
                .into_inner();
            (
                json!({
                    "apps": r.apps,
                    "changes": r.events.iter().map(render::event).collect::<Vec<_>>(),
                    "revision": r.revision,
                }),
                canonical::json(&r, "ResetUserResponse")?,
            )
        }
        UserCommand::Erase { user, .. } => {
            let r = admin
                .erase_user(pb::EraseUserRequest {
                    user_id: user.clone(),
                })
                .await?
                .into_inner();
            (
                json!({
                    "apps": r.apps,
                    "revoked_decisions": r.revoked_decisions,
                    "rewritten_records": r.rewritten_records,
                    "scrub_pending": r.scrub_pending,
                    "revision": r.revision,
                }),
                canonical::json(&r, "EraseUserResponse")?,
            )
        }
    })
}

async fn apps_command(
    apps: &mut AppsClient<ClientChannel>,
    command: &AppsCommand,
) -> Result<(Value, Value)> {
    Ok(match command {
        AppsCommand::Register(a) => {
            let (app, from_file) = app_request(a)?;
            let r = match apps
                .register_app(pb::RegisterAppRequest {
                    app: Some(app.clone()),
                })
                .await
            {
                Err(status) if from_file && status.code() == Code::AlreadyExists => {
                    let r = apps
                        .update_app(pb::UpdateAppRequest { app: Some(app) })
                        .await?
                        .into_inner();
                    pb::RegisterAppResponse {
                        app: r.app,
                        revision: r.revision,
                    }
                }
                other => other?.into_inner(),
            };
            (
                json!({ "app": r.app.as_ref().map_or(Value::Null, render::app), "revision": r.revision }),
                canonical::json(&r, "RegisterAppResponse")?,
            )
        }
        AppsCommand::Update(a) => {
            let r = apps
                .update_app(pb::UpdateAppRequest {
                    app: Some(app_request(a)?.0),
                })
                .await?
                .into_inner();
            (
                json!({ "app": r.app.as_ref().map_or(Value::Null, render::app), "revision": r.revision }),
                canonical::json(&r, "UpdateAppResponse")?,
            )
        }
        AppsCommand::Get { app } => {
            let r = apps
                .get_app(pb::GetAppRequest {
                    app_id: app.clone(),
                })
                .await?
                .into_inner();
            (
                json!({ "app": r.app.as_ref().map_or(Value::Null, render::app), "revision": r.revision }),
                canonical::json(&r, "GetAppResponse")?,
            )
        }
        AppsCommand::List {
            page_size,
            all,
            page_token,
        } => {
            let mut listed = Vec::new();
            let mut all_apps = Vec::new();
            let mut token = page_token.clone();
            let (next, revision) = loop {
                let r = apps
                    .list_apps(pb::ListAppsRequest {
                        page_size: *page_size,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                listed.extend(r.apps.iter().map(render::app));
                all_apps.extend(r.apps);
                if !*all || r.next_page_token.is_empty() {
                    break (r.next_page_token, r.revision);
                }
                token = r.next_page_token;
            };
            let every = pb::ListAppsResponse {
                apps: all_apps,
                next_page_token: next.clone(),
                revision,
            };
            (
                json!({ "apps": listed, "next_page_token": next, "revision": revision }),
                canonical::json(&every, "ListAppsResponse")?,
            )
        }
        AppsCommand::Delete { app } => {
            let r = apps
                .delete_app(pb::DeleteAppRequest {
                    app_id: app.clone(),
                })
                .await?
                .into_inner();
            (
                json!({ "revoked_decisions": r.revoked_decisions, "revision": r.revision }),
                canonical::json(&r, "DeleteAppResponse")?,
            )
        }
    })
}

/// A live tail: prints each event, remembers the last revision it covered
/// (events and progress markers) and resumes from it after a disconnect.
async fn watch(cli: &Cli, mut filter: pb::WatchRequest) -> Result<()> {
    use backon::BackoffBuilder as _;
    // Exponential with jitter, so tails restarted together do not reconnect
    // in step.
    let delays = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = delays();
    let mut hinted = false;
    loop {
        let stream = async {
            let channel = connect(cli, true).await?;
            let mut auth = AuthorizationClient::new(channel);
            if filter.start_revision.is_none() {
                // Pin "now" so a reconnect resumes exactly where this started.
                filter.start_revision = Some(
                    auth.get_rules(pb::GetRulesRequest {})
                        .await?
                        .into_inner()
                        .revision,
                );
            }
            Ok::<_, anyhow::Error>(auth.watch(filter.clone()).await?.into_inner())
        }
        .await;
        let failure = match stream {
            Ok(mut stream) => {
                backoff = delays();
                hinted = false;
                loop {
                    match stream.next().await {
                        Some(Ok(item)) => match item.kind {
                            Some(Kind::Event(e)) => {
                                filter.start_revision = Some(e.revision);
                                let written = if cli.json {
                                    out(format_args!("{}\n", canonical::json(&e, "DecisionEvent")?))
                                } else {
                                    out(format_args!("{}\n", render::event_line(&e)))
                                };
                                if let Err(e) = written {
                                    return Err(e.into());
                                }
                            }
                            Some(Kind::Progress(p)) => filter.start_revision = Some(p.revision),
                            None => {}
                        },
                        Some(Err(status)) => break anyhow::Error::new(status),
                        None => break anyhow::anyhow!("the stream ended"),
                    }
                }
            }
            Err(e) => e,
        };
        // Resumable: the daemon went away or restarted. Anything else
        // (including bad connection options and TLS refusals) is final.
        let resumable = match failure.downcast_ref::<Status>() {
            Some(status) => matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ),
            None => failure.downcast_ref::<ClientError>().is_none(),
        } && tls_failure(&failure).is_none();
        if !resumable {
            return Err(failure);
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(5));
        eprintln!(
            "watch: {}; resuming from revision {} in {:.3}s",
            describe(&failure),
            filter
                .start_revision
                .map_or("now".into(), |r| r.to_string()),
            delay.as_secs_f64()
        );
        // Once per outage, as the one-shot commands print it.
        if let Some(hint) = hint(&failure, cli).filter(|_| !hinted) {
            eprintln!("hint: {hint}");
            hinted = true;
        }
        tokio::time::sleep(delay).await;
    }
}

/// The daemon's version (its `consentd-version` response header) and the
/// health status of `service` ("" for the whole server).
async fn health(channel: ClientChannel, service: &str) -> Result<(String, String)> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    let response = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    let version = response
        .metadata()
        .get("consentd-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown (the daemon sends no version)")
        .to_owned();
    let status = ServingStatus::try_from(response.into_inner().status)
        .map_or_else(|_| "UNKNOWN".to_owned(), |s| s.as_str_name().to_owned());
    Ok((version, status))
}

/// `token new` / `token hash`: the digest is what the daemon's credentials
/// file stores; the token itself goes only to the caller.
fn token_command(command: &TokenCommand) -> Result<()> {
    let token = match command {
        TokenCommand::New => {
            let mut bytes = [0u8; 32];
            getrandom::getrandom(&mut bytes)
                .map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
            let token = hex::encode(bytes);
            out(format_args!("token        = {token}\n"))?;
            token
        }
        TokenCommand::Hash => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the token from stdin")?;
            let token = line.trim_end_matches(['\n', '\r']).to_owned();
            if token.is_empty() {
                anyhow::bail!(
                    "no token on stdin (try: printf %s \"$TOKEN\" | consentctl token hash)"
                );
            }
            token
        }
    };
    out(format_args!(
        "token_sha256 = \"{}\"\n",
        consentd::auth::hash_token(&token)
    ))?;
    Ok(())
}
