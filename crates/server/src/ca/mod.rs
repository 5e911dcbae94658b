//! The server's certificate authority: machine identities and the server's TLS certificate.

use std::{net::IpAddr, path::Path, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate operation failed")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot access {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid certificate request: {0}")]
    BadRequest(String),
}

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";
/// The most a CSR may be; anything bigger is refused before parsing.
pub const MAX_CSR_LEN: usize = 16 * 1024;

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: String,
}

impl Ca {
    /// Makes a new CA and writes `ca.pem` (public) and `ca-key.pem` (0600) into `dir`.
    pub fn create(dir: &Path, name: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("fernwart CA {name}"));
        dn.push(DnType::OrganizationName, "fernwart");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        write_file(&dir.join(CA_CERT), pem.as_bytes(), 0o644)?;
        write_file(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
        Ok(Self { cert, key, pem })
    }

    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let pem = read_file(&dir.join(CA_CERT))?;
        let key_pem = read_file(&dir.join(CA_KEY))?;
        let key = KeyPair::from_pem(&key_pem)?;
        // Re-issuing from the stored parameters yields the same subject and key, so
        // certificates signed with it chain to the stored ca.pem.
        let params = CertificateParams::from_ca_cert_pem(&pem)?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key, pem })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Issues the server's TLS certificate for the given host names and addresses.
    pub fn issue_server_cert(&self, dir: &Path, hosts: &[String]) -> Result<(), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, hosts.first().cloned().unwrap_or_else(|| "fernwart".into()));
        params.distinguished_name = dn;
        params.subject_alt_names = hosts
            .iter()
            .map(|h| match h.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => h.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(825);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let chain = format!("{}{}", cert.pem(), self.pem);
        write_file(&dir.join(SERVER_CERT), chain.as_bytes(), 0o644)?;
        write_file(&dir.join(SERVER_KEY), key.serialize_pem().as_bytes(), 0o600)?;
        Ok(())
    }

    /// Signs a machine's CSR. The subject is set by the server (the machine's name), never
    /// taken from the request; the key stays on the device.
    pub fn sign_machine_csr(
        &self,
        csr_pem: &str,
        machine: &str,
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        if csr_pem.len() > MAX_CSR_LEN {
            return Err(CaError::BadRequest(format!("CSR larger than {MAX_CSR_LEN} bytes")));
        }
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadRequest(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, machine);
        dn.push(DnType::OrganizationalUnitName, "fernwart machine");
        csr.params.distinguished_name = dn;
        csr.params.subject_alt_names = Vec::new();
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        csr.params.not_before = now - time::Duration::minutes(5);
        let ttl = time::Duration::try_from(ttl).unwrap_or(time::Duration::days(397));
        csr.params.not_after = now + ttl;
        let serial: [u8; 16] = rand::random();
        csr.params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let not_after = csr.params.not_after.unix_timestamp();
        let cert = csr.signed_by(&self.cert, &self.key)?;
        Ok(IssuedCert { fingerprint: fingerprint(cert.der()), pem: cert.pem(), not_after })
    }
}

pub struct IssuedCert {
    pub pem: String,
    pub fingerprint: String,
    pub not_after: i64,
}

/// SHA-256 of a certificate's DER, hex: how machines are recognised on the agent link.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let io = |source| CaError::Io { path: path.display().to_string(), source };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

fn read_file(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path)
        .map_err(|source| CaError::Io { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_a_csr_with_server_chosen_subject() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(dir.path(), "test").unwrap();
        let device_key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["evil.example".into()]).unwrap();
        let csr = params.serialize_request(&device_key).unwrap().pem().unwrap();
        let issued = ca.sign_machine_csr(&csr, "m1", Duration::from_secs(3600)).unwrap();
        assert_eq!(issued.fingerprint.len(), 64);
        let reloaded = Ca::load(dir.path()).unwrap();
        assert_eq!(reloaded.pem(), ca.pem());
    }

    #[test]
    fn garbage_and_oversized_csrs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(dir.path(), "test").unwrap();
        assert!(matches!(
            ca.sign_machine_csr("not a csr", "m1", Duration::from_secs(60)),
            Err(CaError::BadRequest(_))
        ));
        let big = "A".repeat(MAX_CSR_LEN + 1);
        assert!(matches!(
            ca.sign_machine_csr(&big, "m1", Duration::from_secs(60)),
            Err(CaError::BadRequest(_))
        ));
    }

    #[test]
    fn ca_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        Ca::create(dir.path(), "test").unwrap();
        let mode = std::fs::metadata(dir.path().join(CA_KEY)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
