//! `key init | show | security-keys`: the approver's own signing key, and signing a session's grant with it
//! (`session approve`). The private key lives in FERNWART_HOME only (owner-only file); the
//! server and the agent see the public key and signatures (`fernwart_proto::approval`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use base64::{engine::general_purpose::STANDARD, Engine};
use fernwart_api::SessionGrant;
use fernwart_proto::approval::{Approval, SigningKey};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::{context::write_private, output, Context};

/// The approver's private key: PKCS#8 (Ed25519) as PEM, readable by OpenSSL.
pub const KEY_FILE: &str = "approver-key.pem";
const PEM_LABEL: &str = "PRIVATE KEY";

/// `key init --json`, `key show --json`.
#[derive(Serialize)]
struct KeyOutput {
    public: String,
    fingerprint: String,
    file: String,
}

pub fn key_path(ctx: &Context) -> PathBuf {
    ctx.home.join(KEY_FILE)
}

/// `fernwart key init`: a new key in FERNWART_HOME; an existing one is replaced only with
/// `--force` (its approvals then no longer verify at agents that pin only it).
pub fn init(ctx: &Context, force: bool) -> anyhow::Result<()> {
    let path = key_path(ctx);
    if path.exists() && !force {
        bail!(
            "{} exists already (`fernwart key show` prints its public key); --force replaces it",
            path.display()
        );
    }
    let rng = ring::rand::SystemRandom::new();
    let der = Zeroizing::new(SigningKey::generate_pkcs8(&rng)?);
    let key = SigningKey::from_pkcs8(&der)?;
    std::fs::create_dir_all(&ctx.home)
        .with_context(|| format!("creating {}", ctx.home.display()))?;
    crate::context::set_private_dir(&ctx.home);
    write_private(&path, to_pem(&der).as_bytes())?;
    show_key(ctx, &key, &path, "approver key made")
}

/// `fernwart key show`: the public key for the operator's `agent.toml`, and its fingerprint.
pub fn show(ctx: &Context) -> anyhow::Result<()> {
    let path = key_path(ctx);
    let key = load(&path)?.ok_or_else(|| {
        anyhow::anyhow!("no approver key in {}: make one with `fernwart key init`", path.display())
    })?;
    show_key(ctx, &key, &path, "approver key")
}

fn show_key(ctx: &Context, key: &SigningKey, path: &Path, what: &str) -> anyhow::Result<()> {
    let public = key.public();
    let out = KeyOutput {
        public: public.to_string(),
        fingerprint: public.fingerprint(),
        file: path.display().to_string(),
    };
    if ctx.json {
        output::print_json(&out);
    } else {
        crate::out!("{what} {} ({})", out.fingerprint, out.file);
        crate::out!("for the agent's agent.toml:");
        crate::out!("[trust]");
        crate::out!("approvers = [\"{}\"]", out.public);
    }
    Ok(())
}

/// `fernwart key security-keys`: the user's security keys (registered in the web console) and
/// the `agent.toml` line that pins them.
pub async fn security_keys(ctx: &Context) -> anyhow::Result<()> {
    let keys: Vec<fernwart_api::SecurityKeyInfo> = ctx.get("/v1/account/keys").await?;
    if ctx.json {
        output::print_json(&keys);
        return Ok(());
    }
    if keys.is_empty() {
        crate::out!("no security keys: register one on the web console's \"Security keys\" page");
        return Ok(());
    }
    for k in &keys {
        let used = k.last_used.as_deref().unwrap_or("never");
        crate::out!("{} {} (registered {}, last used {used})", k.name, k.fingerprint, k.created);
    }
    let lines: Vec<String> = keys.iter().map(|k| format!("\"{}\"", k.public_key)).collect();
    crate::out!("for the agent's agent.toml:");
    crate::out!("[trust]");
    crate::out!("approvers = [{}]", lines.join(", "));
    Ok(())
}

/// The approver's key in FERNWART_HOME, if there is one.
pub fn load(path: &Path) -> anyhow::Result<Option<SigningKey>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let der = from_pem(&text).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(SigningKey::from_pkcs8(&der).with_context(|| format!("reading {}", path.display()))?))
}

/// Signs the grant the server gave for `session`, after printing what is signed (to stderr
/// with `--json`, so that stdout stays one JSON value).
pub fn sign(
    ctx: &Context,
    key: &SigningKey,
    session: &str,
    grant: &SessionGrant,
) -> anyhow::Result<Approval> {
    let g = &grant.grant;
    if g.session != session {
        bail!("the server sent the grant of session {:?} for {session:?}", g.session);
    }
    let public = key.public();
    if !grant.approvers.is_empty() && !grant.approvers.iter().any(|a| *a == public.to_string()) {
        bail!(
            "your key {} is not one of machine {}'s approvers: its agent would refuse the grant; the operator pins approver keys in the agent's agent.toml ([trust] approvers)",
            public.fingerprint(),
            g.machine
        );
    }
    let lines = [
        format!("signing the approval of session {} with key {}:", g.session, public.fingerprint()),
        format!("  machine  {}", g.machine),
        format!("  targets  {}", output::list(&g.targets)),
        format!("  users    {}", output::list(&g.users)),
        format!("  window   {} to {}", rfc3339(g.from), rfc3339(g.until)),
        format!("  record   {}", if g.record { "yes" } else { "no" }),
    ];
    for l in lines {
        if ctx.json {
            eprintln!("{l}");
        } else {
            crate::out!("{l}");
        }
    }
    Ok(key.approve(g))
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn to_pem(der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut pem = Zeroizing::new(format!("-----BEGIN {PEM_LABEL}-----\n"));
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    pem
}

fn from_pem(text: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let begin = format!("-----BEGIN {PEM_LABEL}-----");
    let end = format!("-----END {PEM_LABEL}-----");
    let body = text
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(body, _)| body)
        .ok_or_else(|| anyhow::anyhow!("not a PEM {PEM_LABEL}"))?;
    let b64: Zeroizing<String> = Zeroizing::new(body.split_whitespace().collect());
    Ok(Zeroizing::new(STANDARD.decode(b64.as_bytes()).context("bad base64 in the PEM")?))
}

#[cfg(test)]
mod tests {
    use fernwart_proto::approval::{ApproverKey, GrantFields};

    use super::*;

    fn ctx(home: &Path) -> Context {
        Context {
            home: home.to_owned(),
            server: None,
            ca_cert: None,
            proxy: Default::default(),
            json: true,
            token: None,
        }
    }

    #[test]
    fn a_key_is_made_once_kept_private_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(&dir.path().join("home"));
        init(&c, false).unwrap();
        let path = key_path(&c);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        #[cfg(windows)]
        {
            let dacl = crate::owner_only::dacl(&path).unwrap();
            assert!(
                dacl.is_owner_only()
                    || crate::owner_only::running_under_wine()
                        && dacl.allows_only_owner_and_system(),
                "{dacl:?}"
            );
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        let key = load(&path).unwrap().unwrap();
        // Not replaced by accident.
        assert!(init(&c, false).is_err());
        assert_eq!(load(&path).unwrap().unwrap().public(), key.public());

        let fields = GrantFields {
            machine: "m1".into(),
            session: "s1".into(),
            targets: vec!["plc".into()],
            users: vec!["tech1".into()],
            tech_keys: vec![],
            from: 0,
            until: 60,
            record: false,
            nonce: "n".into(),
        };
        let grant =
            SessionGrant { grant: fields.clone(), signature_required: true, approvers: vec![] };
        let a = sign(&c, &key, "s1", &grant).unwrap();
        let public: ApproverKey = a.key.parse().unwrap();
        assert!(public.verifies(&fields.to_bytes(), &a.signature));
        // A grant of another session, or a machine that pins other keys: nothing is signed.
        assert!(sign(&c, &key, "s2", &grant).is_err());
        let pinned = SessionGrant { approvers: vec!["ed25519:other".into()], ..grant };
        assert!(sign(&c, &key, "s1", &pinned).unwrap_err().to_string().contains("not one of"));

        init(&c, true).unwrap();
        assert_ne!(load(&path).unwrap().unwrap().public(), key.public());
        assert!(load(&dir.path().join("none")).unwrap().is_none());
    }
}
