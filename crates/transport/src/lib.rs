//! How fernwart's three programs reach each other.
//!
//! A link is: TCP (optionally through an HTTP CONNECT proxy) → TLS 1.3 → an HTTPS request
//! upgraded (`Upgrade: fernwart-h2/1`, as WebSocket does) → HTTP/2. HTTP/2 gives every
//! tunnelled TCP connection its own stream with flow control and back-pressure; the HTTPS
//! upgrade makes the link look like ordinary HTTPS to plant firewalls and proxies.

pub mod dial;
pub mod frame_io;
pub mod http_client;
pub mod malloc;
pub mod mux;
pub mod pipe;
pub mod read_ahead;
pub mod sealed;
pub mod tls;

pub use dial::{Dialer, ProxyConfig};
pub use frame_io::{read_frame, write_frame, FrameError};
pub use http_client::{ApiError, HttpClient};
pub use mux::{Mode, Mux, MuxError, MuxReader, MuxStream, MuxWriter};
pub use tls::TlsError;

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
