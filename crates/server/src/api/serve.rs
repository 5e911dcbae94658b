//! The accept loop: connection cap, TLS handshake timeout, HTTP/1.1 with upgrades.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::{ca, App};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of one TLS connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// SHA-256 of the client certificate, when one was presented and chains to our CA.
    pub client_cert: Option<String>,
}

pub async fn serve(app: App, listener: TcpListener, tls: Arc<ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    let router = super::router(app.clone());
    let limit = Arc::new(tokio::sync::Semaphore::new(app.cfg.settings.server.max_connections));
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = app.shutdown.cancelled() => break,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "connection limit reached; closing");
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = app.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| ca::fingerprint(c.as_ref()));
            let info = ConnInfo { remote, client_cert };
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    router.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(%remote, error = %e, "connection ended with error") },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
