//! Outbound connections: TCP, optionally through an HTTP CONNECT proxy, then TLS.

use std::{io, sync::Arc, time::Duration};

use base64::Engine;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

use crate::read_ahead::ReadAhead;
use url::Url;

/// Timeout for the TCP connect, the proxy's answer and the TLS handshake, each.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a proxy may send as its CONNECT response head.
const MAX_PROXY_RESPONSE: usize = 8 * 1024;

/// An HTTP proxy for outbound links (`--proxy` or `HTTPS_PROXY`), with hosts to bypass.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    pub url: Option<Url>,
    pub no_proxy: Vec<String>,
}

impl ProxyConfig {
    /// From an explicit `--proxy`, else the conventional environment values passed in.
    pub fn resolve(
        explicit: Option<&str>,
        https_proxy: Option<String>,
        no_proxy: Option<String>,
    ) -> Result<Self, io::Error> {
        let raw = explicit.map(str::to_owned).or(https_proxy).filter(|s| !s.trim().is_empty());
        let url = match raw {
            Some(raw) => {
                let with_scheme =
                    if raw.contains("://") { raw.clone() } else { format!("http://{raw}") };
                let url = Url::parse(&with_scheme).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("proxy URL {raw:?}: {e}"))
                })?;
                if url.scheme() != "http" {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "proxy URL {raw:?}: only http:// proxies (HTTP CONNECT) are supported"
                        ),
                    ));
                }
                Some(url)
            }
            None => None,
        };
        let no_proxy = no_proxy
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().trim_start_matches('.').to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Self { url, no_proxy })
    }

    fn for_host(&self, host: &str) -> Option<&Url> {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let bypass = self
            .no_proxy
            .iter()
            .any(|n| n == "*" || host == *n || host.ends_with(&format!(".{n}")));
        if bypass {
            None
        } else {
            self.url.as_ref()
        }
    }
}

/// Opens TLS connections to one server.
#[derive(Clone)]
pub struct Dialer {
    pub server: Url,
    pub tls: Arc<ClientConfig>,
    pub proxy: ProxyConfig,
}

impl Dialer {
    pub fn new(server: Url, tls: Arc<ClientConfig>, proxy: ProxyConfig) -> io::Result<Self> {
        if server.scheme() != "https" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("server URL {server} must start with https://"),
            ));
        }
        if server.host_str().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("server URL {server} has no host"),
            ));
        }
        Ok(Self { server, tls, proxy })
    }

    pub fn host(&self) -> String {
        self.server.host_str().unwrap_or_default().to_owned()
    }

    pub fn port(&self) -> u16 {
        self.server.port_or_known_default().unwrap_or(443)
    }

    /// `host:port` as used in a Host header or a CONNECT line.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host(), self.port())
    }

    /// TCP (through the proxy when one applies), then a TLS 1.3 handshake.
    pub async fn connect(&self) -> io::Result<TlsStream<ReadAhead<TcpStream>>> {
        let tcp = match self.proxy.for_host(&self.host()) {
            Some(proxy) => connect_via_proxy(proxy, &self.authority()).await?,
            None => {
                let host = self.host();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                timed("connect to server", TcpStream::connect((host, self.port()))).await?
            }
        };
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(
            self.host().trim_start_matches('[').trim_end_matches(']').to_owned(),
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = TlsConnector::from(self.tls.clone());
        timed("TLS handshake", tls.connect(name, ReadAhead::new(tcp))).await
    }
}

async fn timed<T>(
    what: &str,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(DIAL_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: no answer within {}s", DIAL_TIMEOUT.as_secs()),
        )),
    }
}

async fn connect_via_proxy(proxy: &Url, authority: &str) -> io::Result<TcpStream> {
    let host = proxy.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = proxy.port_or_known_default().unwrap_or(3128);
    let mut tcp = timed("connect to proxy", TcpStream::connect((host, port))).await?;
    tcp.set_nodelay(true)?;
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if !proxy.username().is_empty() {
        let user = percent_decode(proxy.username());
        let pass = percent_decode(proxy.password().unwrap_or_default());
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        head.push_str(&format!("Proxy-Authorization: Basic {cred}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await?;
    let response = timed("proxy CONNECT", read_head(&mut tcp)).await?;
    let status_line = response.lines().next().unwrap_or_default().to_owned();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("proxy {host}:{port} refused CONNECT {authority}: {status_line}"),
        ));
    }
    Ok(tcp)
}

/// Reads a response head byte by byte so that no byte after it (the TLS stream) is consumed.
async fn read_head(tcp: &mut TcpStream) -> io::Result<String> {
    let mut buf = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() >= MAX_PROXY_RESPONSE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "proxy response head too long"));
        }
        if tcp.read(&mut byte).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "proxy closed the connection during CONNECT",
            ));
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_proxy_wins_and_scheme_defaults_to_http() {
        let p = ProxyConfig::resolve(Some("127.0.0.1:8888"), Some("http://other:1".into()), None)
            .unwrap();
        assert_eq!(p.url.unwrap().as_str(), "http://127.0.0.1:8888/");
    }

    #[test]
    fn no_proxy_bypasses_listed_hosts() {
        let p = ProxyConfig::resolve(
            None,
            Some("http://proxy:3128".into()),
            Some("example.org, 10.0.0.1".into()),
        )
        .unwrap();
        assert!(p.for_host("example.org").is_none());
        assert!(p.for_host("a.example.org").is_none());
        assert!(p.for_host("10.0.0.1").is_none());
        assert!(p.for_host("server.test").is_some());
    }

    #[test]
    fn https_proxies_are_refused_clearly() {
        let err = ProxyConfig::resolve(Some("https://proxy:3128"), None, None).unwrap_err();
        assert!(err.to_string().contains("only http://"));
    }
}
