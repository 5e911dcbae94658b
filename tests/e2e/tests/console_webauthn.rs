//! Security keys in the console (issue 12, items 2 and 4), in a real browser with Chromium's
//! virtual authenticator (WebDriver's WebAuthn extension): an approver registers a key, logs
//! out, logs in with password and key, and approves a session on a machine that takes only
//! operator-signed approvals with the key while the technician's `fernwart connect` waits; the
//! agent verifies the assertion against the key its agent.toml pins, and bytes flow. Then the
//! compromised server: an assertion moved to another session in the database is refused by the
//! agent, which says why in its trail.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fernwart_e2e::{
    https::{Https, Reply},
    net::poll,
    roundtrip, webdriver,
    world::Options,
    Echo, World,
};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// Asks the page's security key for a login assertion once and posts it twice to the login
/// form, each time with a fresh form token: the statuses (303 logged in, 401 refused).
const REPLAY: &str = r#"
const [user, password, done] = arguments;
const enc = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)))
  .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const dec = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
const csrf = async () => {
  const html = await (await fetch("/login", { credentials: "same-origin" })).text();
  return html.match(/name="csrf" value="([^"]+)"/)[1];
};
(async () => {
  const body = new URLSearchParams({ csrf: await csrf() });
  const o = await (await fetch("/login/key-challenge", { method: "POST", body })).json();
  const cred = await navigator.credentials.get({ publicKey: {
    challenge: dec(o.challenge), rpId: o.rp_id, userVerification: "required" } });
  const r = cred.response;
  const assertion = [r.authenticatorData, r.clientDataJSON, r.signature, cred.rawId].map(enc).join(".");
  const post = async () => {
    const form = new URLSearchParams({ csrf: await csrf(), user, password, otp: "", assertion });
    const res = await fetch("/login", { method: "POST", body: form, redirect: "manual" });
    return res.type === "opaqueredirect" ? 303 : res.status;
  };
  const first = await post();
  const second = await post();
  done([first, second]);
})().catch((e) => done("error: " + e));
"#;

/// Where the tests leave screenshots of the pages they saw.
fn screenshots() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        std::path::PathBuf::from,
    );
    target.join("screenshots")
}

fn text(v: &Value, field: &str) -> String {
    v.get(field).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// The agent's own records of `action` about `session`, once there are at least `n`.
fn agent_records(w: &World, action: &str, session: &str, n: usize) -> Result<Vec<Value>> {
    let dir = w.agent_dir("m1");
    let dir = dir.to_str().context("a non-UTF-8 path")?.to_owned();
    poll(
        &format!("{n} {action} record(s) of {session} in the agent's trail"),
        T,
        Duration::from_millis(200),
        || {
            let all =
                w.agent_raw(&["audit", "list", "--json", "--data", &dir])?.check()?.json_list();
            let found: Vec<Value> = all
                .iter()
                .filter(|r| text(r, "action") == action && text(r, "target") == session)
                .map(|r| serde_json::from_str(&text(r, "details")).unwrap_or_default())
                .collect();
            Ok((found.len() >= n).then_some(found))
        },
    )
}

fn login_with_key(b: &webdriver::Browser, user: &str, password: &str) -> Result<()> {
    let u = b.find("#user", T)?;
    if b.attribute(&u, "value")?.unwrap_or_default().is_empty() {
        b.type_into(&u, user)?;
    }
    b.type_into(&b.find("#password", T)?, password)?;
    b.click(&b.find("#wa-login", T)?)
}

#[test]
fn an_approver_logs_in_and_signs_an_approval_with_a_security_key() -> Result<()> {
    let Some((chromium, chromedriver)) = webdriver::available() else {
        eprintln!(
            "\n!!! SKIPPED: the browser test needs {} and {} (Debian packages chromium and chromium-driver; scripts/test installs them)\n",
            webdriver::CHROMIUM,
            webdriver::CHROMEDRIVER
        );
        return Ok(());
    };
    let plc = Echo::start()?;
    // WebAuthn needs a host name as relying party, not an IP address.
    let mut w = World::boot_with(Options { host: Some("localhost".into()), ..Options::default() })?;
    w.fw("admin", &["org", "add", "plant", "--kind", "operator", "--require-signed"])?;
    for (name, role) in [("ap1", "approver"), ("t1", "technician")] {
        w.add_user_in(name, role, Some("plant"))?;
        w.login(name)?;
    }

    let log = w.log_path("chromedriver");
    let driver = webdriver::Driver::start(&chromium, &chromedriver, &log)?;
    let profile = w.root.join("browser-ap1");
    let b = driver.session(&profile, "en-US")?;
    let authenticator = b.add_virtual_authenticator()?;
    let shots = screenshots();

    // Log in with password and code, register a key.
    b.goto(&format!("{}/login", w.url))?;
    let code = w.next_code("ap1")?;
    let password = w.password("ap1");
    b.type_into(&b.find("#user", T)?, "ap1")?;
    b.type_into(&b.find("#password", T)?, &password)?;
    b.type_into(&b.find("#otp", T)?, &code)?;
    b.click(&b.find("form.login button[type=submit]", T)?)?;
    b.find("main h1", T)?;
    b.goto(&format!("{}/account/keys", w.url))?;
    b.screenshot(&shots.join("keys-empty-en.png"))?;
    b.type_into(&b.find("#key-name", T)?, "yubikey-ap1")?;
    b.click(&b.find("#wa-register button[type=submit]", T)?)?;
    let row = b
        .find("tr.key", T)
        .with_context(|| format!("no key after registering: {}", b.source().unwrap_or_default()))?;
    ensure!(b.text(&row)?.contains("yubikey-ap1"), "key row: {}", b.text(&row)?);
    let line = b.text(&b.find("#agent-line", T)?)?;
    let key = line
        .split('"')
        .find(|p| p.starts_with("es256:localhost:"))
        .with_context(|| format!("no es256 key in the agent.toml line {line:?}"))?
        .to_owned();
    ensure!(b.virtual_credentials(&authenticator)?.len() == 1, "the authenticator holds no key");
    // The same key through the API and the CLI, for an approver without the page at hand.
    let listed = w.fw("ap1", &["key", "security-keys", "--json"])?.json_list();
    ensure!(
        listed.len() == 1
            && text(&listed[0], "public_key") == key
            && text(&listed[0], "name") == "yubikey-ap1",
        "key security-keys: {listed:?}"
    );
    let plain = w.fw("ap1", &["key", "security-keys"])?;
    ensure!(plain.stdout.contains(&format!("approvers = [\"{key}\"]")), "{}", plain.stdout);
    b.screenshot(&shots.join("keys-en.png"))?;
    b.goto(&format!("{}/account/keys?lang=de", w.url))?;
    b.find("tr.key", T)?;
    ensure!(b.source()?.contains("Sicherheitsschlüssel"), "the key page in German");
    b.screenshot(&shots.join("keys-de.png"))?;
    b.goto(&format!("{}/account/keys?lang=en", w.url))?;

    // Log out; log in with password and key (no code).
    b.click(&b.find("form[action='/logout'] button", T)?)?;
    b.find("form.login", T)?;
    login_with_key(&b, "ap1", &password)?;
    b.find("form[action='/logout'] button", T)
        .with_context(|| format!("login with the key: {}", b.source().unwrap_or_default()))?;
    ensure!(!b.url()?.contains("/login"), "logged in with the key, still at {}", b.url()?);
    b.screenshot(&shots.join("keys-dashboard-en.png"))?;

    // A replayed assertion: the same answer of the key, posted twice with fresh form tokens,
    // logs in once; its challenge is spent.
    b.goto(&format!("{}/login", w.url))?;
    let codes = b.execute_async(REPLAY, &[json!("ap1"), json!(password)])?;
    ensure!(codes == json!([303, 401]), "the same assertion twice: {codes}");

    // The operator pins ap1's security key in agent.toml before the agent first runs.
    let token = w.add_machine_in("m1", Some("plant"))?;
    w.write_agent_toml("m1", &[("plc", plc.addr)])?;
    let toml_path = w.agent_dir("m1").join("agent.toml");
    let mut toml = std::fs::read_to_string(&toml_path)?;
    toml.push_str(&format!("\n[trust]\napprovers = [\"{key}\"]\n"));
    std::fs::write(&toml_path, toml)?;
    let dir = w.agent_dir("m1");
    let ca = w.ca.clone();
    w.enroll_raw(&dir, &token, &ca)?.check()?;
    w.run_agent("m1")?;
    let m = w.wait_machine("m1", true, T)?;
    ensure!(text(&m, "trust") == "operator-signed", "machine list: {m}");
    ensure!(m["approvers"] == serde_json::json!([key]), "{m}");
    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;

    // The technician waits; the approver signs in the browser.
    for s in ["s1", "s2"] {
        w.fw(
            "admin",
            &[
                "session",
                "create",
                s,
                "--machine",
                "m1",
                "--target",
                "plc",
                "--user",
                "t1",
                "--duration",
                "1h",
                "--reason",
                "TICKET-12 key",
            ],
        )?;
    }
    let mut conn = w.spawn_connect("s1", "t1")?;
    w.wait_session_state("s1", "requested", T)?;
    b.goto(&format!("{}/sessions", w.url))?;
    b.click(&b.find(r#"tr.session[data-session="s1"] a.approve"#, T)?)?;
    b.find("#wa-sign", T)?;
    b.screenshot(&shots.join("sign-en.png"))?;
    b.click(&b.find("#wa-sign button[type=submit]", T)?)?;
    poll("the approval to be done", T, Duration::from_millis(100), || {
        Ok(b.url()?.contains("done=approve").then_some(()))
    })
    .with_context(|| format!("page after signing: {}", b.source().unwrap_or_default()))?;
    let held = agent_records(&w, "grant", "s1", 1)?;
    let fp = held[0]["approved_by"].as_str().unwrap_or_default().to_owned();
    ensure!(fp.starts_with("SHA256:"), "the agent's grant record: {held:?}");
    conn.wait_forwards(T)?;
    roundtrip(conn.forward("plc")?, b"signed with a security key", T)?;

    // A second session, approved with the key too (no technician yet).
    b.goto(&format!("{}/sessions/s2/sign", w.url))?;
    b.click(&b.find("#wa-sign button[type=submit]", T)?)?;
    poll("s2's approval", T, Duration::from_millis(100), || {
        Ok(b.url()?.contains("done=approve").then_some(()))
    })?;
    agent_records(&w, "grant", "s2", 1)?;
    drop(conn);

    let trail = w.fw("admin", &["audit", "list", "--json"])?.json_list();
    let replayed = trail
        .iter()
        .find(|r| {
            text(r, "action") == "auth.login_failed"
                && r.to_string().contains("wrong or replayed security key assertion")
        })
        .context("the replayed assertion is not in the server's trail")?;
    // Counted like a wrong password or code: toward the same lockout.
    ensure!(
        replayed["details"]["failures"].as_i64().is_some_and(|n| n >= 1),
        "not counted: {replayed}"
    );
    for action in ["webauthn.add", "auth.login", "session.approve"] {
        ensure!(
            trail.iter().any(|r| text(r, "action") == action && r.to_string().contains("ap1")),
            "no {action} of ap1 in the server's trail"
        );
    }

    // The compromised server: s2 carries s1's assertion (a valid signature by a pinned key,
    // over another grant).
    w.stop_server()?;
    let db = rusqlite::Connection::open(w.srv_dir.join("fernwart.db"))?;
    // And the stored signature counter of ap1's key runs ahead of the key's own: as if a
    // clone of the key had been used (the key's next answer does not count up past it).
    db.execute_batch(
        "UPDATE sessions SET approval_signature = (SELECT approval_signature FROM sessions WHERE name = 's1') WHERE name = 's2';
         UPDATE webauthn_credentials SET sign_count = 1000000;",
    )?;
    drop(db);
    w.start_server()?;
    let refused = agent_records(&w, "grant.refused", "s2", 1)?;
    let last = refused.last().context("no refusal")?;
    let reason = last["reason"].as_str().unwrap_or_default();
    ensure!(
        last["alert"] == true && reason.contains("does not match the grant"),
        "the agent's refusal of s2: {last}"
    );
    eprintln!("s2: refused: {reason}");

    // The key whose counter regressed logs in no more.
    b.goto(&format!("{}/login", w.url))?;
    login_with_key(&b, "ap1", &password)?;
    let err = b.find("main > p.error", T)?;
    ensure!(b.text(&err)? == "Invalid user name, password or code.", "{}", b.text(&err)?);
    let trail = w.fw("admin", &["audit", "list", "--json"])?.json_list();
    let cloned = trail.iter().any(|r| {
        text(r, "action") == "auth.login_failed" && r.to_string().contains("counter did not grow")
    });
    ensure!(cloned, "the regressed counter is not in the server's trail");
    Ok(())
}

// ---------------------------------------------------------------- below the browser

/// A browser's part in HTTP: a cookie jar and forms.
struct Client {
    https: Https,
    jar: std::collections::BTreeMap<String, String>,
}

impl Client {
    fn new(w: &World) -> Result<Self> {
        Ok(Self { https: Https::new(&w.ca, w.listen)?, jar: Default::default() })
    }

    fn send(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<Reply> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.https.server()
        );
        if !self.jar.is_empty() {
            let c: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req.push_str(&format!("Cookie: {}\r\n", c.join("; ")));
        }
        let body = body.unwrap_or_default();
        if method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        let r = self.https.raw(req.as_bytes()).with_context(|| format!("{method} {path}"))?;
        for c in r.headers_named("set-cookie") {
            let Some((name, rest)) = c.split_once('=') else { continue };
            let value = rest.split(';').next().unwrap_or_default();
            if value.is_empty() || c.contains("Max-Age=0") {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_owned(), value.to_owned());
            }
        }
        Ok(r)
    }

    fn get(&mut self, path: &str) -> Result<Reply> {
        self.send("GET", path, None)
    }

    fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Result<Reply> {
        let body: String =
            url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        self.send("POST", path, Some(&body))
    }
}

/// The form token in a page.
fn hidden_csrf(html: &str) -> Result<String> {
    let marker = r#"name="csrf" value=""#;
    let at = html.find(marker).with_context(|| format!("no form token in {html}"))? + marker.len();
    let end = html[at..].find('"').context("unterminated form token")?;
    Ok(html[at..at + end].to_owned())
}

#[test]
fn security_key_forms_need_their_token_and_serve_only_their_user() -> Result<()> {
    let mut w = World::boot_with(Options { host: Some("localhost".into()), ..Options::default() })?;
    w.add_user("tech1", "technician")?;
    w.login("tech1")?;
    let mut c = Client::new(&w)?;

    // A login challenge needs the login form's pre-login token.
    let page = c.get("/login")?;
    ensure!(page.body.contains(r#"src="/console-webauthn.js""#), "the login page has no script");
    let pre = hidden_csrf(&page.body)?;
    let r = c.post("/login/key-challenge", &[("csrf", "wrong")])?;
    ensure!(r.status == 403, "a login challenge without the form token: {}", r.summary());
    let r = c.post("/login/key-challenge", &[("csrf", &pre)])?;
    ensure!(r.status == 200, "a login challenge: {}", r.summary());
    let js = r.json()?;
    ensure!(js["rp_id"] == "localhost" && text(&js, "challenge").len() == 43, "{js}");
    let script = c.get("/console-webauthn.js")?;
    ensure!(
        script.status == 200
            && script.header("content-type").is_some_and(|t| t.starts_with("text/javascript")),
        "the script: {}",
        script.summary()
    );
    let csp = script.header("content-security-policy").unwrap_or_default();
    ensure!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"), "{csp}");

    // Logged in: the key page, and its forms refused without their token.
    let code = w.next_code("tech1")?;
    let password = w.password("tech1");
    let r = c.post(
        "/login",
        &[("csrf", &pre), ("user", "tech1"), ("password", &password), ("otp", &code)],
    )?;
    ensure!(r.status == 303, "login: {}", r.summary());
    let keys = c.get("/account/keys")?;
    ensure!(keys.status == 200 && keys.body.contains("no security key"), "{}", keys.summary());
    let csrf = hidden_csrf(&keys.body)?;
    for path in ["/account/keys/challenge", "/account/keys", "/account/keys/1/remove"] {
        let r = c.post(path, &[("csrf", "")])?;
        ensure!(r.status == 403, "{path} without its token: {}", r.summary());
    }
    let r = c.post("/account/keys/challenge", &[("csrf", &csrf)])?;
    let js = r.json().with_context(|| r.summary())?;
    ensure!(js["rp"]["id"] == "localhost" && js["user"]["name"] == "tech1", "{js}");
    // A made-up registration is refused and nothing is stored.
    let r = c.post(
        "/account/keys",
        &[("csrf", &csrf), ("name", "fake"), ("attestation", "o2NmbXQ"), ("client_data", "e30")],
    )?;
    ensure!(r.status == 400, "a made-up registration: {}", r.summary());
    ensure!(c.get("/account/keys")?.body.contains("no security key"), "a fake key was stored");
    // Nobody removes a key that is not theirs; a technician signs no approval.
    let r = c.post("/account/keys/1/remove", &[("csrf", &csrf)])?;
    ensure!(r.status == 404, "removing a key that is not there: {}", r.summary());
    let r = c.get("/sessions/s1/sign")?;
    ensure!(r.status == 403 || r.status == 404, "a technician's sign page: {}", r.summary());

    let trail = w.fw("admin", &["audit", "list", "--json"])?.json_list();
    let refused = trail
        .iter()
        .filter(|r| text(r, "action") == "access.refused" && r.to_string().contains("CSRF token"))
        .count();
    ensure!(refused >= 3, "the refused forms are not in the trail ({refused})");
    Ok(())
}
