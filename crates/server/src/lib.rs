//! fernwart-server: the rendezvous server.
//!
//! One TLS port serves the JSON API, the agent links (mutual TLS) and the technician links.
//! State lives in embedded SQLite in the data directory; live links live in the [`relay::Hub`].

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod api;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod ca;
pub mod config;
pub mod console;
pub mod domain;
pub mod events;
pub mod relay;
pub mod security_keys;
pub mod sessions;
pub mod settings;
pub mod store;
pub mod tls;
pub mod util;

pub use config::Config;

/// Shared server state, cheap to clone: the wiring of config, store, relay and limits.
#[derive(Clone)]
pub struct App(Arc<AppInner>);

pub struct AppInner {
    pub cfg: Config,
    pub store: store::Store,
    pub ca: ca::Ca,
    /// Live links; subscribes to the changes the API publishes on `relay.events`.
    pub relay: relay::Relay,
    pub limits: api::Limits,
    /// The settings in force (`server.toml` and the changes made at run time).
    pub settings: Arc<settings::Live>,
    pub dummy_hash: String,
    /// Signs checkpoints of the audit chain.
    pub audit_key: Arc<audit::signing::SigningKey>,
    /// Copies the audit trail to syslog and a JSON lines file.
    pub siem: audit::siem::Exporter,
    pub shutdown: CancellationToken,
}

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("cannot open the database")]
    Store(#[from] store::StoreError),
    #[error("certificate authority")]
    Ca(#[from] ca::CaError),
    #[error("TLS setup")]
    Tls(#[from] tls::TlsSetupError),
    #[error("audit signing key")]
    AuditKey(#[from] audit::signing::KeyError),
    #[error("{0}")]
    Init(String),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct InitOptions {
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub public_url: String,
    pub admin: String,
    pub admin_password: String,
}

/// `fernwart-server init`: data directory, CA, server certificate, settings, first admin.
pub fn init(opts: &InitOptions) -> Result<(), ServerError> {
    let url = url::Url::parse(&opts.public_url)
        .map_err(|e| ServerError::Init(format!("--public-url {}: {e}", opts.public_url)))?;
    if url.scheme() != "https" {
        return Err(ServerError::Init("--public-url must start with https://".into()));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ServerError::Init("--public-url has no host".into()))?
        .to_owned();
    if !domain::names::valid(&opts.admin) {
        return Err(ServerError::Init(format!(
            "admin name {:?}: use letters, digits, - _ . @ (at most 64)",
            opts.admin
        )));
    }
    if opts.data.join(config::FILE_NAME).exists() || opts.data.join(store::DB_FILE).exists() {
        return Err(ServerError::Init(format!("{} is already initialised", opts.data.display())));
    }
    let policy = config::PasswordSection::default();
    auth::check_policy(&opts.admin_password, &policy, &opts.admin)
        .map_err(|e| ServerError::Init(format!("admin {e}")))?;
    std::fs::create_dir_all(&opts.data)
        .map_err(|e| ServerError::Init(format!("cannot create {}: {e}", opts.data.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&opts.data, std::fs::Permissions::from_mode(0o700));
    }
    let ca = ca::Ca::create(&opts.data, &host)?;
    let mut hosts = vec![host.trim_start_matches('[').trim_end_matches(']').to_owned()];
    let listen_ip = opts.listen.ip();
    if !listen_ip.is_unspecified() && !hosts.contains(&listen_ip.to_string()) {
        hosts.push(listen_ip.to_string());
    }
    ca.issue_server_cert(&opts.data, &hosts)?;
    let settings = config::Settings {
        server: config::ServerSection {
            listen: opts.listen,
            public_url: opts.public_url.clone(),
            max_connections: 16_384,
            max_connections_per_source: 64,
            reserved_for_agents: None,
            request_timeout: "30s".into(),
        },
        auth: Default::default(),
        password: Default::default(),
        enrolment: Default::default(),
        sessions: Default::default(),
        audit: Default::default(),
    };
    let text = toml::to_string_pretty(&settings).map_err(|e| ServerError::Init(e.to_string()))?;
    ca::write_file(
        &opts.data.join(config::FILE_NAME),
        format!("# fernwart server settings; see docs/server.md\n{text}").as_bytes(),
        0o600,
    )?;
    let store = store::Store::open(&opts.data)?;
    let hash = auth::hash_password(&opts.admin_password).map_err(ServerError::Init)?;
    let admin = store::NewUser {
        name: opts.admin.clone(),
        role: domain::Role::Admin,
        org: None,
        password_hash: hash,
        expires_at: None,
    };
    let entry = audit::Entry::new(
        &opts.admin,
        "local",
        audit::Event::ServerInit { public_url: opts.public_url.clone() },
    );
    store.blocking().user_add(&admin, util::now(), &entry)?;
    Ok(())
}

impl App {
    /// Opens the data directory's store and CA and starts the background tasks (audit writer,
    /// expiry sweeper). Must run inside a tokio runtime.
    pub fn open(data: &Path, cfg: Config, shutdown: CancellationToken) -> Result<App, ServerError> {
        let store = store::Store::open(data)?;
        let ca = ca::Ca::load(data)?;
        let audit_key = Arc::new(audit::signing::SigningKey::load_or_create(data)?);
        let audit = store::AuditQueue::start(store.clone());
        let settings = Arc::new(settings::Live::load(&cfg, &store)?);
        let relay = relay::Relay::new(store.clone(), audit, shutdown.clone(), settings.clone());
        let limits = api::Limits::new(&cfg);
        let siem = audit::siem::Exporter::start(&store, &cfg);
        let app = App(Arc::new(AppInner {
            cfg,
            store,
            ca,
            relay,
            limits,
            settings,
            dummy_hash: auth::dummy_hash(),
            audit_key,
            siem,
            shutdown,
        }));
        tokio::spawn(checkpointer(app.clone()));
        tokio::spawn(audit::alerts::run(app.clone()));
        tokio::spawn(expiry_sweeper(app.clone()));
        Ok(app)
    }
}

/// How often the end of the audit chain is signed (when it grew).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// Signs the audit chain's end every [`CHECKPOINT_EVERY`] and once more at shutdown.
async fn checkpointer(app: App) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = app.shutdown.cancelled() => true,
        };
        checkpoint(&app).await;
        if stop {
            return;
        }
    }
}

pub async fn checkpoint(app: &App) {
    let key = app.audit_key.clone();
    let signed = app
        .store
        .run(move |b| b.audit_checkpoint(&|msg: &[u8]| key.sign(msg), util::now_ms()))
        .await;
    if let Err(e) = signed {
        tracing::error!(error = %e, "cannot sign an audit checkpoint");
    }
}

/// Expires sessions whose window closed, once a second.
async fn expiry_sweeper(app: App) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        let now = util::now();
        let overdue = match app.store.run(move |b| b.sessions_overdue(now)).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "cannot list overdue sessions");
                continue;
            }
        };
        for s in overdue {
            sessions::expire(&app.store, &app.relay.events, s.id, now).await;
        }
    }
}

/// How long a stop waits for its links and tunnels to end and record it.
const LINKS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// `fernwart-server run`: serve on `listener` until `shutdown` fires.
pub async fn run(
    data: &Path,
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let tls = tls::server_config(data)?;
    let app = App::open(data, cfg, shutdown.clone())?;
    api::serve(app.clone(), listener, tls).await;
    // The stop ends the links and their tunnels; each writes its last record (`tunnel.close`,
    // the link's end) a moment later. Flushed before that, those records would be lost with
    // the runtime: wait for them first, for a bounded time (a tunnel still opening waits at
    // most a handshake timeout for its peers).
    app.relay.tasks.close();
    if tokio::time::timeout(LINKS_GRACE, app.relay.tasks.wait()).await.is_err() {
        tracing::warn!(left = app.relay.tasks.len(), "links still running at shutdown");
    }
    // What the links and tunnels recorded last is written before the chain is signed.
    app.relay.audit.flush().await;
    // The last records of a clean stop are signed and exported too.
    checkpoint(&app).await;
    app.siem.finish().await;
    Ok(())
}

pub async fn bind(cfg: &Config) -> Result<TcpListener, ServerError> {
    let addr = cfg.settings.server.listen;
    TcpListener::bind(addr).await.map_err(|source| ServerError::Listen { addr, source })
}
