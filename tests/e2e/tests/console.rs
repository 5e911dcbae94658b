//! The web console: in a real browser (Debian's chromium over WebDriver) and, below the
//! browser, its HTTP contract (headers, cookie flags, CSRF refusals, buttons by role).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use fernwart_e2e::{
    audit_has, default_password,
    https::{Https, Reply},
    poll, roundtrip, webdriver, Echo, World,
};
use sha2::Digest as _;

const T: Duration = Duration::from_secs(20);

/// Where the tests leave screenshots of the pages they saw.
fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    target.join("screenshots")
}

/// A world with machine m1 (target plc, switch on) and session s1 for tech1, prepared.
fn world_with_session(plc: &Echo) -> Result<World> {
    let mut w = World::standard()?;
    w.start_agent("m1", &[("plc", plc.addr)])?;
    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;
    w.create_session("s1", "m1", &["plc"], &["tech1"])?;
    Ok(w)
}

#[test]
fn an_approver_releases_a_waiting_session_in_the_browser() -> Result<()> {
    let Some((chromium, chromedriver)) = webdriver::available() else {
        eprintln!(
            "\n!!! SKIPPED: the browser test needs {} and {} (Debian packages chromium and chromium-driver; scripts/test installs them)\n",
            webdriver::CHROMIUM,
            webdriver::CHROMEDRIVER
        );
        return Ok(());
    };
    let plc = Echo::start()?;
    let mut w = world_with_session(&plc)?;

    // The technician's connect asks for the session and waits for the operator.
    let mut conn = w.spawn_connect("s1", "tech1")?;
    poll("session s1 requested", T, Duration::from_millis(100), || {
        Ok((w.session_state("s1")? == "requested").then_some(()))
    })?;

    let log = w.log_path("chromedriver");
    let driver = webdriver::Driver::start(&chromium, &chromedriver, &log)?;
    let profile = w.root.join("browser-op1");
    let b = driver.session(&profile, "en-US")?;
    let shots = screenshots();

    // Not logged in: the console sends the browser to its login page.
    b.goto(&format!("{}/", w.url))?;
    ensure!(b.url()?.ends_with("/login"), "not logged in, / leads to {}", b.url()?);
    b.screenshot(&shots.join("login-en.png"))?;

    // A wrong code is refused like a wrong password, without saying which.
    login(&b, "op1", &default_password("op1"), "000000")?;
    let err = b.find("p.error", T)?;
    let text = b.text(&err)?;
    ensure!(text == "Invalid user name, password or code.", "login error: {text:?}");

    // The real login: password and a fresh TOTP code.
    let code = w.next_code("op1")?;
    login(&b, "op1", &default_password("op1"), &code)?;
    b.find("main h1", T)?;
    ensure!(!b.url()?.contains("/login"), "logged in, still at {}", b.url()?);
    let cookies = b.cookies()?;
    let login_cookie = cookies
        .iter()
        .find(|c| c["name"] == "__Host-fernwart")
        .with_context(|| format!("no login cookie among {cookies:?}"))?;
    ensure!(
        login_cookie["httpOnly"] == true
            && login_cookie["secure"] == true
            && login_cookie["sameSite"] == "Strict"
            && login_cookie["path"] == "/",
        "login cookie flags: {login_cookie}"
    );

    // The dashboard: the machine online with its switch on, the session waiting.
    let m = b.find(r#"tr.machine[data-machine="m1"] [data-online="true"]"#, T)?;
    ensure!(b.text(&m)? == "online", "machine m1 badge");
    b.find(r#"tr.machine[data-machine="m1"] td[data-switch="on"]"#, T)?;
    let sw = b.text(&b.find(r#"tr.machine[data-machine="m1"] td.software"#, T)?)?;
    ensure!(sw.starts_with("fernwart-agent "), "agent software shown: {sw:?}");
    let approve = b.find(r#"tr.session[data-session="s1"] button.approve"#, T)?;
    b.screenshot(&shots.join("dashboard-en.png"))?;

    // One click releases it.
    b.click(&approve)?;
    let note = b.find("p.note", T)?;
    ensure!(b.text(&note)?.contains("s1"), "after approving: {}", b.text(&note)?);
    ensure!(
        b.find_all(r#"tr.session[data-session="s1"]"#)?.is_empty(),
        "s1 still waits on the dashboard"
    );

    // The technician's connect that waited gets its forwards, and they work.
    conn.wait_forwards(T)?;
    roundtrip(conn.forward("plc")?, b"fernwart console approval", T)?;

    // Live: the dashboard listens to the server's events; a tunnel that opens appears with
    // its bytes, without a reload.
    b.find("html[data-live-connected]", T).context("the page's event stream did not open")?;
    let loaded = b.url()?;
    b.find("#live-connections p.empty", T)?;
    let mut tool = std::net::TcpStream::connect(conn.forward("plc")?)?;
    tool.set_read_timeout(Some(T))?;
    echo(&mut tool, b"live bytes one")?;
    let row = r#"tr.connection[data-session="s1"][data-target="plc"]"#;
    b.find(row, T).context("the live connection did not appear")?;
    ensure!(b.url()? == loaded, "the page was reloaded: {}", b.url()?);
    let bytes = |b: &webdriver::Browser, which: &str| -> Result<u64> {
        let cell = b.find(&format!("{row} td.bytes-{which}"), T)?;
        Ok(b.attribute(&cell, "data-bytes")?.unwrap_or_default().parse()?)
    };
    poll("the tunnel's bytes on the page", T, Duration::from_millis(200), || {
        Ok((bytes(&b, "up")? >= 14 && bytes(&b, "down")? >= 14).then_some(()))
    })?;
    // More bytes: the counts grow on the page by themselves.
    echo(&mut tool, &[b'x'; 1000])?;
    poll("the bytes grow on the page", T, Duration::from_millis(200), || {
        Ok((bytes(&b, "up")? >= 1014 && bytes(&b, "down")? >= 1014).then_some(()))
    })?;
    ensure!(b.url()? == loaded, "the page was reloaded: {}", b.url()?);
    b.screenshot(&shots.join("live-connection-en.png"))?;
    b.goto(&format!("{}/?lang=de", w.url))?;
    b.find(row, T)?;
    ensure!(b.source()?.contains("Aktive Verbindungen"), "the live connections in German");
    b.screenshot(&shots.join("live-connection-de.png"))?;
    // On a tablet: nothing wider than the screen but the tables' own scroll areas.
    b.resize(800, 1100)?;
    let overflow = b.eval(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
    )?;
    ensure!(overflow.as_i64() == Some(0), "the page is wider than a tablet: {overflow}");
    b.screenshot(&shots.join("dashboard-tablet-de.png"))?;
    b.goto(&format!("{}/?lang=en", w.url))?;
    b.find(row, T)?;
    b.find("html[data-live-connected]", T)?;

    // Cut: the tunnel closes at once; the page says so.
    b.click(&b.find(&format!("{row} button.cut"), T)?)?;
    let note = b.find("p.note", T)?;
    ensure!(b.text(&note)?.contains("s1"), "after cutting: {}", b.text(&note)?);
    let mut buf = [0u8; 16];
    match std::io::Read::read(&mut tool, &mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => bail!("the cut tunnel still carried {n} bytes"),
    }
    poll("the cut connection leaves the page", T, Duration::from_millis(200), || {
        b.goto(&format!("{}/", w.url))?;
        Ok(b.find_all(row)?.is_empty().then_some(()))
    })?;

    b.goto(&format!("{}/sessions", w.url))?;
    b.find(r#"tr.session[data-session="s1"]"#, T)?;
    b.screenshot(&shots.join("sessions-en.png"))?;

    // The sessions page, in German: the session approved (or already active).
    b.goto(&format!("{}/sessions?lang=de", w.url))?;
    let row = b.find(r#"tr.session[data-session="s1"]"#, T)?;
    let state = b.attribute(&row, "data-state")?.unwrap_or_default();
    ensure!(state == "approved" || state == "active", "s1 on the sessions page: {state}");
    let html = b.source()?;
    ensure!(html.contains(r#"<html lang="de""#), "?lang=de gives a German page");
    ensure!(html.contains("Sitzungen") && html.contains("Abmelden"), "German texts missing");
    b.screenshot(&shots.join("sessions-de.png"))?;
    // The choice is remembered: the dashboard stays German.
    b.goto(&format!("{}/", w.url))?;
    b.find("main h1", T)?;
    ensure!(b.source()?.contains("Übersicht"), "the language cookie keeps German");
    b.screenshot(&shots.join("dashboard-de.png"))?;

    // Log out: back at the login page, the login gone at the server.
    let out = b.find("form[action='/logout'] button", T)?;
    b.click(&out)?;
    b.find("form.login", T)?;
    ensure!(b.url()?.contains("/login"), "after logout: {}", b.url()?);
    ensure!(b.source()?.contains("Sie sind abgemeldet."), "the logout note, in German");
    b.screenshot(&shots.join("login-de.png"))?;
    b.goto(&format!("{}/sessions", w.url))?;
    ensure!(b.url()?.contains("/login"), "after logout /sessions leads to {}", b.url()?);

    // The auditor finds it all on the audit page: the approval, the tunnel, its cut.
    let aud = driver.session(&w.root.join("browser-aud1"), "en-US")?;
    aud.goto(&format!("{}/login", w.url))?;
    let code = w.next_code("aud1")?;
    login(&aud, "aud1", &default_password("aud1"), &code)?;
    aud.find("main h1", T)?;
    aud.goto(&format!("{}/audit?session=s1", w.url))?;
    for action in
        ["session.request", "session.approve", "tunnel.open", "tunnel.cut", "tunnel.close"]
    {
        aud.find(&format!(r#"tr.record[data-action="{action}"]"#), T)
            .with_context(|| format!("no {action} of s1 on the audit page"))?;
    }
    let page = aud.source()?;
    ensure!(page.contains("cut by op1"), "the tunnel's close does not say who cut it");
    aud.screenshot(&shots.join("audit-session-en.png"))?;

    let events = w.audit("aud1")?;
    ensure!(audit_has(&events, &["session", "approve"]), "no approval in the trail");
    ensure!(has_event(&events, "session.approve", &["op1", "s1"]), "no approval of s1 by op1");
    ensure!(has_event(&events, "auth.logout", &["op1"]), "no logout of op1 in the trail");
    ensure!(has_event(&events, "tunnel.cut", &["op1", "s1", "plc", "tech1"]), "no cut on record");
    ensure!(has_event(&events, "tunnel.close", &["cut by op1"]), "the tunnel's close says no cut");
    Ok(())
}

/// Sends `data` through a forward to the echo target and reads it back.
fn echo(s: &mut std::net::TcpStream, data: &[u8]) -> Result<()> {
    use std::io::{Read, Write};
    s.write_all(data)?;
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).context("reading the echo")?;
    ensure!(back == data, "the echo came back changed");
    Ok(())
}

/// A session-admin prepares a session in the browser; the technician starts it from the
/// console's `fernwart://` link (`fernwart open-url`), which waits; an approver of the
/// operator releases it in a second browser while the session-admin's page follows live.
#[test]
fn a_session_prepared_in_the_browser_is_started_from_its_link() -> Result<()> {
    let Some((chromium, chromedriver)) = webdriver::available() else {
        eprintln!("\n!!! SKIPPED: the browser test needs chromium and chromium-driver\n");
        return Ok(());
    };
    let plc = Echo::start()?;
    let mut w = World::standard()?;
    w.add_user("sa1", "session-admin")?;
    w.login("sa1")?;
    w.start_agent("m1", &[("plc", plc.addr)])?;
    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;
    let shots = screenshots();
    let log = w.log_path("chromedriver");
    let driver = webdriver::Driver::start(&chromium, &chromedriver, &log)?;

    // The session-admin prepares s7 with the form.
    let sa = driver.session(&w.root.join("browser-sa1"), "de-DE")?;
    sa.goto(&format!("{}/login", w.url))?;
    let code = w.next_code("sa1")?;
    login(&sa, "sa1", &default_password("sa1"), &code)?;
    sa.find("main h1", T)?;
    sa.goto(&format!("{}/sessions", w.url))?;
    sa.click(&sa.find("#prepare-link", T)?)?;
    sa.find("form#prepare", T)?;
    ensure!(sa.source()?.contains("Sitzung vorbereiten"), "the form speaks German");
    sa.type_into(&sa.find("#name", T)?, "s7")?;
    sa.type_into(&sa.find("#targets", T)?, "plc")?;
    sa.type_into(&sa.find("#users", T)?, "tech1")?;
    sa.type_into(&sa.find("#reason", T)?, "T-7 Spindel")?;
    sa.screenshot(&shots.join("session-prepare-de.png"))?;
    sa.click(&sa.find("form#prepare button[type=submit]", T)?)?;
    let facts = sa.find(r#"dl.facts[data-session="s7"]"#, T)?;
    ensure!(
        sa.attribute(&facts, "data-state")?.as_deref() == Some("prepared"),
        "s7 after preparing"
    );
    ensure!(w.session_state("s7")? == "prepared", "s7 is not prepared at the server");
    let s7 = w.session("s7")?;
    ensure!(s7["created_by"] == "sa1" && s7["reason"] == "T-7 Spindel", "s7: {s7}");
    // The session-admin is not its technician: no link for them.
    ensure!(sa.find_all("a.connect-link")?.is_empty(), "a connect link for the session-admin");
    sa.find("html[data-live-connected]", T).context("the session page's events")?;
    let loaded = sa.url()?;

    // The technician's page shows the command and the link.
    let mut t = Client::new(&w)?;
    let code = w.next_code("tech1")?;
    ensure!(t.login("tech1", &default_password("tech1"), &code)?.status == 303, "tech1 login");
    let page = t.get("/sessions/s7")?;
    ensure!(page.status == 200, "tech1 on s7: {}", page.summary());
    let link = format!("fernwart://connect/{}/s7", w.listen);
    ensure!(page.body.contains(&link), "no link {link} on tech1's page");
    ensure!(page.body.contains("fernwart connect s7"), "no command on tech1's page");
    ensure!(page.body.contains(r#"href="/audit?session=s7""#), "no link to s7's records");
    // A technician is not offered the form, and the server refuses it.
    ensure!(!t.get("/sessions")?.body.contains("/sessions/new"), "tech1 is offered the form");
    let r = t.get("/sessions/new")?;
    ensure!(r.status == 403, "tech1 on the form: {}", r.summary());
    let tt = hidden_csrf(&page.body)?;
    let fields = [
        ("csrf", tt.as_str()),
        ("name", "s8"),
        ("machine", "m1"),
        ("targets", "plc"),
        ("users", "tech1"),
        ("reason", "mine"),
        ("approval", "yes"),
    ];
    let r = t.post("/sessions/new", &fields, &[])?;
    ensure!(r.status == 403, "tech1 prepares: {}", r.summary());
    ensure!(w.fw("admin", &["session", "show", "s8"]).is_err(), "tech1 prepared s8");

    // A link to another server is refused before anything is sent; the right one connects
    // and waits for the operator.
    let out = w.fw_raw("tech1", &["open-url", "fernwart://connect/evil.example:8443/s7"], None)?;
    ensure!(!out.success(), "a link to another server was followed");
    ensure!(out.stderr.contains("refused"), "the refusal: {}", out.stderr);
    let mut cmd = w.cli("tech1");
    cmd.args(["--json", "open-url", &link]);
    let log = w.log_path("open-url-tech1-s7");
    let proc = fernwart_e2e::Proc::spawn(cmd, "fernwart open-url (tech1)", &log, true)?;
    let mut conn = fernwart_e2e::Connect { proc, forwards: Default::default() };
    w.wait_session_state("s7", "requested", T)?;
    // The session-admin's page follows by itself.
    poll("s7 requested on sa1's page", T, Duration::from_millis(200), || {
        let f = sa.find(r#"dl.facts[data-session="s7"]"#, T)?;
        Ok((sa.attribute(&f, "data-state")?.as_deref() == Some("requested")).then_some(()))
    })?;

    // The operator's approver, in a second browser: s7 waits on the dashboard.
    let op = driver.session(&w.root.join("browser-op1"), "en-US")?;
    op.goto(&format!("{}/login", w.url))?;
    let code = w.next_code("op1")?;
    login(&op, "op1", &default_password("op1"), &code)?;
    let approve = op.find(r#"tr.session[data-session="s7"] button.approve"#, T)?;
    // By keyboard: Enter on the button.
    op.press_enter(&approve)?;
    conn.wait_forwards(T)?;
    roundtrip(conn.forward("plc")?, b"started from the console link", T)?;
    poll("s7 released on sa1's page", T, Duration::from_millis(200), || {
        let f = sa.find(r#"dl.facts[data-session="s7"]"#, T)?;
        let state = sa.attribute(&f, "data-state")?.unwrap_or_default();
        Ok((state == "approved" || state == "active").then_some(()))
    })?;
    ensure!(sa.url()? == loaded, "sa1's page was reloaded: {}", sa.url()?);
    sa.screenshot(&shots.join("session-de.png"))?;
    sa.goto(&format!("{}/sessions/s7?lang=en", w.url))?;
    sa.find(r#"dl.facts[data-session="s7"]"#, T)?;
    sa.screenshot(&shots.join("session-en.png"))?;
    sa.goto(&format!("{}/sessions/new", w.url))?;
    sa.find("form#prepare", T)?;
    sa.screenshot(&shots.join("session-prepare-en.png"))?;

    let events = w.audit("aud1")?;
    ensure!(has_event(&events, "session.create", &["sa1", "s7", "T-7 Spindel"]), "no create");
    ensure!(has_event(&events, "session.approve", &["op1", "s7"]), "no approval of s7");
    ensure!(has_event(&events, "tunnel.open", &["tech1", "s7"]), "no tunnel of s7");
    Ok(())
}

/// The administration pages in the browser, in both languages: a machine added (its token
/// shown once, and it enrols), revoked; a user added and disabled; organizations and a
/// contract; the settings; the audit trail filtered. Then what others may not do.
#[test]
fn administration_pages_in_the_browser() -> Result<()> {
    let Some((chromium, chromedriver)) = webdriver::available() else {
        eprintln!("\n!!! SKIPPED: the browser test needs chromium and chromium-driver\n");
        return Ok(());
    };
    let plc = Echo::start()?;
    let mut w = World::standard()?;
    w.start_agent("m1", &[("plc", plc.addr)])?;
    let shots = screenshots();
    let log = w.log_path("chromedriver");
    let driver = webdriver::Driver::start(&chromium, &chromedriver, &log)?;
    let b = driver.session(&w.root.join("browser-admin"), "en-US")?;
    let admin = w.admin.clone();
    b.goto(&format!("{}/login", w.url))?;
    let code = w.next_code(&admin)?;
    login(&b, &admin, &w.password(&admin), &code)?;
    b.find("main h1", T)?;
    for path in ["/machines", "/users", "/orgs", "/audit", "/settings"] {
        b.find(&format!("nav a[href='{path}']"), T)
            .with_context(|| format!("no link to {path}"))?;
    }

    // Machines: m1 with the target its agent reports.
    b.goto(&format!("{}/machines", w.url))?;
    b.find(r#"tr.machine[data-machine="m1"] li[data-target="plc"]"#, T)?;
    b.screenshot(&shots.join("machines-en.png"))?;
    b.type_into(&b.find("form#machine-add #name", T)?, "m9")?;
    b.click(&b.find("form#machine-add button[type=submit]", T)?)?;
    let line = b.find("#enroll-line", T)?;
    let token = b.attribute(&line, "data-token")?.unwrap_or_default();
    let value = b.attribute(&line, "value")?.unwrap_or_default();
    ensure!(
        value.starts_with(&format!("fernwart-agent enroll --server {} --token {token} ", w.url))
            && !token.is_empty(),
        "the enrolment line: {value:?}"
    );
    b.find("button.copy:not([hidden])", T).context("no copy button")?;
    b.screenshot(&shots.join("machine-added-en.png"))?;
    // The token is real: the agent enrols with it.
    let dir = w.write_agent_toml("m9", &[("plc", plc.addr)])?;
    w.enroll_raw(&dir, &token, &w.ca)?.check()?;
    // Revoke it.
    b.goto(&format!("{}/machines", w.url))?;
    b.click(&b.find(r#"form[action="/machines/m9/revoke"] button"#, T)?)?;
    b.find("p.note", T)?;
    ensure!(
        b.find_all(r#"form[action="/machines/m9/revoke"]"#)?.is_empty(),
        "m9 can still be revoked"
    );
    ensure!(w.machine("m9")?.is_some_and(|m| m["revoked"] == true), "m9 not revoked");

    // Users: add one, disable it.
    b.goto(&format!("{}/users", w.url))?;
    b.type_into(&b.find("form#user-add #name", T)?, "tech9")?;
    b.type_into(&b.find("form#user-add #password", T)?, &default_password("tech9"))?;
    b.click(&b.find("form#user-add button[type=submit]", T)?)?;
    b.find(r#"tr.user[data-user="tech9"]"#, T)?;
    b.screenshot(&shots.join("users-en.png"))?;
    b.click(&b.find(r#"form[action="/users/tech9/disable"] button"#, T)?)?;
    b.find(r#"tr.user[data-user="tech9"] .badge.bad"#, T)?;

    // Organizations and a contract.
    b.goto(&format!("{}/orgs", w.url))?;
    for (name, kind) in [("plant", "operator"), ("builder", "provider")] {
        b.type_into(&b.find("form#org-add #name", T)?, name)?;
        b.click(&b.find(&format!("form#org-add #kind option[value={kind}]"), T)?)?;
        b.click(&b.find("form#org-add button[type=submit]", T)?)?;
        b.find(&format!(r#"tr.org[data-org="{name}"]"#), T)?;
    }
    b.click(&b.find("form#contract-add button[type=submit]", T)?)?;
    b.find("p.note", T).context("no note after the contract")?;
    let cells = b.find_all("td.contracts")?;
    let texts: Vec<String> = cells.iter().map(|c| b.text(c)).collect::<Result<_>>()?;
    ensure!(texts.iter().any(|t| t.contains("plant") || t.contains("builder")), "{texts:?}");
    b.screenshot(&shots.join("orgs-en.png"))?;

    // Settings, read-only.
    b.goto(&format!("{}/settings", w.url))?;
    ensure!(b.source()?.contains("Lockout after failed logins"), "settings page");
    b.screenshot(&shots.join("settings-en.png"))?;

    // The audit trail, filtered to machine additions.
    b.goto(&format!("{}/audit", w.url))?;
    b.type_into(&b.find("#kind", T)?, "machine.add")?;
    b.click(&b.find("form#audit-filter button[type=submit]", T)?)?;
    b.find(r#"tr.record[data-action="machine.add"]"#, T)?;
    ensure!(b.find_all(r#"tr.record:not([data-action="machine.add"])"#)?.is_empty(), "filter");
    ensure!(b.source()?.contains("m9"), "m9's addition not listed");
    b.find("a.export-csv[href*='kind=machine.add']", T)?;
    b.screenshot(&shots.join("audit-en.png"))?;

    // Every page in German too.
    for page in ["machines", "users", "orgs", "settings", "audit"] {
        b.goto(&format!("{}/{page}?lang=de", w.url))?;
        b.find("main h1", T)?;
        ensure!(b.source()?.contains(r#"<html lang="de""#), "{page} in German");
        b.screenshot(&shots.join(format!("{page}-de.png")))?;
    }

    // The downloads, for an auditor.
    let mut a = Client::new(&w)?;
    let code = w.next_code("aud1")?;
    ensure!(a.login("aud1", &default_password("aud1"), &code)?.status == 303, "aud1 login");
    let csv = a.get("/audit/export.csv?kind=machine")?;
    ensure!(csv.status == 200, "csv: {}", csv.summary());
    ensure!(
        csv.header("content-disposition").is_some_and(|d| d.starts_with("attachment")),
        "the CSV is no download"
    );
    ensure!(csv.body.starts_with("id,time,actor,org,action,target,source,details"), "csv head");
    ensure!(csv.body.contains("machine.revoke") && csv.body.contains("m9"), "csv rows");
    let jl = a.get("/audit/export.jsonl?kind=machine.add")?;
    ensure!(jl.status == 200, "jsonl: {}", jl.summary());
    let rows: Vec<serde_json::Value> =
        jl.body.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(rows.len() >= 2 && rows.iter().all(|r| r["action"] == "machine.add"), "{rows:?}");

    // A technician on the admin pages: not linked, refused.
    let mut t = Client::new(&w)?;
    let code = w.next_code("tech1")?;
    ensure!(t.login("tech1", &default_password("tech1"), &code)?.status == 303, "tech1 login");
    let home = t.get("/")?;
    ensure!(!home.body.contains(r#"href="/users""#), "a technician is shown the users page");
    for page in ["/users", "/orgs", "/settings"] {
        let r = t.get(page)?;
        ensure!(r.status == 403, "tech1 on {page}: {}", r.summary());
    }
    let m = t.get("/machines")?;
    ensure!(m.status == 200 && !m.body.contains("/machines/new"), "tech1 is offered to add");
    ensure!(!m.body.contains("/revoke"), "tech1 is offered to revoke");
    let tt = hidden_csrf(&m.body)?;
    let r = t.post("/machines/new", &[("csrf", &tt), ("name", "m10")], &[])?;
    ensure!(r.status == 403, "tech1 adds a machine: {}", r.summary());
    let r = t.post("/machines/m1/revoke", &[("csrf", &tt)], &[])?;
    ensure!(r.status == 403, "tech1 revokes m1: {}", r.summary());
    ensure!(w.machine("m10")?.is_none(), "tech1 added m10");

    // The admin's forms: without the token, or from another site, refused.
    let mut c = Client::new(&w)?;
    let code = w.next_code(&admin)?;
    ensure!(c.login(&admin, &w.password(&admin), &code)?.status == 303, "admin login");
    let page = c.get("/users")?;
    let token = hidden_csrf(&page.body)?;
    let pw = default_password("evil1");
    let user = [("name", "evil1"), ("role", "admin"), ("password", pw.as_str())];
    let r = c.post("/users/new", &user, &[])?;
    ensure!(r.status == 403, "a user added without the form token: {}", r.summary());
    let mut with_token = user.to_vec();
    with_token.push(("csrf", &token));
    let r = c.post("/users/new", &with_token, &[("Sec-Fetch-Site", "cross-site")])?;
    ensure!(r.status == 403, "a user added cross-site: {}", r.summary());
    let r = c.post("/users/new", &with_token, &[("Origin", "https://evil.example")])?;
    ensure!(r.status == 403, "a user added from another origin: {}", r.summary());
    ensure!(!c.get("/users")?.body.contains(r#"data-user="evil1""#), "evil1 was added");

    // A machine going offline shows on the open page by itself.
    b.goto(&format!("{}/machines?lang=en", w.url))?;
    b.find(r#"tr.machine[data-machine="m1"] .badge.good"#, T)?;
    b.find("html[data-live-connected]", T)?;
    let loaded = b.url()?;
    w.stop_agent("m1");
    b.find(r#"tr.machine[data-machine="m1"] .badge.bad"#, T).context("m1 still online")?;
    ensure!(b.url()? == loaded, "the page was reloaded");

    let events = w.audit("aud1")?;
    ensure!(has_event(&events, "machine.add", &["m9"]), "no machine.add of m9");
    ensure!(has_event(&events, "user.disable", &["tech9"]), "no user.disable of tech9");
    ensure!(has_event(&events, "contract.add", &["builder", "plant"]), "no contract.add");
    Ok(())
}

/// Issue 12: the settings an admin changes in the browser are in force at once (here: the
/// lockout threshold, 10 by default, set to 3, locks after three failures), on record with
/// old and new value; out of bounds is refused; an auditor sees them without a form, and the
/// server refuses the POST of anyone but an admin.
#[test]
fn settings_changed_in_the_browser_take_effect() -> Result<()> {
    let Some((chromium, chromedriver)) = webdriver::available() else {
        eprintln!("\n!!! SKIPPED: the browser test needs chromium and chromium-driver\n");
        return Ok(());
    };
    let mut w = World::standard()?;
    let shots = screenshots();
    let log = w.log_path("chromedriver");
    let driver = webdriver::Driver::start(&chromium, &chromedriver, &log)?;
    let b = driver.session(&w.root.join("browser-settings"), "en-US")?;
    let admin = w.admin.clone();
    b.goto(&format!("{}/login", w.url))?;
    let code = w.next_code(&admin)?;
    login(&b, &admin, &w.password(&admin), &code)?;
    b.find("main h1", T)?;
    b.goto(&format!("{}/settings", w.url))?;
    let field = b.find("form#settings-set #set-auth-lockout_threshold", T)?;
    ensure!(b.attribute(&field, "value")?.as_deref() == Some("10"), "threshold not 10");
    b.clear(&field)?;
    b.type_into(&field, "3")?;
    let dur = b.find("form#settings-set #set-auth-lockout_duration", T)?;
    b.clear(&dur)?;
    b.type_into(&dur, "1h")?;
    b.click(&b.find("form#settings-set button[type=submit]", T)?)?;
    b.find("p.note", T).context("no note after saving")?;
    let field = b.find("form#settings-set #set-auth-lockout_threshold", T)?;
    ensure!(b.attribute(&field, "value")?.as_deref() == Some("3"), "threshold not shown as 3");
    ensure!(
        b.text(&b.find(r#"tr.setting[data-setting="auth.lockout_threshold"]"#, T)?)?
            .contains("changed in the console"),
        "the changed setting is not marked"
    );
    b.screenshot(&shots.join("settings-edit-en.png"))?;
    b.goto(&format!("{}/settings?lang=de", w.url))?;
    b.find("form#settings-set", T)?;
    ensure!(b.source()?.contains("Einstellungen speichern"), "settings in German");
    b.screenshot(&shots.join("settings-edit-de.png"))?;

    // Out of bounds: refused with the reason, nothing changes.
    let field = b.find("form#settings-set #set-auth-lockout_threshold", T)?;
    b.clear(&field)?;
    b.type_into(&field, "2")?;
    b.click(&b.find("form#settings-set button[type=submit]", T)?)?;
    poll("the refusal", T, Duration::from_millis(100), || {
        Ok(b.source()?.contains("auth.lockout_threshold = 2: must be 3 to 20").then_some(()))
    })?;
    b.goto(&format!("{}/settings?lang=en", w.url))?;
    let field = b.find("form#settings-set #set-auth-lockout_threshold", T)?;
    ensure!(b.attribute(&field, "value")?.as_deref() == Some("3"), "a refused value changed it");

    // In force at once: three failures lock op1 (the server started with 10).
    let mut c = Client::new(&w)?;
    for i in 0..3 {
        let r = c.login("op1", "Wrong-Passw0rd!x", "123456")?;
        ensure!(r.status == 401, "failure {i}: {}", r.summary());
    }
    let code = w.next_code("op1")?;
    let r = c.login("op1", &default_password("op1"), &code)?;
    ensure!(r.status == 401, "op1 logged in after three failures: {}", r.summary());
    let events = w.audit("aud1")?;
    ensure!(has_event(&events, "auth.lockout", &["op1"]), "no lockout after three failures");
    ensure!(
        has_event(
            &events,
            "settings.set",
            &["auth.lockout_threshold", "10", "auth.lockout_duration", "15m", "1h"]
        ),
        "the change is not on record with old and new values: {}",
        fernwart_e2e::audit_actions(&events)
    );
    let lock = events.iter().rev().find(|e| e["action"] == "auth.lockout").map(|e| e.to_string());
    ensure!(lock.is_some_and(|l| l.contains("3600")), "the lock is not the new hour");

    // An auditor reads the settings, without a form; its POST is refused anyway.
    let mut a = Client::new(&w)?;
    let code = w.next_code("aud1")?;
    ensure!(a.login("aud1", &default_password("aud1"), &code)?.status == 303, "aud1 login");
    let page = a.get("/settings")?;
    ensure!(
        page.status == 200 && page.body.contains("auth.lockout_threshold"),
        "{}",
        page.summary()
    );
    ensure!(
        !page.body.contains("settings-set")
            && !page.body.contains(r#"name="auth.lockout_threshold""#),
        "an auditor is offered the settings form"
    );
    let token = hidden_csrf(&page.body)?;
    let r = a.post("/settings", &[("csrf", &token), ("auth.lockout_threshold", "20")], &[])?;
    ensure!(r.status == 403, "an auditor changed a setting: {}", r.summary());
    // A technician: not even the page.
    let mut t = Client::new(&w)?;
    let code = w.next_code("tech1")?;
    ensure!(t.login("tech1", &default_password("tech1"), &code)?.status == 303, "tech1 login");
    ensure!(t.get("/settings")?.status == 403, "tech1 sees the settings");
    let token = hidden_csrf(&t.get("/")?.body)?;
    let r = t.post("/settings", &[("csrf", &token), ("auth.lockout_threshold", "20")], &[])?;
    ensure!(r.status == 403, "a technician changed a setting: {}", r.summary());
    // The admin's own form: without its token, or from another site, refused.
    let mut c = Client::new(&w)?;
    let code = w.next_code(&admin)?;
    ensure!(c.login(&admin, &w.password(&admin), &code)?.status == 303, "admin login");
    let token = hidden_csrf(&c.get("/settings")?.body)?;
    let r = c.post("/settings", &[("auth.lockout_threshold", "20")], &[])?;
    ensure!(r.status == 403, "a change without the form token: {}", r.summary());
    let r = c.post(
        "/settings",
        &[("csrf", &token), ("auth.lockout_threshold", "20")],
        &[("Sec-Fetch-Site", "cross-site")],
    )?;
    ensure!(r.status == 403, "a change from another site: {}", r.summary());
    let page = c.get("/settings")?;
    ensure!(
        page.body.contains(
            r#"name="auth.lockout_threshold" type="text" required maxlength="32" value="3""#
        ),
        "a refused POST changed the threshold"
    );
    Ok(())
}

/// Issue 12: an admin changes an operator's rules on the organizations page, through the
/// same `org set` path as the CLI; a contradiction is refused; an auditor sees the rules
/// without a form and the server refuses their POST.
#[test]
fn organization_rules_change_in_the_browser() -> Result<()> {
    let Some((chromium, chromedriver)) = webdriver::available() else {
        eprintln!("\n!!! SKIPPED: the browser test needs chromium and chromium-driver\n");
        return Ok(());
    };
    let mut w = World::standard()?;
    let admin = w.admin.clone();
    w.fw(&admin, &["org", "add", "plant", "--kind", "operator"])?;
    w.fw(&admin, &["org", "add", "builder", "--kind", "provider"])?;
    let shots = screenshots();
    let log = w.log_path("chromedriver");
    let driver = webdriver::Driver::start(&chromium, &chromedriver, &log)?;
    let b = driver.session(&w.root.join("browser-orgs"), "en-US")?;
    b.goto(&format!("{}/login", w.url))?;
    let code = w.next_code(&admin)?;
    login(&b, &admin, &w.password(&admin), &code)?;
    b.find("main h1", T)?;
    b.goto(&format!("{}/orgs", w.url))?;
    b.find(r#"form.org-set[data-org="plant"]"#, T)?;
    ensure!(
        b.find_all(r#"form.org-set[data-org="builder"]"#)?.is_empty(),
        "a provider is offered rules it cannot have"
    );
    b.type_into(&b.find("#max-plant", T)?, "4h")?;
    b.click(&b.find("#signed-plant", T)?)?;
    b.click(&b.find(r#"form.org-set[data-org="plant"] button[type=submit]"#, T)?)?;
    b.find("p.note", T).context("no note after the rules")?;
    let orgs = w.fw_json("aud1", &["org", "list"])?;
    let plant = orgs
        .as_array()
        .and_then(|l| l.iter().find(|o| o["name"] == "plant").cloned())
        .context("plant not listed")?;
    ensure!(
        plant["require_signed"] == true
            && plant["allow_no_approval"] == false
            && plant["max_session_secs"] == 14400,
        "plant's rules: {plant}"
    );
    ensure!(b.find("#signed-plant:checked", T).is_ok(), "the form does not show the new rule");
    b.screenshot(&shots.join("orgs-rules-en.png"))?;
    b.goto(&format!("{}/orgs?lang=de", w.url))?;
    ensure!(b.source()?.contains("Regeln speichern"), "the rules form in German");
    b.screenshot(&shots.join("orgs-rules-de.png"))?;

    // Sessions without approval while approvals must be signed: refused, nothing changes.
    b.click(&b.find("#free-plant", T)?)?;
    b.click(&b.find(r#"form.org-set[data-org="plant"] button[type=submit]"#, T)?)?;
    poll("the refusal", T, Duration::from_millis(100), || {
        Ok(b.source()?.contains("contradict").then_some(()))
    })?;
    let events = w.audit("aud1")?;
    ensure!(has_event(&events, "org.set", &["plant", "14400"]), "the change is not on record");
    ensure!(
        !w.fw_json("aud1", &["org", "list"])?.to_string().contains(r#""allow_no_approval":true"#),
        "a refused change changed the rules"
    );

    // An auditor: the rules, no form; a POST refused anyway.
    let mut a = Client::new(&w)?;
    let code = w.next_code("aud1")?;
    ensure!(a.login("aud1", &default_password("aud1"), &code)?.status == 303, "aud1 login");
    let page = a.get("/orgs")?;
    ensure!(page.status == 200 && page.body.contains(r#"data-org="plant""#), "{}", page.summary());
    ensure!(!page.body.contains("/orgs/plant/rules"), "an auditor is offered to change rules");
    let token = hidden_csrf(&page.body)?;
    let r = a.post("/orgs/plant/rules", &[("csrf", &token), ("max_session", "1m")], &[])?;
    ensure!(r.status == 403, "an auditor changed the rules: {}", r.summary());
    let r = a.post("/orgs/plant/rules", &[("max_session", "1m")], &[])?;
    ensure!(r.status == 403, "rules without the form token: {}", r.summary());
    Ok(())
}

/// Issue 12: a user without a second factor sets up an authenticator app in the browser
/// (the secret and its otpauth link as text, confirmed with a code), through the same code as
/// `fernwart mfa enroll` / `confirm`; a wrong code is refused; then logs in with a code.
#[test]
fn a_second_factor_is_set_up_in_the_browser() -> Result<()> {
    let Some((chromium, chromedriver)) = webdriver::available() else {
        eprintln!("\n!!! SKIPPED: the browser test needs chromium and chromium-driver\n");
        return Ok(());
    };
    let mut w = World::boot()?;
    w.add_user("newbie", "approver")?;
    let pw = default_password("newbie");
    let shots = screenshots();
    let log = w.log_path("chromedriver");
    let driver = webdriver::Driver::start(&chromium, &chromedriver, &log)?;
    let b = driver.session(&w.root.join("browser-mfa"), "en-US")?;
    b.goto(&format!("{}/login", w.url))?;
    b.type_into(&b.find("#user", T)?, "newbie")?;
    b.type_into(&b.find("#password", T)?, &pw)?;
    b.click(&b.find("form.login button[type=submit]", T)?)?;
    b.click(&b.find("form#mfa-enroll button[type=submit]", T)?)?;
    let secret = b.attribute(&b.find("#mfa-secret", T)?, "value")?.unwrap_or_default();
    let uri = b.attribute(&b.find("#mfa-uri", T)?, "value")?.unwrap_or_default();
    ensure!(!secret.is_empty() && uri.starts_with("otpauth://totp/"), "{secret:?} {uri:?}");
    ensure!(uri.contains(&format!("secret={secret}")), "the link is not the secret's: {uri}");
    ensure!(b.find_all("nav a")?.is_empty(), "a setup-only login is shown the navigation");
    b.screenshot(&shots.join("mfa-setup-en.png"))?;
    b.goto(&format!("{}/account/mfa?lang=de", w.url))?;
    b.find(r#"html[lang="de"] #mfa-secret"#, T)?;
    let de = b.source()?;
    ensure!(de.contains("Geheimnis (Base32)"), "the page in German: {de}");
    b.screenshot(&shots.join("mfa-setup-de.png"))?;
    b.goto(&format!("{}/account/mfa?lang=en", w.url))?;

    // A wrong code: refused, still pending.
    let step = fernwart_e2e::totp::step_of(fernwart_e2e::totp::unix_now());
    let wrong = fernwart_e2e::totp::code(&secret, step + 20)?;
    b.type_into(&b.find("#code", T)?, &wrong)?;
    b.click(&b.find("form#mfa-confirm button[type=submit]", T)?)?;
    b.find("p.error", T).context("no error for a wrong code")?;
    ensure!(
        b.attribute(&b.find("#mfa-secret", T)?, "value")?.as_deref() == Some(secret.as_str()),
        "the secret changed after a wrong code"
    );

    // The right code: set up; that login ends, the next one needs a code.
    let code = fernwart_e2e::totp::code(&secret, step)?;
    b.type_into(&b.find("#code", T)?, &code)?;
    b.click(&b.find("form#mfa-confirm button[type=submit]", T)?)?;
    b.find("form.login", T)?;
    ensure!(b.url()?.ends_with("/login?mfa=1"), "not back at the login: {}", b.url()?);
    ensure!(b.source()?.contains("Second factor set up"), "no note after the setup");
    let mut c = Client::new(&w)?;
    let r = c.login("newbie", &pw, "")?;
    ensure!(r.status == 401, "a password alone still logs in: {}", r.summary());
    let next = fernwart_e2e::totp::code(&secret, fernwart_e2e::totp::next_usable_step(Some(step)))?;
    login(&b, "newbie", &pw, &next)?;
    b.find(r#"nav a[href="/account/mfa"]"#, T)?;
    b.goto(&format!("{}/account/mfa", w.url))?;
    b.find("p.mfa-confirmed", T)?;
    ensure!(b.find_all("main form")?.is_empty(), "a set-up factor is offered a button");
    let events = w.audit(&w.admin.clone())?;
    ensure!(has_event(&events, "mfa.enroll", &["newbie"]), "no mfa.enroll on record");
    ensure!(has_event(&events, "mfa.confirm", &["newbie"]), "no mfa.confirm on record");
    Ok(())
}

/// Whether one record of `action` mentions all of `words`.
fn has_event(events: &[serde_json::Value], action: &str, words: &[&str]) -> bool {
    events.iter().any(|e| {
        let text = e.to_string();
        e["action"] == action && words.iter().all(|w| text.contains(w))
    })
}

fn login(b: &webdriver::Browser, user: &str, password: &str, code: &str) -> Result<()> {
    let u = b.find("#user", T)?;
    // A page shown again after a failure keeps the user name.
    if b.attribute(&u, "value")?.unwrap_or_default().is_empty() {
        b.type_into(&u, user)?;
    }
    b.type_into(&b.find("#password", T)?, password)?;
    b.type_into(&b.find("#otp", T)?, code)?;
    b.click(&b.find("form.login button[type=submit]", T)?)
}

// ---------------------------------------------------------------- below the browser

/// A browser's part in HTTP: a cookie jar and forms.
struct Client {
    https: Https,
    jar: BTreeMap<String, String>,
}

impl Client {
    fn new(w: &World) -> Result<Self> {
        Ok(Self { https: Https::new(&w.ca, w.listen)?, jar: BTreeMap::new() })
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Result<Reply> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.https.server()
        );
        if !self.jar.is_empty() {
            let c: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req.push_str(&format!("Cookie: {}\r\n", c.join("; ")));
        }
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
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
        self.send("GET", path, None, &[])
    }

    fn post(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Result<Reply> {
        let body: String =
            url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        self.send("POST", path, Some(&body), extra)
    }

    /// Logs in through the login form.
    fn login(&mut self, user: &str, password: &str, code: &str) -> Result<Reply> {
        let page = self.get("/login")?;
        let csrf = hidden_csrf(&page.body)?;
        self.post(
            "/login",
            &[("csrf", &csrf), ("user", user), ("password", password), ("otp", code)],
            &[],
        )
    }
}

/// The form token in a page.
fn hidden_csrf(html: &str) -> Result<String> {
    let marker = r#"name="csrf" value=""#;
    let at = html.find(marker).with_context(|| format!("no form token in {html}"))? + marker.len();
    let end = html[at..].find('"').context("unterminated form token")?;
    Ok(html[at..at + end].to_owned())
}

fn location(r: &Reply) -> &str {
    r.header("location").unwrap_or_default()
}

fn security_headers(r: &Reply, what: &str) -> Result<()> {
    let csp = r.header("content-security-policy").unwrap_or_default();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "style-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        ensure!(csp.contains(part), "{what}: CSP {csp:?} lacks {part:?}");
    }
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        ensure!(r.header(name) == Some(value), "{what}: {name} is {:?}", r.header(name));
    }
    Ok(())
}

#[test]
fn console_http_headers_cookies_and_csrf() -> Result<()> {
    let plc = Echo::start()?;
    let mut w = world_with_session(&plc)?;
    w.create_session("s2", "m1", &["plc"], &["tech1"])?;
    let mut c = Client::new(&w)?;

    // Not logged in: to the login page; headers on every answer.
    let r = c.get("/")?;
    ensure!(r.status == 303 && location(&r) == "/login", "/ without login: {}", r.summary());
    security_headers(&r, "redirect")?;
    let page = c.get("/login")?;
    ensure!(page.status == 200, "{}", page.summary());
    security_headers(&page, "login page")?;
    ensure!(page.header("cache-control") == Some("no-store"), "login page cache-control");
    let pre = page.headers_named("set-cookie");
    ensure!(
        pre.iter().any(|c| c.starts_with("__Host-fernwart-pre=")
            && c.contains("Secure")
            && c.contains("HttpOnly")
            && c.contains("SameSite=Strict")
            && c.contains("Path=/")),
        "pre-login cookie: {pre:?}"
    );
    let css = c.get("/console.css")?;
    ensure!(
        css.status == 200 && css.header("content-type").is_some_and(|t| t.starts_with("text/css")),
        "css"
    );

    // A login form without its token (a cross-site form) is refused and recorded.
    let csrf = hidden_csrf(&page.body)?;
    let pw = default_password("op1");
    let r = c.post("/login", &[("user", "op1"), ("password", &pw), ("otp", "123456")], &[])?;
    ensure!(r.status == 403, "login without token: {}", r.summary());
    let r = c.post(
        "/login",
        &[("csrf", &csrf), ("user", "op1"), ("password", &pw)],
        &[("Origin", "https://evil.example")],
    )?;
    ensure!(r.status == 403, "login from another origin: {}", r.summary());

    // Wrong password and missing code look the same.
    let wrong = c.login("op1", "Wrong-Passw0rd!x", "123456")?;
    let missing = c.login("op1", &pw, "")?;
    ensure!(
        wrong.status == 401 && missing.status == 401,
        "{} / {}",
        wrong.summary(),
        missing.summary()
    );
    let msg = "Invalid user name, password or code.";
    ensure!(wrong.body.contains(msg) && missing.body.contains(msg), "login failures differ");

    // The login: a Secure, HttpOnly, SameSite=Strict cookie.
    let code = w.next_code("op1")?;
    let r = c.login("op1", &pw, &code)?;
    ensure!(r.status == 303 && location(&r) == "/", "login: {}", r.summary());
    let set = r.headers_named("set-cookie");
    let cookie = set
        .iter()
        .find(|c| c.starts_with("__Host-fernwart="))
        .with_context(|| format!("no login cookie in {set:?}"))?;
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        ensure!(cookie.split("; ").any(|p| p == flag), "login cookie {cookie:?} lacks {flag}");
    }
    ensure!(!cookie.contains("Domain"), "a __Host- cookie has no Domain");

    let dash = c.get("/")?;
    ensure!(dash.status == 200, "dashboard: {}", dash.summary());
    security_headers(&dash, "dashboard")?;
    ensure!(dash.header("cache-control") == Some("no-store"), "dashboard is stored");
    ensure!(dash.body.contains(r#"data-session="s1""#), "s1 not waiting on the dashboard");
    let token = hidden_csrf(&dash.body)?;

    // Approving without the form token, with a wrong one, or from another site: refused,
    // nothing changes, the refusal is on record.
    let r = c.post("/sessions/s1/approve", &[("back", "/")], &[])?;
    ensure!(r.status == 403, "approve without token: {}", r.summary());
    let r = c.post("/sessions/s1/approve", &[("csrf", "0000"), ("back", "/")], &[])?;
    ensure!(r.status == 403, "approve with a wrong token: {}", r.summary());
    let r =
        c.post("/sessions/s1/approve", &[("csrf", &token)], &[("Origin", "https://evil.example")])?;
    ensure!(r.status == 403, "approve from another origin: {}", r.summary());
    let r =
        c.post("/sessions/s1/approve", &[("csrf", &token)], &[("Sec-Fetch-Site", "cross-site")])?;
    ensure!(r.status == 403, "approve cross-site: {}", r.summary());
    ensure!(w.session_state("s1")? == "prepared", "a refused form changed s1");
    let events = w.audit("admin")?;
    let refused = events
        .iter()
        .filter(|e| e["action"] == "access.refused" && e.to_string().contains("CSRF"))
        .count();
    ensure!(refused >= 2, "CSRF refusals on record: {refused}");

    // With it: approved, through the API's rules.
    let r = c.post("/sessions/s1/approve", &[("csrf", &token), ("back", "/sessions")], &[])?;
    ensure!(
        r.status == 303 && location(&r).starts_with("/sessions?done=approve"),
        "{}",
        r.summary()
    );
    ensure!(w.session_state("s1")? == "approved", "s1 not approved");
    // Reject s2.
    let r = c.post("/sessions/s2/reject", &[("csrf", &token)], &[])?;
    ensure!(r.status == 303, "reject: {}", r.summary());
    ensure!(w.session_state("s2")? == "rejected", "s2 not rejected");

    // A technician sees no approve button, and the server refuses the POST anyway.
    w.create_session("s3", "m1", &["plc"], &["tech1"])?;
    let mut t = Client::new(&w)?;
    let code = w.next_code("tech1")?;
    let r = t.login("tech1", &default_password("tech1"), &code)?;
    ensure!(r.status == 303, "tech login: {}", r.summary());
    let page = t.get("/sessions")?;
    ensure!(page.body.contains(r#"data-session="s3""#), "tech1 does not see its session s3");
    ensure!(!page.body.contains("/approve"), "a technician is offered an approve button");
    let tt = hidden_csrf(&page.body)?;
    let r = t.post("/sessions/s3/approve", &[("csrf", &tt)], &[])?;
    ensure!(r.status == 403, "technician approves: {}", r.summary());
    ensure!(w.session_state("s3")? == "prepared", "s3 changed");

    // An operator's machine that takes only signed approvals: no button, the CLI named.
    w.fw("admin", &["org", "add", "plant", "--kind", "operator", "--require-signed"])?;
    w.add_user_in("ap1", "approver", Some("plant"))?;
    w.login("ap1")?;
    w.add_user_in("pt1", "technician", Some("plant"))?;
    let hmi = Echo::start()?;
    w.start_agent_in("m2", Some("plant"), &[("hmi", hmi.addr)])?;
    w.create_session("s4", "m2", &["hmi"], &["pt1"])?;
    let mut a = Client::new(&w)?;
    let code = w.next_code("ap1")?;
    let r = a.login("ap1", &default_password("ap1"), &code)?;
    ensure!(r.status == 303, "ap1 login: {}", r.summary());
    let dash = a.get("/")?;
    ensure!(dash.body.contains(r#"data-session="s4""#), "s4 not waiting for ap1");
    ensure!(
        !dash.body.contains("/sessions/s4/approve"),
        "an approve button for a signed-only machine"
    );
    ensure!(dash.body.contains("fernwart session approve s4"), "the CLI is not named");
    ensure!(dash.body.contains("/sessions/s4/reject"), "ap1 may reject s4");
    // And op1, of no organization, may not decide plant's session at all.
    let dash = c.get("/")?;
    ensure!(
        !dash.body.contains("/sessions/s4/approve") && !dash.body.contains("/sessions/s4/reject"),
        "op1 is offered a decision on plant's s4"
    );
    let r = c.post("/sessions/s4/approve", &[("csrf", &token)], &[])?;
    ensure!(r.status == 403, "op1 approves plant's s4: {}", r.summary());

    // Logout ends the login at the server: the old cookie no longer works.
    let old = c.jar.clone();
    let r = c.post("/logout", &[("csrf", &token)], &[])?;
    ensure!(r.status == 303 && location(&r).starts_with("/login"), "logout: {}", r.summary());
    ensure!(!c.jar.contains_key("__Host-fernwart"), "logout keeps the cookie");
    c.jar = old;
    let r = c.get("/")?;
    ensure!(
        r.status == 303 && location(&r).starts_with("/login"),
        "old cookie after logout: {}",
        r.summary()
    );
    if w.session_state("s4")? != "prepared" {
        bail!("s4 changed");
    }

    // A console login unused for longer than auth.idle_timeout (1 h) ends like a CLI login:
    // its last use moved two hours back in the database.
    let token = a.jar.get("__Host-fernwart").context("ap1 has no login cookie")?.clone();
    let hash: String =
        sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let db = rusqlite::Connection::open(w.srv_dir.join("fernwart.db"))?;
    db.busy_timeout(Duration::from_secs(10))?;
    let n = db.execute(
        "UPDATE auth_tokens SET created_at = created_at - 7200, \
         last_used_at = COALESCE(last_used_at, created_at) - 7200 WHERE token_hash = ?1",
        [&hash],
    )?;
    ensure!(n == 1, "ap1's console login not found in auth_tokens");
    drop(db);
    let r = a.get("/")?;
    ensure!(r.status == 303 && location(&r) == "/login?ended=1", "an idle login: {}", r.summary());
    ensure!(!a.jar.contains_key("__Host-fernwart"), "an idle login keeps its cookie");
    let events = w.audit("admin")?;
    ensure!(has_event(&events, "auth.login_ended", &["ap1"]), "the idle end is not on record");
    Ok(())
}

/// Live connections are shown and cut only within the machine's operator: an approver of
/// another organization neither sees the tunnel nor may cut it; the operator's approver may.
#[test]
fn only_the_operators_approvers_see_and_cut_its_connections() -> Result<()> {
    let mut w = World::boot()?;
    for org in ["plant", "other"] {
        w.fw("admin", &["org", "add", org, "--kind", "operator"])?;
    }
    w.add_user_in("apa", "approver", Some("plant"))?;
    w.add_user_in("apb", "approver", Some("other"))?;
    w.add_user_in("pt1", "technician", Some("plant"))?;
    for u in ["apa", "apb", "pt1"] {
        w.login(u)?;
    }
    let plc = Echo::start()?;
    w.start_agent_in("m2", Some("plant"), &[("plc", plc.addr)])?;
    w.switch("m2", true)?;
    w.wait_switch("m2", true, T)?;
    w.create_session("s5", "m2", &["plc"], &["pt1"])?;
    let conn = w.connect_approved("s5", "pt1", "apa")?;
    let mut tool = std::net::TcpStream::connect(conn.forward("plc")?)?;
    tool.set_read_timeout(Some(T))?;
    echo(&mut tool, b"before")?;

    let mut a = Client::new(&w)?;
    let code = w.next_code("apa")?;
    ensure!(a.login("apa", &default_password("apa"), &code)?.status == 303, "apa login");
    let dash = poll("the tunnel on apa's dashboard", T, Duration::from_millis(200), || {
        let d = a.get("/")?;
        Ok(d.body.contains(r#"data-session="s5" data-target="plc""#).then_some(d))
    })?;
    let marker = r#"data-connection=""#;
    let at = dash.body.find(marker).context("no connection id")? + marker.len();
    let id: String = dash.body[at..].chars().take_while(char::is_ascii_digit).collect();
    ensure!(dash.body.contains(&format!("/connections/{id}/cut")), "apa may not cut");

    let mut b = Client::new(&w)?;
    let code = w.next_code("apb")?;
    ensure!(b.login("apb", &default_password("apb"), &code)?.status == 303, "apb login");
    let other = b.get("/")?;
    ensure!(!other.body.contains("data-connection="), "apb sees plant's connection");
    let bt = hidden_csrf(&other.body)?;
    let r = b.post(&format!("/connections/{id}/cut"), &[("csrf", &bt)], &[])?;
    ensure!(r.status == 404, "apb cuts plant's tunnel (not theirs to see: gone): {}", r.summary());
    echo(&mut tool, b"still open")?;
    // Without the form token, even the operator's approver is refused.
    let r = a.post(&format!("/connections/{id}/cut"), &[], &[])?;
    ensure!(r.status == 403, "a cut without the form token: {}", r.summary());
    echo(&mut tool, b"still open")?;

    let at = hidden_csrf(&dash.body)?;
    let r = a.post(&format!("/connections/{id}/cut"), &[("csrf", &at)], &[])?;
    ensure!(r.status == 303, "apa cuts: {}", r.summary());
    let mut buf = [0u8; 8];
    match std::io::Read::read(&mut tool, &mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => bail!("the cut tunnel still carried {n} bytes"),
    }
    let events = w.audit("admin")?;
    ensure!(has_event(&events, "tunnel.cut", &["apa", "s5"]), "no cut by apa on record");
    ensure!(
        has_event(&events, "access.refused", &["apb", "tunnel.cut"]),
        "apb's try not on record"
    );
    Ok(())
}

/// `fernwart url-handler register` on Linux: a desktop entry that runs this fernwart's
/// `open-url` in a terminal, made the default for `x-scheme-handler/fernwart` by `xdg-mime`
/// (here a stand-in that notes how it was called).
#[cfg(all(unix, not(target_os = "macos")))]
#[test]
fn the_url_handler_is_registered_for_the_desktop() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new()?;
    let data = w.root.join("xdg-data");
    let bin = w.root.join("fake-bin");
    std::fs::create_dir_all(&bin)?;
    let fake = bin.join("xdg-mime");
    std::fs::write(&fake, "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$XDG_DATA_HOME/xdg-mime.args\"\n")?;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = w
        .cli("tech1")
        .args(["--json", "url-handler", "register"])
        .env("XDG_DATA_HOME", &data)
        .env("PATH", path)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "register: {}", String::from_utf8_lossy(&out.stderr));
    let js: serde_json::Value = serde_json::from_str(stdout.trim())?;
    ensure!(js["scheme"] == "fernwart", "{js}");
    let entry = std::fs::read_to_string(data.join("applications/fernwart-url-handler.desktop"))?;
    let exe = w.bins.cli.canonicalize()?;
    ensure!(
        entry.contains(&format!("Exec=\"{}\" open-url %u", exe.display())),
        "the desktop entry: {entry}"
    );
    ensure!(entry.contains("MimeType=x-scheme-handler/fernwart;"), "{entry}");
    let args = std::fs::read_to_string(data.join("xdg-mime.args"))?;
    ensure!(
        args.lines().collect::<Vec<_>>()
            == ["default", "fernwart-url-handler.desktop", "x-scheme-handler/fernwart"],
        "xdg-mime called with {args:?}"
    );
    Ok(())
}

/// A page that refreshes itself on live updates (the script's requests carry
/// `X-Fernwart-Live`) is checked like any request but does not keep its login from going idle.
#[test]
fn live_refreshes_do_not_keep_a_login_alive() -> Result<()> {
    let mut w = World::boot()?;
    w.add_user("op1", "approver")?;
    w.login("op1")?;
    let mut c = Client::new(&w)?;
    let code = w.next_code("op1")?;
    ensure!(c.login("op1", &default_password("op1"), &code)?.status == 303, "op1 login");
    let token = c.jar.get("__Host-fernwart").context("no login cookie")?.clone();
    let hash: String =
        sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let db = rusqlite::Connection::open(w.srv_dir.join("fernwart.db"))?;
    db.busy_timeout(Duration::from_secs(10))?;
    let last_used = |db: &rusqlite::Connection| -> Result<i64> {
        Ok(db.query_row(
            "SELECT COALESCE(last_used_at, created_at) FROM auth_tokens WHERE token_hash = ?1",
            [&hash],
            |r| r.get(0),
        )?)
    };
    let back = |db: &rusqlite::Connection, secs: i64| -> Result<()> {
        let n = db.execute(
            "UPDATE auth_tokens SET created_at = created_at - ?2, \
             last_used_at = COALESCE(last_used_at, created_at) - ?2 WHERE token_hash = ?1",
            rusqlite::params![&hash, secs],
        )?;
        ensure!(n == 1, "op1's login not found");
        Ok(())
    };
    // Half an hour unused: a live refresh is answered, but the login is not used by it.
    back(&db, 1800)?;
    let before = last_used(&db)?;
    let r = c.send("GET", "/", None, &[("X-Fernwart-Live", "1")])?;
    ensure!(r.status == 200, "a live refresh: {}", r.summary());
    ensure!(last_used(&db)? == before, "a live refresh counted as use");
    // A page the person opens counts.
    let r = c.get("/")?;
    ensure!(r.status == 200, "a page: {}", r.summary());
    ensure!(last_used(&db)? > before, "opening a page did not count as use");
    // Two hours unused: the live refresh ends the login like any request.
    back(&db, 7200)?;
    let r = c.send("GET", "/", None, &[("X-Fernwart-Live", "1")])?;
    ensure!(r.status == 303 && location(&r) == "/login?ended=1", "idle: {}", r.summary());
    Ok(())
}

#[test]
fn console_logins_count_toward_the_same_lockout() -> Result<()> {
    let opts = fernwart_e2e::Options {
        server_env: vec![("FERNWART_AUTH_LOCKOUT_THRESHOLD".into(), "3".into())],
        ..Default::default()
    };
    let mut w = World::boot_with(opts)?;
    w.add_user("op1", "approver")?;
    w.login("op1")?;
    let pw = default_password("op1");
    let mut c = Client::new(&w)?;
    for i in 0..3 {
        let r = c.login("op1", "Wrong-Passw0rd!x", "123456")?;
        ensure!(r.status == 401, "failure {i}: {}", r.summary());
    }
    // Locked: the right password and code get the same answer as a wrong one.
    let code = w.next_code("op1")?;
    let r = c.login("op1", &pw, &code)?;
    ensure!(r.status == 401, "a locked account logged in: {}", r.summary());
    ensure!(r.body.contains("Invalid user name, password or code."), "locked says more than wrong");
    ensure!(!c.jar.contains_key("__Host-fernwart"), "a locked account got a login cookie");
    let events = w.audit("admin")?;
    ensure!(has_event(&events, "auth.lockout", &["op1"]), "no lockout on record");
    ensure!(
        has_event(&events, "auth.login_refused", &["op1"]),
        "the locked attempt is not on record"
    );

    // An account without a second factor gets a login that may only set one up.
    w.add_user("newbie", "approver")?;
    let mut n = Client::new(&w)?;
    let r = n.login("newbie", &default_password("newbie"), "")?;
    ensure!(
        r.status == 303 && location(&r) == "/account/mfa",
        "a login without a second factor: {}",
        r.summary()
    );
    let page = n.get("/account/mfa")?;
    ensure!(page.status == 200 && page.body.contains("/account/mfa/enroll"), "{}", page.summary());
    ensure!(!page.body.contains(r#"href="/sessions""#), "a setup-only login is shown the pages");
    let r = n.get("/sessions")?;
    ensure!(
        r.status == 303 && location(&r) == "/login?ended=1",
        "setup-only on /sessions: {}",
        r.summary()
    );
    Ok(())
}
