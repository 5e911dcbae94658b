//! The accept loop: connection caps, TLS handshake timeout, HTTP/1.1 with upgrades, a deadline
//! for every request.
//!
//! Connections are counted twice: against the total cap, and, until they show a machine
//! certificate, against the cap of their source address and the share of the total that is not
//! reserved for agents. A handful of clients holding slow connections can thus neither fill
//! the server nor keep agents out.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::ApiError;
use crate::{ca, App};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most the request line and headers may take.
pub const MAX_HEADERS: usize = 64 * 1024;

/// Who is on the other end of one TLS connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// SHA-256 of the client certificate, when one was presented and chains to our CA.
    pub client_cert: Option<String>,
    /// The connection's places under the caps. A link (agent or technician) keeps a clone for
    /// as long as it runs: an upgraded connection still counts.
    pub slots: Slots,
}

/// A connection's places under the caps: the total (while it lives), and until it is proven
/// (a full login, or an enrolled machine's link) its source's cap and, without a machine
/// certificate, the share not reserved for agents.
#[derive(Clone)]
pub struct Slots(Arc<SlotsInner>);

struct SlotsInner {
    _total: OwnedSemaphorePermit,
    source: Mutex<Option<SourceSlot>>,
    share: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Slots {
    /// The connection belongs to someone known: it counts only against the total now.
    pub fn proven(&self) {
        self.0.source.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.0.share.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.source.lock().map(|g| g.is_some()).unwrap_or(false);
        f.debug_struct("Slots").field("unproven", &held).finish()
    }
}

/// Where a connection comes from, for the per-source cap and rate limits: the IPv4 address,
/// or the IPv6 /64 (one host's or one site's usual allocation).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Connections per source address that have not shown a machine certificate.
#[derive(Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

pub struct SourceSlot {
    map: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot { map: self.clone(), ip })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.map.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The request line and headers, as sent (about).
fn head_size<B>(req: &hyper::Request<B>) -> usize {
    req.uri().to_string().len()
        + req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>()
}

/// An error answer after which the connection closes.
fn closing(code: StatusCode, msg: &str) -> axum::response::Response {
    let mut resp = ApiError::new(code, msg).into_response();
    resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    resp
}

pub async fn serve(app: App, listener: TcpListener, tls: Arc<ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    let router = super::router(app.clone());
    let s = &app.cfg.settings.server;
    let total = Arc::new(Semaphore::new(s.max_connections));
    let unproven_max = s.max_connections - s.reserved_for_agents();
    let unproven = Arc::new(Semaphore::new(unproven_max));
    let per_source = Arc::new(PerSource::default());
    // No one address may take more than half of what is not reserved for agents.
    let max_per_source = s.max_connections_per_source.min(unproven_max / 2).max(1);
    let deadline = app.cfg.request_timeout;
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
        let Ok(permit) = total.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "connection limit reached; closing");
            continue;
        };
        let Some(source_slot) = per_source.take(source_key(remote.ip()), max_per_source) else {
            tracing::debug!(%remote, "connection limit of this source reached; closing");
            continue;
        };
        let Ok(unproven_permit) = unproven.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "connections without a machine certificate at their limit; closing");
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = app.shutdown.clone();
        tokio::spawn(async move {
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
            // A certificate of our CA (rustls checked the chain): an agent, counted apart from
            // its source (many gateways may share one NAT address).
            // A machine certificate (rustls checked its chain) keeps the connection out of the
            // share reserved against slow clients, but its source counts until the machine's
            // link is up (a revoked machine's key cannot fill the server).
            let share = client_cert.is_none().then_some(unproven_permit);
            let slots = Slots(Arc::new(SlotsInner {
                _total: permit,
                source: Mutex::new(Some(source_slot)),
                share: Mutex::new(share),
            }));
            let info = ConnInfo { remote, client_cert, slots };
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    // hyper bounds its read buffer, but a head that arrives in one read is
                    // parsed whatever its size: count it.
                    let too_large = head_size(&req) > MAX_HEADERS;
                    let call = router.clone().oneshot(req.map(axum::body::Body::new));
                    async move {
                        if too_large {
                            return Ok(closing(
                                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "request headers larger than 64 KiB",
                            ));
                        }
                        match tokio::time::timeout(deadline, call).await {
                            Ok(r) => r,
                            Err(_) => {
                                Ok(closing(StatusCode::REQUEST_TIMEOUT, "request took too long"))
                            }
                        }
                    }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADERS)
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(%remote, error = %e, "connection ended with error") },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_addresses_or_ipv6_slash_64s() {
        let v4: IpAddr = [192, 0, 2, 7].into();
        assert_eq!(source_key(v4), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap_or(v4);
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap_or(v4);
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(v4);
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap_or(a);
        assert_eq!(source_key(mapped), v4);
    }

    #[test]
    fn a_source_slot_is_given_back() {
        let map = Arc::new(PerSource::default());
        let ip: IpAddr = [127, 0, 0, 1].into();
        let first = map.take(ip, 2);
        let second = map.take(ip, 2);
        assert!(first.is_some() && second.is_some());
        assert!(map.take(ip, 2).is_none());
        drop(first);
        assert!(map.take(ip, 2).is_some());
    }
}
