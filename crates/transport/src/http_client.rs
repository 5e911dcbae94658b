//! A small HTTPS client for the JSON API and for opening links (HTTPS upgraded to HTTP/2).

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::{dial::Dialer, read_ahead::ReadAhead};

/// The byte stream of an upgraded link, ready for [`crate::Mux::start`].
pub type LinkIo = TokioIo<Upgraded>;

/// The most an API response body may be.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the server at {server}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the server refused: {message}")]
    Status { status: u16, message: String },
    #[error("request to the server failed: {0}")]
    Http(String),
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct HttpClient {
    pub dialer: Dialer,
}

impl HttpClient {
    pub fn new(dialer: Dialer) -> Self {
        Self { dialer }
    }

    async fn connect(&self) -> Result<TlsStream<ReadAhead<TcpStream>>, ApiError> {
        self.dialer
            .connect()
            .await
            .map_err(|source| ApiError::Connect { server: self.dialer.server.to_string(), source })
    }

    /// Sends one JSON request; a non-2xx answer becomes [`ApiError::Status`] with the server's reason.
    pub async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        let fut = self.json_inner(method, path, bearer, body);
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| ApiError::Timeout(REQUEST_TIMEOUT))?
    }

    async fn json_inner<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        let tls = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ApiError::Http(crate::error_chain(&e)))?;
        let conn_failed = watch_conn(conn);
        let payload = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ApiError::Decode(e.to_string()))?,
            None => Vec::new(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.dialer.authority())
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ApiError::Http(crate::error_chain(&e)))?;
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => return Err(request_failed(&e, conn_failed).await),
        };
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| ApiError::Http(crate::error_chain(&*e)))?
            .to_bytes();
        if !status.is_success() {
            return Err(ApiError::Status {
                status: status.as_u16(),
                message: error_text(status, &bytes),
            });
        }
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(body).map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// POSTs `body` to `path` with `headers` (a webhook); returns the answer's status. The
    /// answer's body is read (at most the usual limit) and dropped.
    pub async fn post_bytes(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<u16, ApiError> {
        let fut = async {
            let tls = self.connect().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| ApiError::Http(crate::error_chain(&e)))?;
            let conn_failed = watch_conn(conn);
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(path)
                .header(header::HOST, self.dialer.authority())
                .header(header::CONTENT_TYPE, "application/json");
            for (name, value) in headers {
                req = req.header(*name, value);
            }
            let req = req
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| ApiError::Http(crate::error_chain(&e)))?;
            let resp = match sender.send_request(req).await {
                Ok(r) => r,
                Err(e) => return Err(request_failed(&e, conn_failed).await),
            };
            let status = resp.status().as_u16();
            let _ = Limited::new(resp.into_body(), MAX_RESPONSE).collect().await;
            Ok(status)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| ApiError::Timeout(REQUEST_TIMEOUT))?
    }

    /// Opens a link at `path`: an HTTPS request that the server upgrades
    /// ([`fernwart_proto::LINK_UPGRADE`]); a refusal comes back as [`ApiError::Status`] with
    /// the server's reason.
    pub async fn link(&self, path: &str, bearer: Option<&str>) -> Result<LinkIo, ApiError> {
        let fut = async {
            let tls = self.connect().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| ApiError::Http(crate::error_chain(&e)))?;
            let conn_failed = watch_conn(conn.with_upgrades());
            let mut req = Request::builder()
                .method(Method::GET)
                .uri(path)
                .header(header::HOST, self.dialer.authority())
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, fernwart_proto::LINK_UPGRADE);
            if let Some(token) = bearer {
                req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let req = req
                .body(Full::new(Bytes::new()))
                .map_err(|e| ApiError::Http(crate::error_chain(&e)))?;
            let resp = match sender.send_request(req).await {
                Ok(r) => r,
                Err(e) => return Err(request_failed(&e, conn_failed).await),
            };
            let status = resp.status();
            if status != StatusCode::SWITCHING_PROTOCOLS {
                let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                return Err(ApiError::Status {
                    status: status.as_u16(),
                    message: error_text(status, &bytes),
                });
            }
            let upgrade = resp.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
            if !upgrade.is_some_and(|v| v.eq_ignore_ascii_case(fernwart_proto::LINK_UPGRADE)) {
                return Err(ApiError::Decode(format!(
                    "the server switched to {upgrade:?}, not {}",
                    fernwart_proto::LINK_UPGRADE
                )));
            }
            let upgraded = hyper::upgrade::on(resp).await.map_err(|e| {
                ApiError::Http(format!("link upgrade failed: {}", crate::error_chain(&e)))
            })?;
            Ok::<LinkIo, ApiError>(TokioIo::new(upgraded))
        };
        tokio::time::timeout(crate::dial::DIAL_TIMEOUT, fut)
            .await
            .map_err(|_| ApiError::Timeout(crate::dial::DIAL_TIMEOUT))?
    }

    /// `GET path` whose answer is a file: its body goes to `sink` piece by piece (each within
    /// [`REQUEST_TIMEOUT`], at most `max` bytes in all), without holding it in memory.
    /// Returns the bytes written and the answer's headers.
    pub async fn download(
        &self,
        path: &str,
        bearer: Option<&str>,
        sink: &mut (dyn std::io::Write + Send),
        max: u64,
    ) -> Result<(u64, http::HeaderMap), ApiError> {
        let head = async {
            let tls = self.connect().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| ApiError::Http(crate::error_chain(&e)))?;
            let conn_failed = watch_conn(conn);
            let mut req = Request::builder()
                .method(Method::GET)
                .uri(path)
                .header(header::HOST, self.dialer.authority());
            if let Some(token) = bearer {
                req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let req = req
                .body(Full::new(Bytes::new()))
                .map_err(|e| ApiError::Http(crate::error_chain(&e)))?;
            match sender.send_request(req).await {
                Ok(r) => Ok(r),
                Err(e) => Err(request_failed(&e, conn_failed).await),
            }
        };
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, head)
            .await
            .map_err(|_| ApiError::Timeout(REQUEST_TIMEOUT))??;
        let status = resp.status();
        let (parts, mut body) = resp.into_parts();
        if !status.is_success() {
            let bytes =
                tokio::time::timeout(REQUEST_TIMEOUT, Limited::new(body, MAX_RESPONSE).collect())
                    .await
                    .map_err(|_| ApiError::Timeout(REQUEST_TIMEOUT))?
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
            return Err(ApiError::Status {
                status: status.as_u16(),
                message: error_text(status, &bytes),
            });
        }
        let mut total = 0u64;
        loop {
            let frame = tokio::time::timeout(REQUEST_TIMEOUT, body.frame())
                .await
                .map_err(|_| ApiError::Timeout(REQUEST_TIMEOUT))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| ApiError::Http(crate::error_chain(&e)))?;
            let Ok(data) = frame.into_data() else { continue };
            total += data.len() as u64;
            if total > max {
                return Err(ApiError::Decode(format!("the answer is larger than {max} bytes")));
            }
            sink.write_all(&data).map_err(|e| ApiError::Http(format!("writing: {e}")))?;
        }
        Ok((total, parts.headers))
    }
}

/// Drives an HTTP/1.1 connection; its failure (a TLS alert, say) is told through the receiver,
/// since a failed request by itself only says "connection error".
fn watch_conn<F, E>(conn: F) -> tokio::sync::oneshot::Receiver<String>
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            let _ = tx.send(crate::error_chain(&e));
        }
    });
    rx
}

/// A failed request, told by its connection's own error where there is one.
async fn request_failed(
    e: &hyper::Error,
    conn: tokio::sync::oneshot::Receiver<String>,
) -> ApiError {
    match tokio::time::timeout(Duration::from_millis(500), conn).await {
        Ok(Ok(why)) => ApiError::Http(why),
        _ => ApiError::Http(crate::error_chain(e)),
    }
}

/// The server's `{"error": "..."}` reason, or the status line when there is none.
fn error_text(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => b.error,
        Err(_) => format!("HTTP {status}"),
    }
}

pub use http::Method as HttpMethod;
