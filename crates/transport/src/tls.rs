//! TLS client settings: TLS 1.3 only, ring provider, a pinned CA or the system's roots.

use std::{path::Path, sync::Arc};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{0} contains no certificate")]
    NoCertificate(String),
    #[error("invalid TLS settings")]
    Config(#[source] rustls::Error),
    #[error("no trusted CA: give --ca-cert or install system root certificates")]
    NoRoots,
}

/// The crypto provider all of fernwart uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            what: "certificates",
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.display().to_string()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Read {
        what: "private key",
        path: path.display().to_string(),
        source,
    })
}

/// Roots from a PEM file (the pinned fernwart CA), or the system store when none is given.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(TlsError::Config)?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A system store may hold certificates rustls cannot parse; skip those.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::NoRoots);
            }
        }
    }
    Ok(roots)
}

/// A TLS 1.3 client configuration, with a client certificate when `identity` is given.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_root_certificates(roots);
    let config = match identity {
        Some((certs, key)) => {
            builder.with_client_auth_cert(certs, key).map_err(TlsError::Config)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
