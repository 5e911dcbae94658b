//! Alerts to a webhook: each `alert.*` record of the trail, in order, as an HTTPS POST whose
//! JSON body is signed with HMAC-SHA256 (`X-Fernwart-Signature: sha256=HEX` over the exact
//! body bytes, with a secret read from a file). Delivery follows the trail with a cursor of its
//! own: a receiver that is down or answers other than 2xx gets the same alert again (backing
//! off up to a minute) until it takes it, so nothing is lost and the order holds; an alert
//! may arrive twice (after a crash between delivery and cursor), `X-Fernwart-Seq` tells.

use std::{path::Path, sync::Arc, time::Duration};

use fernwart_proto::chain::{hex, Linked};
use fernwart_transport::{tls, Dialer, HttpClient, ProxyConfig};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use url::Url;
use zeroize::Zeroizing;

use crate::{store::Store, util};

/// The cursor of the webhook in the delivery table.
const CURSOR: &str = "webhook";
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A configured webhook.
#[derive(Clone)]
pub struct Webhook {
    client: HttpClient,
    path: String,
    secret: Arc<Zeroizing<Vec<u8>>>,
    url: Url,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url.as_str()).finish_non_exhaustive()
    }
}

impl Webhook {
    /// From the settings: an https:// URL, the secret's file, and optionally a CA file for
    /// the receiver's certificate (else the system's roots).
    pub fn new(url: &str, secret_file: &Path, ca_file: Option<&Path>) -> Result<Self, String> {
        let url = Url::parse(url).map_err(|e| format!("audit.webhook_url {url:?}: {e}"))?;
        if url.scheme() != "https" {
            return Err(format!("audit.webhook_url {url}: must start with https://"));
        }
        let secret = std::fs::read(secret_file)
            .map_err(|e| format!("audit.webhook_secret_file {}: {e}", secret_file.display()))?;
        let secret = Zeroizing::new(
            String::from_utf8_lossy(&secret).trim_end_matches(['\r', '\n']).as_bytes().to_vec(),
        );
        if secret.len() < 16 {
            return Err(format!(
                "audit.webhook_secret_file {}: the secret must have at least 16 bytes",
                secret_file.display()
            ));
        }
        let roots = tls::roots(ca_file).map_err(|e| format!("audit.webhook_ca: {e}"))?;
        let config = tls::client_config(roots, None).map_err(|e| format!("webhook TLS: {e}"))?;
        let dialer = Dialer::new(url.clone(), config, ProxyConfig::default())
            .map_err(|e| format!("audit.webhook_url: {e}"))?;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        Ok(Self { client: HttpClient::new(dialer), path, secret: Arc::new(secret), url })
    }

    /// Posts one alert; Ok when the receiver answered 2xx.
    async fn post(&self, rec: &Linked) -> Result<(), String> {
        let body = body(rec);
        let headers = [
            ("x-fernwart-signature", format!("sha256={}", sign(&self.secret, &body))),
            ("x-fernwart-seq", rec.seq.to_string()),
        ];
        match self.client.post_bytes(&self.path, &headers, body).await {
            Ok(status) if (200..300).contains(&status) => Ok(()),
            Ok(status) => Err(format!("the webhook answered {status}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The JSON body of an alert.
pub fn body(rec: &Linked) -> Vec<u8> {
    let b = &rec.body;
    let details: serde_json::Value =
        serde_json::from_str(&b.details).unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&serde_json::json!({
        "seq": rec.seq,
        "time": util::rfc3339_ms(b.time_ms),
        "rule": b.action.strip_prefix("alert.").unwrap_or(&b.action),
        "subject": b.target,
        "details": details,
        "hash": rec.hash,
    }))
    .unwrap_or_default()
}

/// HMAC-SHA256 of `body` with `secret`, hex.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            hex(&mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// Delivers the trail's alerts to `hook` until `shutdown`.
pub async fn run(store: Store, hook: Webhook, shutdown: tokio_util::sync::CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let wait = match step(&store, &hook).await {
            Ok(true) => {
                backoff = Duration::from_millis(250);
                Duration::ZERO
            }
            Ok(false) => Duration::from_millis(500),
            Err(e) => {
                tracing::warn!(url = %hook.url, error = %e, retry_in = ?backoff, "webhook delivery failed");
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Delivers what follows the cursor; true when it moved.
async fn step(store: &Store, hook: &Webhook) -> Result<bool, String> {
    let after = store.run(|b| b.delivery_cursor(CURSOR)).await.map_err(|e| e.to_string())?;
    let batch = store.run(move |b| b.audit_chain(after, 256)).await.map_err(|e| e.to_string())?;
    let Some(last) = batch.last().map(|r| r.seq) else { return Ok(false) };
    let mut done = after;
    for rec in &batch {
        if rec.body.action.starts_with("alert.") {
            if let Err(e) = hook.post(rec).await {
                if done > after {
                    store.run(move |b| b.delivery_advance(CURSOR, done)).await.ok();
                }
                return Err(e);
            }
        }
        done = rec.seq;
    }
    store.run(move |b| b.delivery_advance(CURSOR, last)).await.map_err(|e| e.to_string())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_body_names_rule_subject_and_place() {
        let rec = fernwart_proto::chain::link(
            None,
            fernwart_proto::chain::Body {
                time_ms: 0,
                actor: "system".into(),
                action: "alert.lockout".into(),
                target: "tech1".into(),
                source: "server".into(),
                details: r#"{"alert":true}"#.into(),
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&body(&rec)).unwrap();
        assert_eq!(v["rule"], "lockout");
        assert_eq!(v["subject"], "tech1");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["details"]["alert"], true);
    }

    #[test]
    fn settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "short\n").unwrap();
        assert!(Webhook::new("https://siem.example/hook", &secret, None).is_err());
        std::fs::write(&secret, "0123456789abcdef0123\n").unwrap();
        assert!(Webhook::new("http://siem.example/hook", &secret, None).is_err());
        assert!(Webhook::new("https://siem.example/hook", &dir.path().join("none"), None).is_err());
    }
}
