use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use fernwart_cli::{commands, Context};
use fernwart_transport::ProxyConfig;

#[derive(Parser)]
#[command(
    name = "fernwart",
    version,
    about = "fernwart: secure remote maintenance (technician and admin CLI)"
)]
struct Cli {
    /// Server URL, e.g. https://fernwart.example:8443
    #[arg(long, global = true, env = "FERNWART_SERVER")]
    server: Option<String>,
    /// CA certificate of the server (DIR/ca.pem of `fernwart-server init`).
    #[arg(long, global = true, env = "FERNWART_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// HTTP proxy (HTTP CONNECT), else HTTPS_PROXY.
    #[arg(long, global = true)]
    proxy: Option<String>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Log in (password on stdin).
    Login {
        #[arg(long)]
        user: String,
        #[arg(long, required = true)]
        password_stdin: bool,
        #[arg(long)]
        otp: Option<String>,
    },
    /// End this login at the server and forget it here.
    Logout,
    /// Change your own password: the current and the new one on stdin, one a line.
    Passwd,
    /// Second factor (TOTP).
    Mfa {
        #[command(subcommand)]
        cmd: MfaCmd,
    },
    /// Users (admin).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Machines (admin).
    Machine {
        #[command(subcommand)]
        cmd: MachineCmd,
    },
    /// Maintenance sessions.
    Session {
        #[command(subcommand)]
        cmd: SessionCmd,
    },
    /// Open local ports to the targets of a session; stays in the foreground.
    Connect {
        name: String,
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        /// How long to wait for approval, e.g. 10m.
        #[arg(long, default_value = "30m")]
        wait: String,
    },
    /// Connect to the session a `fernwart://connect/SERVER/SESSION` link names (as the web
    /// console shows it); only on the server this fernwart uses.
    OpenUrl {
        url: String,
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        /// How long to wait for approval, e.g. 10m.
        #[arg(long, default_value = "30m")]
        wait: String,
    },
    /// Make this fernwart open `fernwart://` links (a desktop entry and xdg-mime on Linux,
    /// HKCU\Software\Classes\fernwart on Windows).
    UrlHandler {
        #[command(subcommand)]
        cmd: UrlHandlerCmd,
    },
    /// Organizations (admin).
    Org {
        #[command(subcommand)]
        cmd: OrgCmd,
    },
    /// The server's run-time settings: password policy, lockout, login and session limits
    /// (admins change them, auditors read them).
    Settings {
        #[command(subcommand)]
        cmd: SettingsCmd,
    },
    /// Service contracts between organizations (admin).
    Contract {
        #[command(subcommand)]
        cmd: ContractCmd,
    },
    /// Recurring maintenance windows: an operator's approver pre-approves a provider on a
    /// machine, e.g. weekdays 06:00-08:00 Europe/Berlin.
    Window {
        #[command(subcommand)]
        cmd: WindowCmd,
    },
    /// The approver's own signing key (kept in FERNWART_HOME): `session approve` signs the
    /// session's grant with it, and agents that pin its public key check the signature.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// API tokens for automation (admin).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Session recordings (admins, auditors): kept at the machines' agents, relayed by the
    /// server.
    Recording {
        #[command(subcommand)]
        cmd: RecordingCmd,
    },
}

#[derive(Subcommand)]
enum SettingsCmd {
    /// Every setting that can change at run time: the value in force, where it comes from,
    /// what is allowed.
    Show,
    /// Change one, e.g. `auth.lockout_threshold 5` or `auth.lockout_duration 30m`; in force at
    /// once, over server.toml.
    Set { key: String, value: String },
}

#[derive(Subcommand)]
enum RecordingCmd {
    /// The recordings of the machines you may audit (online ones: they are kept there).
    List {
        #[arg(long)]
        machine: Option<String>,
        #[arg(long)]
        session: Option<String>,
    },
    /// Fetch recording ID and write it as pcapng for Wireshark or tshark.
    Export {
        id: String,
        #[arg(long)]
        pcap: PathBuf,
        /// Also keep the recording as the agent stores it (its SHA-256 is in the agent's
        /// audit trail).
        #[arg(long)]
        raw: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MfaCmd {
    Enroll,
    Confirm { code: String },
}

#[derive(Subcommand)]
enum UserCmd {
    Add {
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        expires: Option<String>,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    Disable {
        name: String,
    },
    List,
}

#[derive(Subcommand)]
enum MachineCmd {
    Add {
        name: String,
        #[arg(long)]
        org: Option<String>,
    },
    List,
    Revoke {
        name: String,
    },
    /// Forget the end-to-end key pinned for the machine: the next connection pins the key the
    /// server gives (after its agent was replaced; compare the key with the machine's first).
    ForgetKey {
        name: String,
    },
}

#[derive(Subcommand)]
enum SessionCmd {
    Create(commands::session::CreateArgs),
    Approve {
        name: String,
    },
    Reject {
        name: String,
    },
    End {
        name: String,
    },
    /// Withdraw a released session (approver or admin): it becomes `revoked`, its tunnels close.
    Revoke {
        name: String,
    },
    List,
    Show {
        name: String,
    },
}

#[derive(Subcommand)]
enum OrgCmd {
    /// Add an organization: an operator owns machines, a provider employs technicians.
    Add {
        name: String,
        #[arg(long)]
        kind: String,
        /// An operator allows sessions without an approver's release on its machines.
        #[arg(long)]
        allow_no_approval: bool,
        /// An operator's longest session on its machines, e.g. 8h.
        #[arg(long)]
        max_session: Option<String>,
        /// An operator takes only approvals signed by an approver's own key (`fernwart key`)
        /// on its machines.
        #[arg(long)]
        require_signed: bool,
    },
    /// Change an operator's rules; what is not given stays (e.g. `--require-signed true`).
    Set {
        name: String,
        /// Approvals on its machines must be signed by an approver's own key (true|false).
        #[arg(long)]
        require_signed: Option<bool>,
        /// Sessions without an approver's release on its machines (true|false).
        #[arg(long)]
        allow_no_approval: Option<bool>,
        /// The longest session on its machines, e.g. 8h; `none` for the server's limit.
        #[arg(long)]
        max_session: Option<String>,
    },
    List,
}

#[derive(Subcommand)]
enum ContractCmd {
    /// A provider may service an operator's machines.
    Add {
        #[arg(long)]
        provider: String,
        #[arg(long)]
        operator: String,
    },
}

#[derive(Subcommand)]
enum WindowCmd {
    /// Pre-approve a provider's technicians on a machine inside a recurring window: a session
    /// wholly inside one occurrence needs no further release.
    Add {
        machine: String,
        #[arg(long)]
        provider: String,
        /// e.g. mon-fri, sat,sun, weekdays, daily.
        #[arg(long)]
        days: String,
        /// Opens at HH:MM (local time of --tz).
        #[arg(long)]
        from: String,
        /// Closes at HH:MM (at or before --from: the next day).
        #[arg(long)]
        to: String,
        /// IANA time zone, e.g. Europe/Berlin.
        #[arg(long)]
        tz: String,
    },
    List,
    /// Remove a window (its id from `window list`).
    Remove {
        id: i64,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Make the key (Ed25519) and print its public key for the operator's agent.toml.
    #[command(alias = "generate")]
    Init {
        /// Replace an existing key (approvals signed with it stop verifying where only it is
        /// pinned).
        #[arg(long)]
        force: bool,
    },
    /// Print the public key and its fingerprint.
    Show,
    /// List your security keys registered in the web console, with the lines for an agent's
    /// agent.toml (they sign approvals in the browser).
    #[command(name = "security-keys")]
    SecurityKeys,
}

#[derive(Subcommand)]
enum UrlHandlerCmd {
    /// Register this program as the handler of `fernwart://` links for the current user.
    Register,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create an API token for automation (printed once; use it as FERNWART_TOKEN).
    Create {
        #[arg(long)]
        role: String,
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        expires: String,
    },
    /// List API tokens (never their secrets).
    List,
    /// Revoke an API token (its id, or token-ID).
    Revoke { id: String },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Records you may see (auditors: their organization's; technicians: their own), oldest
    /// first; every filter narrows.
    List(commands::audit::ListArgs),
    /// Write the whole chain with its signed checkpoints and the server's key to FILE (admins,
    /// auditors of no organization); check it with `fernwart-server audit verify --export FILE`.
    Export {
        #[arg(long)]
        out: std::path::PathBuf,
        /// Only records after this id.
        #[arg(long)]
        after: Option<i64>,
    },
    /// A machine's own records (its agent's trail, `fernwart-agent audit list` on the
    /// gateway) as the server collected them, oldest first (admins, auditors).
    Agent {
        machine: String,
        /// Only records after this place (seq).
        #[arg(long)]
        after: Option<u64>,
        /// At most this many records (one page; without it, all pages).
        #[arg(long)]
        limit: Option<u32>,
    },
}

fn main() -> ExitCode {
    fernwart_transport::malloc::tune_for_relaying();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fernwart: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(try_main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fernwart: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn try_main(cli: Cli) -> anyhow::Result<()> {
    let env =
        |k: &str| std::env::var(k).ok().or_else(|| std::env::var(k.to_ascii_lowercase()).ok());
    let ctx = Context {
        home: fernwart_cli::context::default_home(|k| std::env::var_os(k)),
        server: cli.server,
        ca_cert: cli.ca_cert,
        proxy: ProxyConfig::resolve(cli.proxy.as_deref(), env("HTTPS_PROXY"), env("NO_PROXY"))?,
        json: cli.json,
        token: std::env::var("FERNWART_TOKEN").ok().filter(|t| !t.trim().is_empty()),
    };
    match cli.cmd {
        Cmd::Login { user, otp, .. } => commands::account::login(&ctx, &user, otp.as_deref()).await,
        Cmd::Logout => commands::account::logout(&ctx).await,
        Cmd::Passwd => commands::account::passwd(&ctx).await,
        Cmd::Mfa { cmd: MfaCmd::Enroll } => commands::account::mfa_enroll(&ctx).await,
        Cmd::Mfa { cmd: MfaCmd::Confirm { code } } => {
            commands::account::mfa_confirm(&ctx, &code).await
        }
        Cmd::User { cmd } => match cmd {
            UserCmd::Add { name, role, org, expires, .. } => {
                commands::admin::user_add(&ctx, &name, &role, org.as_deref(), expires.as_deref())
                    .await
            }
            UserCmd::Disable { name } => commands::admin::user_disable(&ctx, &name).await,
            UserCmd::List => commands::admin::user_list(&ctx).await,
        },
        Cmd::Machine { cmd } => match cmd {
            MachineCmd::Add { name, org } => {
                commands::admin::machine_add(&ctx, &name, org.as_deref()).await
            }
            MachineCmd::List => commands::admin::machine_list(&ctx).await,
            MachineCmd::Revoke { name } => commands::admin::machine_revoke(&ctx, &name).await,
            MachineCmd::ForgetKey { name } => commands::e2e::forget_key(&ctx, &name),
        },
        Cmd::Session { cmd } => match cmd {
            SessionCmd::Create(args) => commands::session::create(&ctx, args).await,
            SessionCmd::Approve { name } => commands::session::approve(&ctx, &name).await,
            SessionCmd::Reject { name } => commands::session::action(&ctx, &name, "reject").await,
            SessionCmd::Revoke { name } => commands::session::action(&ctx, &name, "revoke").await,
            SessionCmd::End { name } => commands::session::action(&ctx, &name, "end").await,
            SessionCmd::List => commands::session::list(&ctx).await,
            SessionCmd::Show { name } => commands::session::show(&ctx, &name).await,
        },
        Cmd::Connect { name, bind, wait } => {
            let wait = humantime::parse_duration(&wait)
                .map_err(|e| anyhow::anyhow!("--wait {wait:?}: {e}"))?;
            commands::connect::run(&ctx, &name, bind, wait).await
        }
        Cmd::OpenUrl { url, bind, wait } => {
            let wait = humantime::parse_duration(&wait)
                .map_err(|e| anyhow::anyhow!("--wait {wait:?}: {e}"))?;
            commands::url::open(&ctx, &url, bind, wait).await
        }
        Cmd::UrlHandler { cmd: UrlHandlerCmd::Register } => commands::url::register(&ctx),
        Cmd::Org {
            cmd: OrgCmd::Add { name, kind, allow_no_approval, max_session, require_signed },
        } => {
            commands::org::add(&ctx, &name, &kind, allow_no_approval, max_session, require_signed)
                .await
        }
        Cmd::Key { cmd: KeyCmd::Init { force } } => commands::key::init(&ctx, force),
        Cmd::Key { cmd: KeyCmd::Show } => commands::key::show(&ctx),
        Cmd::Key { cmd: KeyCmd::SecurityKeys } => commands::key::security_keys(&ctx).await,
        Cmd::Org { cmd: OrgCmd::Set { name, require_signed, allow_no_approval, max_session } } => {
            let req =
                fernwart_api::OrgSetRequest { allow_no_approval, max_session, require_signed };
            commands::org::set(&ctx, &name, req).await
        }
        Cmd::Org { cmd: OrgCmd::List } => commands::org::list(&ctx).await,
        Cmd::Settings { cmd: SettingsCmd::Show } => commands::settings::show(&ctx).await,
        Cmd::Settings { cmd: SettingsCmd::Set { key, value } } => {
            commands::settings::set(&ctx, &key, &value).await
        }
        Cmd::Contract { cmd: ContractCmd::Add { provider, operator } } => {
            commands::org::contract_add(&ctx, &provider, &operator).await
        }
        Cmd::Window { cmd } => match cmd {
            WindowCmd::Add { machine, provider, days, from, to, tz } => {
                let req =
                    fernwart_api::WindowAddRequest { machine, provider, days, from, to, zone: tz };
                commands::window::add(&ctx, &req).await
            }
            WindowCmd::List => commands::window::list(&ctx).await,
            WindowCmd::Remove { id } => commands::window::remove(&ctx, id).await,
        },
        Cmd::Token { cmd } => match cmd {
            TokenCmd::Create { role, org, expires } => {
                commands::token::create(&ctx, &role, org.as_deref(), &expires).await
            }
            TokenCmd::List => commands::token::list(&ctx).await,
            TokenCmd::Revoke { id } => commands::token::revoke(&ctx, &id).await,
        },
        Cmd::Audit { cmd: AuditCmd::List(args) } => commands::audit::list(&ctx, args).await,
        Cmd::Audit { cmd: AuditCmd::Export { out, after } } => {
            commands::audit::export(&ctx, &out, after).await
        }
        Cmd::Recording { cmd: RecordingCmd::List { machine, session } } => {
            commands::recording::list(&ctx, machine.as_deref(), session.as_deref()).await
        }
        Cmd::Recording { cmd: RecordingCmd::Export { id, pcap, raw } } => {
            commands::recording::export(&ctx, &id, &pcap, raw.as_deref()).await
        }
        Cmd::Audit { cmd: AuditCmd::Agent { machine, after, limit } } => {
            commands::audit::agent(&ctx, &machine, after, limit).await
        }
    }
}
