//! The running server shrugs off half-open connections and garbage, and keeps serving.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use fernwart_e2e::{https::tcp_from, random_bytes, roundtrip, wait_eof, Echo, World};
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};

const T: Duration = Duration::from_secs(10);

fn server_alive(w: &mut World) -> Result<()> {
    let Some(p) = w.server() else { bail!("no server") };
    if p.running() {
        Ok(())
    } else {
        bail!("the server died: {}", p.log_tail())
    }
}

/// A TLS client trusting the world's CA.
fn tls_client(w: &World) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&w.ca).context("reading ca.pem")? {
        roots.add(cert.context("a certificate in ca.pem")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(w.listen.ip().to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let tcp = TcpStream::connect_timeout(&w.listen, T)?;
    tcp.set_read_timeout(Some(Duration::from_secs(1)))?;
    tcp.set_write_timeout(Some(T))?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

#[test]
fn half_open_and_garbage_connections_do_not_hurt() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::standard()?;
    w.start_agent("m1", &[("echo", echo.addr)])?;
    w.switch("m1", true)?;
    w.create_session("s1", "m1", &["echo"], &["tech1"])?;

    // 200 TCP connections that never send a ClientHello, from another address than the
    // technician's (the server caps connections per source: beyond the cap they are closed)
    let mut idle: Vec<TcpStream> = Vec::new();
    let elsewhere = std::net::IpAddr::from([127, 0, 0, 2]);
    for i in 0..200 {
        idle.push(
            tcp_from(elsewhere, w.listen, T)
                .with_context(|| format!("half-open connection {i}"))?,
        );
    }
    let opened = Instant::now();

    // garbage on the TLS port: random bytes, plain HTTP
    for (i, junk) in [random_bytes(64 * 1024), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()]
        .into_iter()
        .enumerate()
    {
        let mut s = TcpStream::connect_timeout(&w.listen, T)?;
        let _ = s.write_all(&junk); // the server may close while we write: fine
        ensure!(
            wait_eof(&mut s, Duration::from_secs(15)).is_some(),
            "garbage connection {i} still open after 15 s"
        );
    }

    // TLS fine, then an HTTP request with a 1 MB header line
    let mut tls = tls_client(&w)?;
    let mut req = b"GET / HTTP/1.1\r\nHost: fernwart\r\nX-Junk: ".to_vec();
    req.extend(vec![b'a'; 1 << 20]);
    req.extend_from_slice(b"\r\n\r\n");
    let _ = tls.write_all(&req).and_then(|()| tls.flush());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        if Instant::now() >= deadline || answer.len() > 64 * 1024 {
            break;
        }
    }
    let head = String::from_utf8_lossy(&answer[..answer.len().min(80)]).into_owned();
    ensure!(
        answer.is_empty() || head.starts_with("HTTP/1.1 4"),
        "a 1 MB header got {head:?} instead of a 4xx or a close"
    );
    eprintln!("1 MB header answered: {:?}", head.lines().next().unwrap_or("(closed)"));

    // the normal path still works while the 200 idle connections are held
    server_alive(&mut w)?;
    let conn = w.connect_approved("s1", "tech1", "op1")?;
    roundtrip(conn.forward("echo")?, &random_bytes(256 * 1024), Duration::from_secs(30))?;
    server_alive(&mut w)?;

    // every handshake has a timeout: the server drops the idle ones by itself
    let first = idle.first_mut().context("no idle connections")?;
    let left = Duration::from_secs(30).saturating_sub(opened.elapsed());
    ensure!(
        wait_eof(first, left).is_some(),
        "a connection without a ClientHello was still open 30 s later"
    );
    eprintln!("idle connection closed by the server {:?} after it opened", opened.elapsed());
    Ok(())
}
