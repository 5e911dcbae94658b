//! How fernwart's three programs reach each other.
//!
//! A link is: TCP (optionally through an HTTP CONNECT proxy) → TLS 1.3 → WebSocket
//! (subprotocol [`fernwart_proto::WS_SUBPROTOCOL`]) → yamux. yamux gives every tunnelled TCP
//! connection its own stream with flow control and back-pressure; the WebSocket makes the
//! link look like ordinary HTTPS to plant firewalls and proxies.

pub mod dial;
pub mod frame_io;
pub mod http_client;
pub mod mux;
pub mod pipe;
pub mod tls;
pub mod ws;

pub use dial::{Dialer, ProxyConfig};
pub use frame_io::{read_frame, write_frame, FrameError};
pub use http_client::{ApiError, HttpClient};
pub use mux::{Mux, MuxStream};
pub use tls::TlsError;
pub use ws::WsIo;
pub use yamux::Mode;

/// Upper bound for one WebSocket message on a link (yamux frames are batched into messages).
pub const MAX_WS_MESSAGE: usize = 1024 * 1024;

/// WebSocket read buffer on links that carry bulk data: fewer, larger reads through TLS
/// (+10–35 % tunnel throughput against 16 KiB on the bench).
pub const WS_READ_BUF: usize = 128 * 1024;
/// WebSocket read buffer for the server's end of agent links: a server holds thousands of them,
/// mostly idle, and this buffer is most of what an idle link costs.
pub const WS_READ_BUF_IDLE: usize = 16 * 1024;

/// The WebSocket settings of a link end: bounded messages, `read_buffer` bytes per read.
pub fn ws_config(read_buffer: usize) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE))
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * MAX_WS_MESSAGE)
}

/// An error with all its causes on one line, `outer: cause: root cause`, for logs and
/// messages that are not printed through `anyhow`'s `{:#}`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_names_every_cause_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = crate::ApiError::Connect { server: "https://x:1".into(), source: inner };
        assert_eq!(super::error_chain(&e), "cannot reach the server at https://x:1: refused");
    }
}
