//! The agent's identity: key made on the device, certificate from the server's CA, pinned CA.

use std::path::{Path, PathBuf};

use fernwart_api::{EnrollRequest, EnrollResponse};
use fernwart_transport::{error_chain, tls, Dialer, HttpClient, ProxyConfig};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde::{Deserialize, Serialize};

pub const KEY_FILE: &str = "agent-key.pem";
pub const CERT_FILE: &str = "agent-cert.pem";
pub const CA_FILE: &str = "server-ca.pem";
pub const IDENTITY_FILE: &str = "identity.toml";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub server: String,
    pub machine: String,
}

impl Identity {
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join(IDENTITY_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!("not enrolled ({}: {e}); run `fernwart-agent enroll` first", path.display())
        })?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

pub fn path(dir: &Path, file: &str) -> PathBuf {
    dir.join(file)
}

/// Generates the key, sends a CSR with the one-time token, stores certificate and CA.
pub async fn enroll(
    dir: &Path,
    server: &str,
    token: &str,
    ca_cert: Option<&Path>,
    proxy: ProxyConfig,
) -> Result<String, String> {
    if dir.join(CERT_FILE).exists() {
        return Err(format!(
            "{} is already enrolled; remove {}, {}, {} and {} to enrol again",
            dir.display(),
            KEY_FILE,
            CERT_FILE,
            CA_FILE,
            IDENTITY_FILE
        ));
    }
    let url = url::Url::parse(server).map_err(|e| format!("--server {server}: {e}"))?;
    let roots = tls::roots(ca_cert).map_err(|e| error_chain(&e))?;
    let cfg = tls::client_config(roots, None).map_err(|e| error_chain(&e))?;
    let dialer = Dialer::new(url, cfg, proxy).map_err(|e| error_chain(&e))?;
    let key = KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "fernwart-agent");
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| format!("cannot make a CSR: {e}"))?;
    // The end-to-end key is made (or kept) here and registered with the certificate.
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let e2e_key = crate::e2e::load_or_create(dir)?.public().to_string();
    let client = HttpClient::new(dialer);
    let body = EnrollRequest { token: token.trim().to_owned(), csr, e2e_key: Some(e2e_key) };
    let resp: EnrollResponse = client
        .json(http_method_post(), "/v1/enroll", None, Some(&body))
        .await
        .map_err(|e| match &e {
            fernwart_transport::ApiError::Connect { source, .. }
                if source.to_string().contains("certificate") =>
            {
                format!("{} (is --ca-cert the CA of this server?)", error_chain(&e))
            }
            _ => error_chain(&e),
        })?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write(&dir.join(KEY_FILE), key.serialize_pem().as_bytes(), 0o600)?;
    write(&dir.join(CERT_FILE), resp.certificate.as_bytes(), 0o644)?;
    write(&dir.join(CA_FILE), resp.ca.as_bytes(), 0o644)?;
    let id = Identity { server: server.to_owned(), machine: resp.machine.clone() };
    write(
        &dir.join(IDENTITY_FILE),
        toml::to_string(&id).map_err(|e| e.to_string())?.as_bytes(),
        0o644,
    )?;
    Ok(resp.machine)
}

fn http_method_post() -> fernwart_transport::http_client::HttpMethod {
    fernwart_transport::http_client::HttpMethod::POST
}

pub fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
