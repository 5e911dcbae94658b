use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use fernwart_agent::{audit, identity, recording, switch, Agent, AgentConfig};
use fernwart_transport::ProxyConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "fernwart-agent", version, about = "fernwart machine agent")]
struct Cli {
    /// HTTP proxy for the outbound link (else HTTPS_PROXY).
    #[arg(long, global = true)]
    proxy: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enrol this machine with a one-time token: key made here, certificate from the server's CA.
    Enroll {
        #[arg(long)]
        server: String,
        /// The one-time token (or --token-file, or FERNWART_ENROLL_TOKEN).
        #[arg(
            long,
            env = "FERNWART_ENROLL_TOKEN",
            hide_env_values = true,
            allow_hyphen_values = true
        )]
        token: Option<String>,
        #[arg(long, conflicts_with = "token")]
        token_file: Option<PathBuf>,
        #[arg(long)]
        data: PathBuf,
        /// The server's CA certificate to trust and pin (else the system's roots).
        #[arg(long)]
        ca_cert: Option<PathBuf>,
    },
    /// Keep the link to the server and forward approved session traffic.
    Run {
        #[arg(long)]
        data: PathBuf,
    },
    /// The key switch: on, off or status.
    Switch {
        #[arg(value_parser = ["on", "off", "status"])]
        state: String,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// This machine's end-to-end key (made if missing): technicians compare it with the one
    /// their `fernwart connect` pinned.
    E2eKey {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The machine's own audit trail in DIR/audit: read on the gateway, no server needed.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Session recordings in DIR/recordings: read on the gateway, no server needed.
    Recording {
        #[command(subcommand)]
        cmd: RecordingCmd,
    },
}

#[derive(Subcommand)]
enum RecordingCmd {
    /// The recordings kept here, oldest first.
    List {
        #[arg(long)]
        data: PathBuf,
        /// A JSON array, each recording as `fernwart recording list --json` shows it.
        #[arg(long)]
        json: bool,
        /// Only recordings of this session.
        #[arg(long)]
        session: Option<String>,
    },
    /// Write recording ID as pcapng for Wireshark or tshark (synthetic TCP/IP framing).
    Export {
        id: String,
        #[arg(long)]
        pcap: PathBuf,
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check every record's hash and link across all files; exit 1 naming the first break.
    Verify {
        #[arg(long)]
        data: PathBuf,
    },
    /// Print the records, oldest first (one line each, or one JSON object each with --json).
    List {
        #[arg(long)]
        data: PathBuf,
        /// One JSON object per line, each record as stored.
        #[arg(long)]
        json: bool,
        /// Only records at or after this time (RFC 3339, e.g. 2025-01-31T08:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only records about this session.
        #[arg(long)]
        session: Option<String>,
        /// Only the last N records (after the other filters).
        #[arg(long)]
        limit: Option<usize>,
    },
}

fn main() -> ExitCode {
    fernwart_transport::malloc::tune_for_relaying();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fernwart-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(try_main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fernwart-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn proxy(explicit: Option<&str>) -> anyhow::Result<ProxyConfig> {
    let env =
        |k: &str| std::env::var(k).ok().or_else(|| std::env::var(k.to_ascii_lowercase()).ok());
    Ok(ProxyConfig::resolve(explicit, env("HTTPS_PROXY"), env("NO_PROXY"))?)
}

async fn try_main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Enroll { server, token, token_file, data, ca_cert } => {
            let token = match (token, token_file) {
                (Some(t), _) => t,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?,
                (None, None) => {
                    anyhow::bail!("give --token, --token-file or FERNWART_ENROLL_TOKEN")
                }
            };
            let cfg_proxy = AgentConfig::load(&data).ok().and_then(|c| c.proxy);
            let proxy = proxy(cli.proxy.as_deref().or(cfg_proxy.as_deref()))?;
            let machine = identity::enroll(&data, &server, &token, ca_cert.as_deref(), proxy)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("enrolled as machine {machine}; key and certificate in {}", data.display());
            Ok(())
        }
        Cmd::Run { data } => {
            let cfg = AgentConfig::load(&data).map_err(anyhow::Error::msg)?;
            let id = identity::Identity::load(&data).map_err(anyhow::Error::msg)?;
            let proxy = proxy(cli.proxy.as_deref().or(cfg.proxy.as_deref()))?;
            tracing::info!(machine = %id.machine, server = %id.server, targets = cfg.targets.len(), "fernwart-agent running");
            let agent = Agent::new(data, cfg, id, proxy);
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                if let Ok(mut term) = signal(SignalKind::terminate()) {
                    tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
                } else {
                    let _ = tokio::signal::ctrl_c().await;
                }
                stop.cancel();
            });
            fernwart_agent::run(agent, shutdown).await;
            Ok(())
        }
        Cmd::Switch { state, data, json } => {
            let source = AgentConfig::load(&data)
                .map(|c| c.switch)
                .unwrap_or(fernwart_agent::config::SwitchSource::Local);
            let (on, live) =
                switch::command(&data, &source, &state).await.map_err(anyhow::Error::msg)?;
            let word = if on { "on" } else { "off" };
            if json {
                println!("{}", serde_json::json!({"switch": word, "agent_running": live}));
            } else if live || state == "status" {
                println!("key switch {word}");
            } else {
                println!("key switch {word} (agent not running; applies when it starts)");
            }
            Ok(())
        }
        Cmd::E2eKey { data, json } => {
            let key = fernwart_agent::e2e::load_or_create(&data).map_err(anyhow::Error::msg)?;
            if json {
                println!("{}", serde_json::json!({"e2e_key": key.public().to_string()}));
            } else {
                println!("{}", key.public());
            }
            Ok(())
        }
        Cmd::Audit { cmd: AuditCmd::Verify { data } } => {
            let report = audit::verify(&data)?;
            println!("{report}");
            Ok(())
        }
        Cmd::Recording { cmd: RecordingCmd::List { data, json, session } } => {
            let machine = identity::Identity::load(&data).map(|i| i.machine).unwrap_or_default();
            let dir = recording::dir(&data);
            let list = recording::list(&dir, &machine, session.as_deref(), &Default::default())
                .with_context(|| format!("reading {}", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for r in &list {
                    println!("{}", recording::human_line(r));
                }
            }
            Ok(())
        }
        Cmd::Recording { cmd: RecordingCmd::Export { id, pcap, data } } => {
            if !fernwart_recording::valid_id(&id) {
                anyhow::bail!("{id:?} is not a recording id (see `fernwart-agent recording list`)");
            }
            let path =
                recording::dir(&data).join(format!("{id}.{}", fernwart_recording::EXTENSION));
            let file = std::fs::File::open(&path)
                .with_context(|| format!("no recording {id} in {}", path.display()))?;
            let done = fernwart_recording::export_file(file, &pcap)
                .with_context(|| format!("exporting recording {id}"))?;
            println!("{}", fernwart_recording::describe(&done, &pcap));
            Ok(())
        }
        Cmd::Audit { cmd: AuditCmd::List { data, json, since, session, limit } } => {
            let since_ms =
                since.as_deref().map(audit::parse_since).transpose().map_err(anyhow::Error::msg)?;
            let filter = audit::Filter { since_ms, session, limit };
            let (records, warnings) = audit::list(&data, &filter)?;
            for w in warnings {
                eprintln!("fernwart-agent: warning: {w}");
            }
            for r in &records {
                if json {
                    println!("{}", serde_json::to_string(r)?);
                } else {
                    println!("{}", audit::human_line(r));
                }
            }
            Ok(())
        }
    }
}
