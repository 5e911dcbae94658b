//! A small HTTPS client for the JSON API and for opening WebSocket links.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue},
    WebSocketStream,
};

use crate::{dial::Dialer, ws::WsIo};

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

    async fn connect(&self) -> Result<TlsStream<TcpStream>, ApiError> {
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
            .map_err(|e| ApiError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
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
        let req =
            req.body(Full::new(Bytes::from(payload))).map_err(|e| ApiError::Http(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| ApiError::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| ApiError::Http(e.to_string()))?
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

    /// Opens a WebSocket link at `path` with the fernwart subprotocol.
    pub async fn websocket(
        &self,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<WsIo<TlsStream<TcpStream>>, ApiError> {
        let fut = async {
            let tls = self.connect().await?;
            let url = format!("wss://{}{}", self.dialer.authority(), path);
            let mut req = url.into_client_request().map_err(|e| ApiError::Http(e.to_string()))?;
            req.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(fernwart_proto::WS_SUBPROTOCOL),
            );
            if let Some(token) = bearer {
                let value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|e| ApiError::Http(e.to_string()))?;
                req.headers_mut().insert("authorization", value);
            }
            let (ws, _resp) = tokio_tungstenite::client_async_with_config(
                req,
                tls,
                Some(crate::ws_config(crate::WS_READ_BUF)),
            )
            .await
            .map_err(ws_error)?;
            Ok::<WebSocketStream<_>, ApiError>(ws)
        };
        let ws = tokio::time::timeout(crate::dial::DIAL_TIMEOUT, fut)
            .await
            .map_err(|_| ApiError::Timeout(crate::dial::DIAL_TIMEOUT))??;
        Ok(WsIo::new(ws))
    }
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> ApiError {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(resp) => {
            let status = resp.status();
            let body = resp.body().as_deref().unwrap_or_default();
            ApiError::Status { status: status.as_u16(), message: error_text(status, body) }
        }
        other => ApiError::Http(other.to_string()),
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
