#![allow(clippy::unwrap_used)] // test code: a failed setup step should panic loudly

//! Hostile input on real links: the server closes the offending link and keeps serving others.

use std::{net::SocketAddr, path::Path, time::Duration};

use fernwart_proto::{ClientToServer, ServerToClient, PROTOCOL_VERSION};
use fernwart_server::{store::Store, util, Config, InitOptions};
use fernwart_transport::{
    frame_io::read_frame_within, http_client::HttpMethod, tls, write_frame, Dialer, HttpClient,
    Mode, Mux, ProxyConfig,
};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

struct Server {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Server {
    start_with(Vec::new()).await
}

/// A server with `FERNWART_<SECTION>_<KEY>` settings.
async fn start_with(env: Vec<(String, String)>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("srv");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    fernwart_server::init(&InitOptions {
        data: data.clone(),
        listen: addr,
        public_url: format!("https://127.0.0.1:{}", addr.port()),
        admin: "admin".into(),
        admin_password: "Adm1n-Passw0rd!2026x".into(),
    })
    .unwrap();
    let cfg = Config::load(&data, env).unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { fernwart_server::run(&data, cfg, listener, stop).await.unwrap() });
    Server { addr, dir, shutdown }
}

impl Server {
    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("srv")
    }

    fn client(&self) -> HttpClient {
        let roots = tls::roots(Some(&self.data().join("ca.pem"))).unwrap();
        let cfg = tls::client_config(roots, None).unwrap();
        let url = url::Url::parse(&format!("https://127.0.0.1:{}", self.addr.port())).unwrap();
        HttpClient::new(Dialer::new(url, cfg, ProxyConfig::default()).unwrap())
    }

    /// A technician with a full login token, a machine and a prepared session s1, straight in the DB.
    fn seed(&self) -> String {
        seed(&self.data())
    }

    async fn healthy(&self) -> bool {
        let r: Result<serde_json::Value, _> =
            self.client().json::<(), _>(HttpMethod::GET, "/v1/health", None, None).await;
        r.is_ok()
    }
}

fn seed(data: &Path) -> String {
    use fernwart_server::{
        audit::{Entry, Event},
        domain::Role,
        store::{NewSession, NewUser},
    };
    let store = Store::open(data).unwrap();
    let b = store.blocking();
    let token = util::random_token();
    let now = util::now();
    let e = |event| Entry::new("admin", "test", event);
    let user = NewUser {
        name: "tech1".into(),
        role: Role::Technician,
        org: None,
        password_hash: "x".into(),
        expires_at: None,
    };
    let uid = b.user_add(&user, now, &e(Event::UserDisable { name: "tech1".into() })).unwrap();
    b.login_succeeded(
        uid,
        &util::token_hash(&token),
        fernwart_api::Scope::Full,
        now,
        now + 3600,
        &e(Event::UserDisable { name: "tech1".into() }),
    )
    .unwrap();
    let mid = b
        .machine_add(
            "m1",
            None,
            "unused",
            now,
            now + 60,
            &e(Event::UserDisable { name: "m1".into() }),
        )
        .unwrap();
    let targets = [fernwart_api::TargetInfo {
        name: "plc".into(),
        address: "127.0.0.1:9".into(),
        protocol: fernwart_api::TargetProtocol::Tcp,
    }];
    let trust = fernwart_server::store::AgentTrust::default();
    b.agent_online(mid, &targets, true, &trust, now, &e(Event::UserDisable { name: "m1".into() }))
        .unwrap();
    let session = NewSession {
        name: "s1".into(),
        machine: "m1".into(),
        targets: vec!["plc".into()],
        users: vec!["tech1".into()],
        reason: "t".into(),
        approval_required: false,
        from: now,
        until: now + 3600,
        created_by: "admin".into(),
        created_at: now,
        record: false,
    };
    // Sessions without approval allowed, as with `sessions.allow_no_approval`.
    let rule =
        |_: &fernwart_server::authz::PrepareFacts| Ok(fernwart_server::authz::Release::NotNeeded);
    b.session_create(&session, &rule, &e(Event::UserDisable { name: "s1".into() })).unwrap();
    token
}

async fn link(server: &Server, token: &str) -> Mux {
    let io = server.client().link("/v1/connect/s1", Some(token)).await.unwrap();
    Mux::start(io, Mode::Client).await.unwrap().0
}

#[tokio::test]
async fn oversized_frame_on_the_control_stream_closes_the_link() {
    let server = start().await;
    let token = server.seed();
    let mux = link(&server, &token).await;
    let mut control = mux.open().await.unwrap();
    control.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    control.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), mux.closed()).await.expect("link not closed");
    assert!(server.healthy().await);
}

#[tokio::test]
async fn malformed_hello_closes_the_link() {
    let server = start().await;
    let token = server.seed();
    let mux = link(&server, &token).await;
    let mut control = mux.open().await.unwrap();
    let garbage = b"{\"type\":\"hello\",\"version\":\"one\"}";
    control.write_all(&(garbage.len() as u32).to_be_bytes()).await.unwrap();
    control.write_all(garbage).await.unwrap();
    control.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), mux.closed()).await.expect("link not closed");
    assert!(server.healthy().await);
}

#[tokio::test]
async fn wrong_protocol_version_gets_a_clear_refusal() {
    let server = start().await;
    let token = server.seed();
    let mux = link(&server, &token).await;
    let mut control = mux.open().await.unwrap();
    write_frame(
        &mut control,
        &ClientToServer::Hello { version: PROTOCOL_VERSION + 7, client: "x".into(), e2e_key: None },
    )
    .await
    .unwrap();
    let reply: ServerToClient =
        read_frame_within(&mut control, Duration::from_secs(5)).await.unwrap();
    match reply {
        ServerToClient::Closed { reason, .. } => {
            assert!(reason.contains("unsupported"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_open_request_on_a_data_stream_leaves_the_link_usable() {
    let server = start().await;
    let token = server.seed();
    let mux = link(&server, &token).await;
    let mut control = mux.open().await.unwrap();
    write_frame(
        &mut control,
        &ClientToServer::Hello {
            version: PROTOCOL_VERSION,
            client: "x".into(),
            e2e_key: Some(
                fernwart_proto::e2e::StaticKey::from_secret(&[1; 32]).unwrap().public().to_string(),
            ),
        },
    )
    .await
    .unwrap();
    let ready: ServerToClient =
        read_frame_within(&mut control, Duration::from_secs(10)).await.unwrap();
    assert!(matches!(ready, ServerToClient::Ready { .. }), "{ready:?}");
    // A data stream with garbage: that stream dies, the link lives.
    let mut bad = mux.open().await.unwrap();
    bad.write_all(b"\x00\x00\x00\x05hello").await.unwrap();
    bad.flush().await.unwrap();
    // An unknown target: a clear refusal.
    let mut s = mux.open().await.unwrap();
    write_frame(
        &mut s,
        &fernwart_proto::OpenRequest {
            session: "s1".into(),
            target: "ssh".into(),
            e2e: None,
            hold: false,
        },
    )
    .await
    .unwrap();
    let r: fernwart_proto::OpenReply =
        read_frame_within(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(!r.ok);
    assert!(r.error.unwrap_or_default().contains("not part of session"));
    // The machine is offline: a clear refusal too.
    let mut s = mux.open().await.unwrap();
    write_frame(
        &mut s,
        &fernwart_proto::OpenRequest {
            session: "s1".into(),
            target: "plc".into(),
            e2e: None,
            hold: false,
        },
    )
    .await
    .unwrap();
    let r: fernwart_proto::OpenReply =
        read_frame_within(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(r.error.unwrap_or_default().contains("offline"));
    assert!(!mux.is_closed());
}

#[tokio::test]
async fn silent_and_half_open_connections_do_not_block_others() {
    // All from 127.0.0.1: lift the per-source cap (tested end to end) to test the rest.
    let env = vec![("FERNWART_SERVER_MAX_CONNECTIONS_PER_SOURCE".to_owned(), "1000".to_owned())];
    let server = start_with(env).await;
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // Garbage instead of a TLS ClientHello.
    let mut junk = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    junk.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3]).await.unwrap();
    assert!(server.healthy().await);
    // A TLS session that never sends a request: hyper's header timeout closes it; others go on.
    assert!(server.healthy().await);
}

#[tokio::test]
async fn requests_without_login_and_with_wrong_tokens_are_refused() {
    let server = start().await;
    server.seed();
    let c = server.client();
    let e = c
        .json::<(), serde_json::Value>(HttpMethod::GET, "/v1/sessions", None, None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    let e = c
        .json::<(), serde_json::Value>(HttpMethod::GET, "/v1/sessions", Some("forged"), None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    let e = c.link("/v1/connect/s1", Some("forged")).await.err().unwrap();
    assert_eq!(e.status(), Some(401));
    // The agent endpoint demands a client certificate.
    let e = c.link("/v1/agent/link", None).await.err().unwrap();
    assert_eq!(e.status(), Some(401));
    // Oversized bodies are refused before they are parsed.
    let big = serde_json::json!({"user": "x".repeat(100_000), "password": "y"});
    let e = c
        .json::<_, serde_json::Value>(HttpMethod::POST, "/v1/login", None, Some(&big))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(413));
}
