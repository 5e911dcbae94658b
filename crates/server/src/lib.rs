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
pub mod auth;
pub mod ca;
pub mod config;
pub mod relay;
pub mod sessions;
pub mod store;
pub mod tls;
pub mod util;

pub use config::Config;

/// Shared server state, cheap to clone.
#[derive(Clone)]
pub struct App(Arc<AppInner>);

pub struct AppInner {
    pub cfg: Config,
    pub store: store::Store,
    pub ca: ca::Ca,
    pub hub: relay::Hub,
    pub dummy_hash: String,
    pub shutdown: CancellationToken,
    audit_tx: tokio::sync::mpsc::Sender<AsyncAudit>,
}

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

struct AsyncAudit {
    actor: String,
    action: String,
    target: String,
    source: String,
    details: serde_json::Value,
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
    if !util::valid_name(&opts.admin) {
        return Err(ServerError::Init(format!(
            "admin name {:?}: use letters, digits, - _ . @ (at most 64)",
            opts.admin
        )));
    }
    if opts.data.join(config::FILE_NAME).exists() || opts.data.join(store::DB_FILE).exists() {
        return Err(ServerError::Init(format!("{} is already initialised", opts.data.display())));
    }
    let policy = config::PasswordSection::default();
    auth::check_policy(&opts.admin_password, &policy)
        .map_err(|e| ServerError::Init(format!("admin {e}")))?;
    std::fs::create_dir_all(&opts.data)
        .map_err(|e| ServerError::Init(format!("cannot create {}: {e}", opts.data.display())))?;
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
        },
        auth: Default::default(),
        password: Default::default(),
        enrolment: Default::default(),
        sessions: Default::default(),
    };
    let text = toml::to_string_pretty(&settings).map_err(|e| ServerError::Init(e.to_string()))?;
    ca::write_file(
        &opts.data.join(config::FILE_NAME),
        format!("# fernwart server settings; see docs/server.md\n{text}").as_bytes(),
        0o600,
    )?;
    let store = store::Store::open(&opts.data)?;
    let hash = auth::hash_password(&opts.admin_password).map_err(ServerError::Init)?;
    store.tx(|tx| {
        tx.execute(
            "INSERT INTO users (name, role, password_hash, created_at) VALUES (?1, 'admin', ?2, ?3)",
            rusqlite::params![opts.admin, hash, util::now()],
        ).map_err(store::StoreError::from)?;
        store::audit(tx, "init", "server.init", &opts.admin, "local", serde_json::json!({"public_url": opts.public_url}))
    })?;
    Ok(())
}

impl App {
    pub fn open(data: &Path, cfg: Config, shutdown: CancellationToken) -> Result<App, ServerError> {
        let store = store::Store::open(data)?;
        let ca = ca::Ca::load(data)?;
        let (audit_tx, audit_rx) = tokio::sync::mpsc::channel(4096);
        let app = App(Arc::new(AppInner {
            cfg,
            store,
            ca,
            hub: relay::Hub::default(),
            dummy_hash: auth::dummy_hash(),
            shutdown,
            audit_tx,
        }));
        tokio::spawn(audit_writer(app.clone(), audit_rx));
        tokio::spawn(expiry_sweeper(app.clone()));
        Ok(app)
    }

    /// Records an event off the hot path (tunnel and link events); API changes record theirs
    /// in their own transaction instead.
    pub fn audit_async(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        source: &str,
        details: serde_json::Value,
    ) {
        let ev = AsyncAudit {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            source: source.into(),
            details,
        };
        match self.audit_tx.try_send(ev) {
            Ok(()) => {}
            // The queue is full: write this one directly rather than lose it.
            Err(tokio::sync::mpsc::error::TrySendError::Full(ev)) => {
                let app = self.clone();
                tokio::task::spawn_blocking(move || write_audit_batch(&app, &[ev]));
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(ev)) => {
                write_audit_batch(self, &[ev]);
            }
        }
    }

    /// Moves a session to `state`, records it, and tells the live side.
    pub fn transition(
        &self,
        s: &sessions::Session,
        state: &str,
        by: &str,
        source: &str,
    ) -> Result<(), store::StoreError> {
        self.store.tx(|tx| {
            sessions::set_state(tx, s.id, state, Some(by))?;
            store::audit(
                tx,
                by,
                &format!("session.{}", verb(state)),
                &s.name,
                source,
                serde_json::json!({"from": s.state, "to": state}),
            )
        })?;
        let terminal = sessions::TERMINAL.contains(&state);
        self.hub.session_changed(s.id, terminal);
        if terminal {
            self.hub.revoke(s.machine_id, &s.name);
        }
        Ok(())
    }

    pub fn expire(&self, s: &sessions::Session) {
        if let Err(e) = self.transition(s, "expired", "system", "server") {
            tracing::error!(error = %e, session = %s.name, "cannot expire session");
        }
    }
}

fn verb(state: &str) -> &str {
    match state {
        "requested" => "request",
        "approved" => "approve",
        "rejected" => "reject",
        "active" => "activate",
        "ended" => "end",
        "expired" => "expire",
        "revoked" => "revoke",
        other => other,
    }
}

async fn audit_writer(app: App, mut rx: tokio::sync::mpsc::Receiver<AsyncAudit>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 256 {
                break;
            }
        }
        let writer = app.clone();
        if tokio::task::spawn_blocking(move || write_audit_batch(&writer, &batch)).await.is_err() {
            tracing::error!("audit writer task failed");
        }
    }
}

fn write_audit_batch(app: &App, batch: &[AsyncAudit]) {
    let r = app.store.tx(|tx| {
        for ev in batch {
            store::audit(tx, &ev.actor, &ev.action, &ev.target, &ev.source, ev.details.clone())?;
        }
        Ok::<_, store::StoreError>(())
    });
    if let Err(e) = r {
        for ev in batch {
            tracing::error!(error = %e, actor = %ev.actor, action = %ev.action, target = %ev.target,
                details = %ev.details, "cannot write audit event");
        }
    }
}

async fn expiry_sweeper(app: App) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        let overdue = app.store.read(|c| sessions::overdue(c, util::now()));
        for (id, _machine, _name) in overdue.unwrap_or_default() {
            if let Ok(Some(s)) = app.store.read(|c| sessions::by_id(c, id)) {
                app.expire(&s);
            }
        }
    }
}

/// `fernwart-server run`: serve on `listener` until `shutdown` fires.
pub async fn run(
    data: &Path,
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let tls = tls::server_config(data)?;
    let app = App::open(data, cfg, shutdown.clone())?;
    api::serve(app, listener, tls).await;
    Ok(())
}

pub async fn bind(cfg: &Config) -> Result<TcpListener, ServerError> {
    let addr = cfg.settings.server.listen;
    TcpListener::bind(addr).await.map_err(|source| ServerError::Listen { addr, source })
}
