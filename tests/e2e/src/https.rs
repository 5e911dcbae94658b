//! A small raw HTTPS/1.1 client for the attack scenarios: it trusts the world's CA, can bind
//! a chosen loopback source address, and gives access to the bytes on the wire (slow bodies,
//! oversized headers), which the real CLI never sends.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde_json::Value;

/// How long one request may take unless told otherwise.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to reach the server.
#[derive(Clone)]
pub struct Https {
    config: Arc<ClientConfig>,
    server: SocketAddr,
    name: ServerName<'static>,
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("HTTP {} body is not JSON: {:?}", self.status, self.body))
    }

    /// The `error` of a JSON error body, else the body itself.
    pub fn error(&self) -> String {
        self.json()
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| self.body.clone())
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (lower case), in order (`set-cookie`).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    /// A one-line description for messages.
    pub fn summary(&self) -> String {
        let body: String = self.body.chars().take(200).collect();
        format!("HTTP {} {}", self.status, body.trim())
    }
}

/// What a connection did within a deadline.
#[derive(Debug)]
pub enum Outcome {
    /// The server answered (possibly before the request was complete).
    Answered(Reply),
    /// The server closed (or reset) the connection without a parsable answer.
    Closed,
    /// Still open, nothing received.
    Open,
}

impl Https {
    /// A client for `server` that trusts the certificates in `ca` (PEM).
    pub fn new(ca: &Path, server: SocketAddr) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading CA certificates from {}", ca.display()))?
        {
            roots.add(cert.context("a certificate in the CA file")?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(server.ip().to_string())
            .context("the server address as a TLS name")?;
        Ok(Self { config: Arc::new(config), server, name })
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// A TLS connection from the default source address, handshake done.
    pub fn connect(&self) -> Result<Conn> {
        let tcp = TcpStream::connect_timeout(&self.server, REQUEST_TIMEOUT)
            .with_context(|| format!("connecting to {}", self.server))?;
        self.tls(tcp)
    }

    /// A TLS connection from `source` (any loopback address), handshake done.
    pub fn connect_from(&self, source: IpAddr) -> Result<Conn> {
        let tcp = tcp_from(source, self.server, REQUEST_TIMEOUT)?;
        self.tls(tcp)
    }

    /// Wraps `tcp` in TLS and completes the handshake.
    pub fn tls(&self, tcp: TcpStream) -> Result<Conn> {
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        tcp.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        let conn = ClientConnection::new(self.config.clone(), self.name.clone())
            .context("starting a TLS client")?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).context("TLS handshake with the server")?;
        }
        Ok(Conn { stream, buf: Vec::new() })
    }

    /// One request on a fresh connection.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply> {
        let mut conn = self.connect()?;
        conn.request(method, path, token, body)
    }

    /// One request of raw bytes on a fresh connection.
    pub fn raw(&self, bytes: &[u8]) -> Result<Reply> {
        let mut conn = self.connect()?;
        conn.send(bytes).context("sending a request")?;
        match conn.wait(REQUEST_TIMEOUT)? {
            Outcome::Answered(r) => Ok(r),
            Outcome::Closed => bail!("the server closed without an answer"),
            Outcome::Open => bail!("no answer within {REQUEST_TIMEOUT:?}"),
        }
    }

    /// `POST /v1/login`.
    pub fn login(&self, user: &str, password: &str, otp: Option<&str>) -> Result<Reply> {
        self.request("POST", "/v1/login", None, Some(&login_body(user, password, otp)))
    }
}

/// The JSON body of `POST /v1/login`.
pub fn login_body(user: &str, password: &str, otp: Option<&str>) -> Value {
    serde_json::json!({"user": user, "password": password, "otp": otp})
}

/// The bytes of one HTTP/1.1 request with a JSON body.
pub fn request_bytes(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: fernwart\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if method != "GET" || !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// One TLS connection to the server.
pub struct Conn {
    stream: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    /// Sends one request and reads its answer.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply> {
        self.send(&request_bytes(method, path, token, body))
            .with_context(|| format!("sending {method} {path}"))?;
        match self.wait(REQUEST_TIMEOUT)? {
            Outcome::Answered(r) => Ok(r),
            Outcome::Closed => bail!("{method} {path}: the server closed without an answer"),
            Outcome::Open => bail!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}"),
        }
    }

    /// Writes `bytes` and flushes them onto the wire.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads until a whole answer arrived, the server closed, or `timeout` passed.
    pub fn wait(&mut self, timeout: Duration) -> Result<Outcome> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(reply) = parse_reply(&self.buf, false)? {
                return Ok(Outcome::Answered(reply));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Outcome::Open);
            }
            self.stream.sock.set_read_timeout(Some(left.min(Duration::from_millis(100))))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(self.ended()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A close without close_notify, a reset, a TLS alert: the connection is over.
                Err(_) => return Ok(self.ended()),
            }
        }
    }

    fn ended(&mut self) -> Outcome {
        match parse_reply(&self.buf, true) {
            Ok(Some(reply)) => Outcome::Answered(reply),
            _ => Outcome::Closed,
        }
    }
}

/// Parses an answer from `buf`: `None` while incomplete. With `eof`, a body without a length
/// ends at the end of the data.
pub(crate) fn parse_reply(buf: &[u8], eof: bool) -> Result<Option<Reply>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP status line: {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let body = if let Some(len) = header("content-length") {
        let len: usize = len.parse().with_context(|| format!("Content-Length {len:?}"))?;
        if rest.len() < len {
            if eof {
                bail!("the answer ended after {} of {len} body bytes", rest.len());
            }
            return Ok(None);
        }
        rest[..len].to_vec()
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        match dechunk(rest)? {
            Some(b) => b,
            None if eof => bail!("the chunked answer ended early"),
            None => return Ok(None),
        }
    } else if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Reply { status, body: String::from_utf8_lossy(&body).into_owned(), headers }))
}

/// Decodes a chunked body: `None` while incomplete.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let size_text = String::from_utf8_lossy(&data[..eol]).into_owned();
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A TCP connection to `dest` from `source` (port chosen by the kernel). The standard library
/// cannot bind before connecting, so tokio's `TcpSocket` does it, in a runtime of its own.
pub fn tcp_from(source: IpAddr, dest: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("a runtime for one connect")?;
    let stream = rt.block_on(async move {
        let socket = match source {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .context("creating a TCP socket")?;
        socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("binding {source}"))?;
        let stream = tokio::time::timeout(timeout, socket.connect(dest))
            .await
            .map_err(|_| anyhow!("connecting {source} -> {dest}: no answer within {timeout:?}"))?
            .with_context(|| format!("connecting {source} -> {dest}"))?;
        stream.into_std().context("handing the socket over")
    })?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// The login token that `fernwart login` stored for `who` in the world rooted at `root`
/// (`$FERNWART_HOME/login.json`, the harness keeps it in `ROOT/home-WHO`).
pub fn cli_token(root: &Path, who: &str) -> Result<String> {
    let path = root.join(format!("home-{who}")).join("login.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let js: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    js.get("token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} has no token", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_with_length_chunks_and_eof() {
        let r = parse_reply(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}", false)
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (401, "{}"));
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{}", false)
            .unwrap()
            .is_none());
        let r = parse_reply(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, "{}");
        let r = parse_reply(b"HTTP/1.1 408 Request Timeout\r\n\r\nslow", true).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_str()), (408, "slow"));
    }

    #[test]
    fn requests_carry_token_and_length() {
        let body = serde_json::json!({"a": 1});
        let text =
            String::from_utf8(request_bytes("POST", "/x", Some("t0k"), Some(&body))).unwrap();
        assert!(text.starts_with("POST /x HTTP/1.1\r\n"));
        assert!(text.contains("Authorization: Bearer t0k\r\n"));
        assert!(text.ends_with("Content-Length: 7\r\n\r\n{\"a\":1}"));
    }
}
