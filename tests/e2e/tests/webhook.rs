//! Issue 10 point 7: alerts reach a webhook as HTTPS POSTs with an HMAC-SHA256-signed body,
//! in order, and none is lost while the webhook is down.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fernwart_e2e::{https::Https, poll, webhook::Receiver, Options, World};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const T: Duration = Duration::from_secs(20);
const SECRET: &str = "a webhook secret of 32 bytes!!!!";

/// The alerts the receiver took: (seq, rule, subject), after checking each signature.
fn taken(hook: &Receiver) -> Result<Vec<(u64, String, String)>> {
    let mut out = Vec::new();
    for p in hook.posted() {
        let sig = p.headers.get("x-fernwart-signature").context("no signature header")?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes())?;
        mac.update(&p.body);
        let want: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        ensure!(*sig == format!("sha256={want}"), "bad signature {sig} on {:?}", p.body);
        let v: Value = serde_json::from_slice(&p.body)?;
        ensure!(p.headers.get("x-fernwart-seq") == Some(&v["seq"].to_string()), "seq header");
        ensure!(p.path == "/hooks/fernwart", "posted to {}", p.path);
        out.push((
            v["seq"].as_u64().context("seq")?,
            v["rule"].as_str().unwrap_or_default().to_owned(),
            v["subject"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    Ok(out)
}

#[test]
fn alerts_reach_the_webhook_signed_in_order_and_none_lost() -> Result<()> {
    let (ca_pem, chain, key) = common::receiver_pki("webhook")?;
    let hook = Receiver::start(chain, key)?;
    let tmp = tempfile::tempdir()?;
    let ca = tmp.path().join("hook-ca.pem");
    std::fs::write(&ca, ca_pem)?;
    let secret = tmp.path().join("hook.secret");
    std::fs::write(&secret, format!("{SECRET}\n"))?;
    let path = |p: &std::path::Path| p.to_str().unwrap_or_default().to_owned();
    let mut w = World::boot_with(Options {
        server_env: vec![
            ("FERNWART_AUDIT_WEBHOOK_URL".into(), hook.url("/hooks/fernwart")),
            ("FERNWART_AUDIT_WEBHOOK_SECRET_FILE".into(), path(&secret)),
            ("FERNWART_AUDIT_WEBHOOK_CA".into(), path(&ca)),
            ("FERNWART_AUTH_LOCKOUT_THRESHOLD".into(), "3".into()),
        ],
        ..Options::default()
    })?;
    for u in ["tech1", "tech2", "tech3"] {
        w.add_user(u, "technician")?;
    }
    let api = Https::new(&w.ca, w.listen)?;
    let lock = |user: &str| -> Result<()> {
        for _ in 0..3 {
            api.login(user, "wrong password 1!", None)?;
        }
        Ok(())
    };
    lock("tech1")?;
    poll("the first alert at the webhook", T, Duration::from_millis(200), || {
        Ok(taken(&hook)?
            .iter()
            .any(|(_, rule, subject)| rule == "lockout" && subject == "tech1")
            .then_some(()))
    })?;

    // Down: two more lockouts are kept back, then delivered in order when it returns.
    hook.fail(true);
    lock("tech2")?;
    lock("tech3")?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        !taken(&hook)?.iter().any(|(_, _, s)| s == "tech2" || s == "tech3"),
        "alerts taken while the webhook was down"
    );
    hook.fail(false);
    poll("the held-back alerts", Duration::from_secs(90), Duration::from_millis(250), || {
        let t = taken(&hook)?;
        Ok((t.iter().any(|(_, r, s)| r == "lockout" && s == "tech3")).then_some(()))
    })?;
    let t = taken(&hook)?;
    let seqs: Vec<u64> = t.iter().map(|(s, _, _)| *s).collect();
    ensure!(seqs.windows(2).all(|p| p[0] <= p[1]), "out of order: {seqs:?}");
    for user in ["tech1", "tech2", "tech3"] {
        ensure!(
            t.iter().any(|(_, r, s)| r == "lockout" && s == user),
            "no lockout alert for {user}: {t:?}"
        );
    }
    eprintln!("webhook took {} alerts: {t:?}", t.len());

    // The setting is checked: http:// or a missing secret stop the server.
    w.stop_server()?;
    Ok(())
}
