//! Command-line arguments, parsed once into typed values.

use clap::{Args, Parser, Subcommand, ValueEnum};
use consentd::pb;

#[derive(Parser, Debug)]
#[command(
    name = "consentctl",
    version = consentd::VERSION,
    about = "A command-line client for consentd."
)]
pub struct Cli {
    /// Print JSON instead of tables (one object per response; JSON lines for watch).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the daemon: every flag also reads a `CONSENTCTL_*`
/// environment variable. The commands that talk to no daemon (completions,
/// man, token) do not show them.
#[derive(Args, Debug)]
#[command(next_help_heading = "Connection")]
pub struct Connection {
    /// The daemon's address: host:port, http://host:port, https://host:port
    /// or unix:/path/to/socket. A bare host:port uses TLS when a --tls-*
    /// option is given.
    #[arg(
        long,
        global = true,
        env = "CONSENTCTL_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// Bearer token sent with every call. Prefer the environment variable:
    /// command-line arguments are visible to other users (ps,
    /// /proc/PID/cmdline).
    #[arg(
        long,
        global = true,
        env = "CONSENTCTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// PEM file with the CA certificate(s) that verify the daemon's certificate (TLS).
    #[arg(long, global = true, env = "CONSENTCTL_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for mutual TLS (needs --tls-key).
    #[arg(long, global = true, env = "CONSENTCTL_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "CONSENTCTL_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Verify the daemon's certificate against NAME instead of the address's host.
    #[arg(
        long,
        global = true,
        env = "CONSENTCTL_TLS_DOMAIN",
        value_name = "NAME"
    )]
    pub tls_domain: Option<String>,
    /// Seconds to wait for each call (not for watch streams); at least 1.
    #[arg(
        long,
        global = true,
        env = "CONSENTCTL_TIMEOUT",
        value_name = "SECS",
        default_value_t = 10,
        value_parser = parse_timeout
    )]
    pub timeout: u64,
}

/// The connection flags' argument ids, hidden from the offline commands.
pub const CONNECTION_ARGS: [&str; 7] = [
    "addr",
    "token",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_domain",
    "timeout",
];

fn parse_timeout(raw: &str) -> Result<u64, String> {
    match raw.parse::<u64>() {
        Ok(0) => Err("0 would let no call finish: give at least 1 (seconds)".into()),
        Ok(secs) => Ok(secs),
        Err(_) => Err(format!("expected a whole number of seconds, got {raw:?}")),
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// wx.authorize: what happens if SCOPE is requested now.
    Authorize {
        /// The app id (AppID of the mini program or game).
        app: String,
        /// The user id (openid).
        user: String,
        /// The scope, e.g. scope.camera (see `consentctl scopes`).
        scope: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Authorize's answer with the gate-by-gate reasoning behind it.
    Explain {
        /// The app id (AppID of the mini program or game).
        app: String,
        /// The user id (openid).
        user: String,
        /// The scope, e.g. scope.camera (see `consentctl scopes`).
        scope: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Authorize several scopes of one user at once.
    BatchAuthorize {
        /// The app id (AppID of the mini program or game).
        app: String,
        /// The user id (openid).
        user: String,
        /// The scopes, e.g. scope.camera scope.record.
        #[arg(required = true)]
        scopes: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Whether a gated interface (wx.getLocation, camera, ...) may run now.
    CheckApi {
        /// The app id (AppID of the mini program or game).
        app: String,
        /// The user id (openid).
        user: String,
        /// The interface, e.g. wx.getLocation or camera.
        api: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Record the user's answer to a popup.
    Record {
        /// The app id (AppID of the mini program or game).
        app: String,
        /// The user id (openid).
        user: String,
        /// The scope, e.g. scope.camera (see `consentctl scopes`).
        scope: String,
        /// The popup answer.
        answer: AnswerArg,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        lifetime: LifetimeArgs,
    },
    /// wx.getSetting: the decided scopes of a user.
    Settings {
        /// The app id (AppID of the mini program or game).
        app: String,
        /// The user id (openid).
        user: String,
    },
    /// The settings page (wx.openSetting).
    SettingsPage {
        /// The app id (AppID of the mini program or game).
        app: String,
        /// The user id (openid).
        user: String,
    },
    /// Change the settings page; prints the new authSetting.
    UpdateSettings {
        /// The app id (AppID of the mini program or game).
        app: String,
        /// The user id (openid).
        user: String,
        /// SCOPE=true|false; repeatable.
        #[arg(long = "set", value_name = "SCOPE=BOOL", value_parser = parse_toggle)]
        toggles: Vec<(String, bool)>,
        /// The location item.
        #[arg(long)]
        location: Option<LocationArg>,
        #[command(flatten)]
        lifetime: LifetimeArgs,
    },
    /// The user deleted the mini program: forget their decisions.
    RemoveApp {
        /// The app id (AppID of the mini program or game).
        app: String,
        /// The user id (openid).
        user: String,
    },
    /// The consent audit trail of an app, oldest first.
    Audit {
        /// The app id (AppID of the mini program or game).
        app: String,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Only this scope.
        #[arg(long)]
        scope: Option<String>,
        /// Only the last SECS seconds.
        #[arg(long, value_name = "SECS")]
        since_secs: Option<u64>,
        /// At most this many records (default 100, at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue from a previous page's next_page_token.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// The runtime session ended: its one-time grants lapse.
    EndSession {
        /// The app id (AppID of the mini program or game).
        app: String,
        /// The user id (openid).
        user: String,
        /// The runtime session id given to one-time grants.
        session: String,
    },
    /// Register and inspect apps.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// One user across every app: list, reset or erase their decisions.
    #[command(subcommand)]
    User(UserCommand),
    /// The scope catalog.
    Scopes {
        #[arg(long)]
        kind: Option<KindArg>,
    },
    /// The platform-version rules in force.
    Rules,
    /// Follow decision changes live; resumes by itself after a disconnect.
    Watch {
        /// Only these apps (repeatable).
        #[arg(long = "app")]
        apps: Vec<String>,
        /// Only these users (repeatable).
        #[arg(long = "user")]
        users: Vec<String>,
        /// Only these scopes (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Replay every retained event after this revision first.
        #[arg(long = "from")]
        from: Option<u64>,
    },
    /// Trim the event log to the retention policy now.
    Compact,
    /// Check that checkpoint + event log reproduce the stored decisions.
    Verify,
    /// Write every app and decision (and with --events the retained event log)
    /// as JSON lines.
    Export {
        /// Also the retained event log.
        #[arg(long)]
        events: bool,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Load apps and decisions from an export (idempotent; counts are checked).
    Import { file: std::path::PathBuf },
    /// Print a shell completion script.
    Completions {
        /// The shell: bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Write man pages (consentctl.1 and one per command) into DIR.
    Man {
        /// The directory to write into (created if missing).
        dir: std::path::PathBuf,
    },
    /// The client's version and the daemon's (from a health check).
    Version,
    /// Whether the daemon serves (grpc.health.v1); exit 1 when it does not.
    Health {
        /// One service, e.g. consent.v1.Authorization [default: the server].
        #[arg(long)]
        service: Option<String>,
    },
    /// Make bearer tokens and their digests for the credentials file
    /// (offline: talks to no daemon).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// A new random token (256 bits from the OS) and its credentials-file line.
    New,
    /// The token_sha256 of a token read from stdin (never from argv).
    Hash,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Every app in which USER has decisions, with each scope's state,
    /// lifetime and last change (every page).
    List {
        /// The user id (openid).
        user: String,
        /// Only the apps holding a decision for this scope.
        #[arg(long)]
        scope: Option<String>,
    },
    /// Every decision of USER, in every app, back to never asked.
    Reset {
        /// The user id (openid).
        user: String,
    },
    /// Erase USER everywhere (decisions, lifetimes, privacy answers, anti-nag
    /// state; the retained log and audit trail then name a pseudonym).
    /// Cannot be undone: asks for the user id again unless --yes.
    Erase {
        /// The user id (openid).
        user: String,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Register a new app (or, from an app.json/game.json, register or update it).
    Register(AppArgs),
    /// Replace an app's declarations.
    Update(AppArgs),
    Get {
        /// The app id (AppID of the mini program or game).
        app: String,
    },
    List {
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Follow every page.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Delete an app and every user's decisions for it.
    Delete {
        /// The app id (AppID of the mini program or game).
        app: String,
    },
}

#[derive(Args, Debug)]
pub struct AppArgs {
    /// The app id (AppID of the mini program or game).
    pub app: String,
    #[arg(long, required_unless_present_any = ["app_json", "game_json"], conflicts_with_all = ["app_json", "game_json"])]
    pub kind: Option<KindArg>,
    /// Read the declarations of a mini program from its app.json.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["game_json", "permissions", "background_modes", "private_infos"])]
    pub app_json: Option<std::path::PathBuf>,
    /// Read the declarations of a mini game from its game.json.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["permissions", "background_modes", "private_infos"])]
    pub game_json: Option<std::path::PathBuf>,
    /// SCOPE=DESC, the popup text; repeatable.
    #[arg(long = "permission", value_name = "SCOPE=DESC", value_parser = parse_permission)]
    pub permissions: Vec<(String, String)>,
    /// requiredBackgroundModes entry (location, audio); repeatable.
    #[arg(long = "background-mode")]
    pub background_modes: Vec<String>,
    /// requiredPrivateInfos entry (getLocation, ...); repeatable.
    #[arg(long = "private-info")]
    pub private_infos: Vec<String>,
    /// Declare a privacy guide with this contract name (turns the privacy
    /// gate on for the app).
    #[arg(long, value_name = "NAME")]
    pub privacy_guide: Option<String>,
    /// An information type the privacy guide covers (location, album,
    /// camera, microphone, contacts, calendar, bluetooth, werun, address,
    /// invoice); repeatable.
    #[arg(long = "privacy-type", value_name = "TYPE", requires = "privacy_guide")]
    pub privacy_types: Vec<String>,
}

/// The client that asks. Defaults describe a current Android host.
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The host client's platform.
    #[arg(long, default_value = "android")]
    pub platform: PlatformArg,
    /// The host client (WeChat) version.
    #[arg(long, default_value = "8.0.50")]
    pub host_version: String,
    /// The base library (SDK) version.
    #[arg(long, default_value = "3.0.0")]
    pub sdk_version: String,
}

impl ClientArgs {
    pub fn to_pb(&self) -> pb::ClientInfo {
        pb::ClientInfo {
            platform: self.platform.to_pb().into(),
            host_version: self.host_version.clone(),
            sdk_version: self.sdk_version.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PlatformArg {
    Ios,
    Android,
    Ohos,
    Windows,
    Mac,
    Devtools,
}

impl PlatformArg {
    fn to_pb(self) -> pb::Platform {
        match self {
            PlatformArg::Ios => pb::Platform::Ios,
            PlatformArg::Android => pb::Platform::Android,
            PlatformArg::Ohos => pb::Platform::Ohos,
            PlatformArg::Windows => pb::Platform::Windows,
            PlatformArg::Mac => pb::Platform::Mac,
            PlatformArg::Devtools => pb::Platform::Devtools,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AnswerArg {
    Allow,
    Deny,
    Cancel,
    AllowWhileUsing,
}

impl AnswerArg {
    pub fn to_pb(self) -> pb::Answer {
        match self {
            AnswerArg::Allow => pb::Answer::Allow,
            AnswerArg::Deny => pb::Answer::Deny,
            AnswerArg::Cancel => pb::Answer::Cancel,
            AnswerArg::AllowWhileUsing => pb::Answer::AllowWhileUsing,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LocationArg {
    NotAllowed,
    WhileUsing,
    /// While using and after leaving.
    Always,
}

impl LocationArg {
    pub fn to_pb(self) -> pb::LocationOption {
        match self {
            LocationArg::NotAllowed => pb::LocationOption::NotAllowed,
            LocationArg::WhileUsing => pb::LocationOption::WhileUsing,
            LocationArg::Always => pb::LocationOption::WhileUsingAndAfterLeaving,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    MiniProgram,
    MiniGame,
}

impl KindArg {
    pub fn to_pb(self) -> pb::AppKind {
        match self {
            KindArg::MiniProgram => pb::AppKind::MiniProgram,
            KindArg::MiniGame => pb::AppKind::MiniGame,
        }
    }
}

fn parse_toggle(raw: &str) -> Result<(String, bool), String> {
    let (scope, value) = raw
        .split_once('=')
        .ok_or_else(|| format!("expected SCOPE=true|false, got {raw:?}"))?;
    let value = value
        .parse()
        .map_err(|_| format!("expected true or false after '=', got {value:?}"))?;
    Ok((scope.to_owned(), value))
}

fn parse_permission(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(s, d)| (s.to_owned(), d.to_owned()))
        .ok_or_else(|| format!("expected SCOPE=DESC, got {raw:?}"))
}

/// How long the grants of a call last (default: permanent).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LifetimeArgs {
    /// Grant for this many seconds only.
    #[arg(long, value_name = "SECS", conflicts_with = "session")]
    pub for_secs: Option<u64>,
    /// One-time grant: for this runtime session only (see end-session).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
}

impl LifetimeArgs {
    pub fn to_pb(&self) -> Option<pb::GrantLifetime> {
        use pb::grant_lifetime::Kind;
        let kind = match (&self.session, self.for_secs) {
            (Some(id), _) => Kind::SessionId(id.clone()),
            (None, Some(secs)) => {
                let until = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
                let since = until
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                Kind::Until(prost_types::Timestamp {
                    seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
                })
            }
            (None, None) => return None,
        };
        Some(pb::GrantLifetime { kind: Some(kind) })
    }
}
