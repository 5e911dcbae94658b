//! The connection to a syslog receiver: TCP or TLS, with deadlines, and a check whether the
//! receiver is still there (it never sends anything, so anything readable is its close).

use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use crate::config::{SyslogTarget, SyslogTransport};

/// TCP connect and TLS handshake together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Writing one batch and flushing it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Data the receiver's TCP has not acknowledged this long breaks the connection
/// (`TCP_USER_TIMEOUT`), so a receiver that vanished without a close is noticed before its
/// records count as delivered ([`super::CONFIRM_AFTER`] is longer).
pub const UNACKED_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {target}")]
    Handshake {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no connection to {target} within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { target: String },
    #[error("cannot set up TLS for {target}")]
    TlsSetup {
        target: String,
        #[source]
        source: fernwart_transport::tls::TlsError,
    },
    #[error("writing to the receiver")]
    Write(#[source] std::io::Error),
    #[error("writing to the receiver took more than {WRITE_TIMEOUT:?}")]
    WriteTimeout,
    #[error("the receiver closed the connection")]
    Closed,
    #[error("the connection to the receiver broke")]
    Broken(#[source] std::io::Error),
}

trait Wire: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Wire for T {}

/// Builds TLS settings once and connects on demand.
pub struct Dialer {
    target: SyslogTarget,
    tls: Option<TlsConnector>,
}

/// One open connection.
pub struct Conn {
    wire: Box<dyn Wire>,
}

impl Dialer {
    pub fn new(target: SyslogTarget) -> Self {
        Self { target, tls: None }
    }

    pub fn target(&self) -> &SyslogTarget {
        &self.target
    }

    /// Connects (and shakes hands) within [`CONNECT_TIMEOUT`].
    pub async fn connect(&mut self) -> Result<Conn, TransportError> {
        let url = self.target.url();
        let tls = match self.target.transport {
            SyslogTransport::Tcp => None,
            SyslogTransport::Tls => Some(self.tls_connector()?),
        };
        let host = self.target.host.clone();
        let port = self.target.port;
        let attempt = async move {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|source| TransportError::Connect { target: url.clone(), source })?;
            // Batches are written whole and flushed: no reason to wait for more.
            let _ = tcp.set_nodelay(true);
            #[cfg(any(target_os = "linux", target_os = "android"))]
            let _ = socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(UNACKED_TIMEOUT));
            let wire: Box<dyn Wire> = match tls {
                None => Box::new(tcp),
                Some(tls) => {
                    // Checked when the settings were read.
                    let name = ServerName::try_from(host.clone()).map_err(|e| {
                        TransportError::Handshake {
                            target: url.clone(),
                            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                        }
                    })?;
                    let stream = tls
                        .connect(name, tcp)
                        .await
                        .map_err(|source| TransportError::Handshake { target: url, source })?;
                    Box::new(stream)
                }
            };
            Ok(wire)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(wire) => Ok(Conn { wire: wire? }),
            Err(_) => Err(TransportError::ConnectTimeout { target: self.target.url() }),
        }
    }

    fn tls_connector(&mut self) -> Result<TlsConnector, TransportError> {
        if let Some(tls) = &self.tls {
            return Ok(tls.clone());
        }
        let target = self.target.url();
        let roots = match &self.target.roots {
            Some(roots) => roots.clone(),
            None => {
                Arc::new(fernwart_transport::tls::roots(self.target.ca_file.as_deref()).map_err(
                    |source| TransportError::TlsSetup { target: target.clone(), source },
                )?)
            }
        };
        // TLS 1.2 and 1.3: RFC 5425 receivers (rsyslog, SIEM collectors) do not all speak 1.3.
        let config =
            rustls::ClientConfig::builder_with_provider(fernwart_transport::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TransportError::TlsSetup {
                    target,
                    source: fernwart_transport::tls::TlsError::Config(e),
                })?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tls = TlsConnector::from(Arc::new(config));
        self.tls = Some(tls.clone());
        Ok(tls)
    }
}

impl Conn {
    /// Writes `bytes` and flushes them, within [`WRITE_TIMEOUT`].
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        let write = async {
            self.wire.write_all(bytes).await?;
            self.wire.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(r) => r.map_err(TransportError::Write),
            Err(_) => Err(TransportError::WriteTimeout),
        }
    }

    /// Whether the receiver is still there, without waiting: a syslog receiver sends nothing,
    /// so end of stream or an error means it closed (a TLS receiver's session tickets are read
    /// and dropped).
    pub fn check(&mut self) -> Result<(), TransportError> {
        let mut buf = [0u8; 1024];
        // Bounded: a receiver that keeps sending cannot hold the sender here.
        for _ in 0..16 {
            match self.wire.read(&mut buf).now_or_never() {
                None => return Ok(()),
                Some(Ok(0)) => return Err(TransportError::Closed),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(TransportError::Broken(e)),
            }
        }
        Ok(())
    }

    /// Ends the connection cleanly and waits up to `wait` for the receiver to close its side.
    /// A receiver closes after it read everything up to our end, so `true` means every byte
    /// sent arrived.
    pub async fn close(mut self, wait: Duration) -> bool {
        let end = async {
            if self.wire.shutdown().await.is_err() {
                return false;
            }
            let mut buf = [0u8; 1024];
            loop {
                match self.wire.read(&mut buf).await {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    // A TLS receiver that closes without close_notify still read everything.
                    Err(e) => return e.kind() == std::io::ErrorKind::UnexpectedEof,
                }
            }
        };
        tokio::time::timeout(wait, end).await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::net::TcpListener;

    use super::*;

    async fn receiver() -> (TcpListener, Dialer) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = SyslogTarget::parse(&format!("tcp://127.0.0.1:{port}")).unwrap();
        (listener, Dialer::new(target))
    }

    #[tokio::test]
    async fn a_receiver_that_closes_is_noticed() {
        let (listener, mut dialer) = receiver().await;
        let mut conn = dialer.connect().await.unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        conn.send(b"3 abc").await.unwrap();
        conn.check().unwrap();
        drop(peer);
        let mut noticed = None;
        for _ in 0..200 {
            if let Err(e) = conn.check() {
                noticed = Some(e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            matches!(noticed, Some(TransportError::Closed | TransportError::Broken(_))),
            "{noticed:?}"
        );
        drop(listener);
        let err = dialer.connect().await.err().unwrap();
        assert!(matches!(err, TransportError::Connect { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_clean_close_counts_only_when_the_receiver_closes_too() {
        let (listener, mut dialer) = receiver().await;
        let mut conn = dialer.connect().await.unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        conn.send(b"3 abc").await.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        assert!(conn.close(Duration::from_secs(5)).await);
        assert_eq!(reader.await.unwrap(), b"3 abc");

        // A receiver that keeps its side open: nothing can be counted.
        let mut conn = dialer.connect().await.unwrap();
        let (_peer, _) = listener.accept().await.unwrap();
        conn.send(b"3 abc").await.unwrap();
        assert!(!conn.close(Duration::from_millis(300)).await);
    }
}
