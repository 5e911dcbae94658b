use std::{io::BufRead, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(name = "fernwart-server", version, about = "fernwart rendezvous server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a data directory: CA, server certificate, settings, first admin (password on stdin).
    Init {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        public_url: String,
        #[arg(long)]
        admin: String,
    },
    /// Serve until SIGTERM or SIGINT.
    Run {
        #[arg(long)]
        data: PathBuf,
    },
    /// Audit trail operations.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the audit chain offline: every record's hash and link, and the signed
    /// checkpoints. Names the first record changed, removed, inserted or moved; exits 1 then.
    Verify {
        /// The server's data directory.
        #[arg(long, required_unless_present = "export", conflicts_with = "export")]
        data: Option<PathBuf>,
        /// An export written by `fernwart audit export`.
        #[arg(long)]
        export: Option<PathBuf>,
        /// With --export: the server key to trust (from `fernwart-server audit key`).
        #[arg(long, requires = "export")]
        key: Option<String>,
    },
    /// Print the public key that signs the audit checkpoints (to check exports against).
    Key {
        #[arg(long)]
        data: PathBuf,
    },
}

fn main() -> ExitCode {
    fernwart_transport::malloc::tune_for_server();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fernwart-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Init { data, listen, public_url, admin } => {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the admin password from stdin")?;
            let password = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
            if password.is_empty() {
                anyhow::bail!("no admin password on stdin");
            }
            fernwart_server::init(&fernwart_server::InitOptions {
                data: data.clone(),
                listen,
                public_url,
                admin,
                admin_password: password.to_string(),
            })?;
            println!(
                "initialised {}; CA certificate for agents and technicians: {}",
                data.display(),
                data.join("ca.pem").display()
            );
            Ok(())
        }
        Cmd::Run { data } => {
            let cfg = fernwart_server::Config::load(&data, std::env::vars())?;
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(async move {
                let listener = fernwart_server::bind(&cfg).await?;
                let shutdown = CancellationToken::new();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    stop.cancel();
                });
                tracing::info!(listen = %cfg.settings.server.listen, "fernwart-server running");
                fernwart_server::run(&data, cfg, listener, shutdown).await?;
                Ok(())
            })
        }
        Cmd::Audit { cmd: AuditCmd::Verify { data, export, key } } => {
            use fernwart_server::audit::verify;
            let report = match (data, export) {
                (Some(dir), _) => verify::verify_data(&dir)?,
                (None, Some(file)) => verify::verify_export(&file, key.as_deref())?,
                (None, None) => anyhow::bail!("give --data DIR or --export FILE"),
            };
            println!("{report}");
            Ok(())
        }
        Cmd::Audit { cmd: AuditCmd::Key { data } } => {
            let path = data.join(fernwart_server::audit::signing::KEY_FILE);
            let key = fernwart_server::audit::signing::SigningKey::load(&path)?;
            println!("{}", key.public_hex());
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
