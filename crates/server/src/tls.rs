//! The server's TLS settings: TLS 1.3 only, client certificates optional (agents present one).

use std::{path::Path, sync::Arc};

use fernwart_transport::tls::{load_certs, load_key, provider, TlsError};
use rustls::{server::WebPkiClientVerifier, RootCertStore, ServerConfig};

use crate::ca;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot load TLS material")]
    Load(#[from] TlsError),
    #[error("invalid TLS settings")]
    Rustls(#[from] rustls::Error),
    #[error("invalid client certificate settings: {0}")]
    Verifier(String),
}

pub fn server_config(dir: &Path) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(&dir.join(ca::CA_CERT))? {
        roots.add(c)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs(&dir.join(ca::SERVER_CERT))?,
            load_key(&dir.join(ca::SERVER_KEY))?,
        )?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
