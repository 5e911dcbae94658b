//! Regression tests for attacks on the running server: races on the login and session state,
//! floods before authentication, slow and oversized requests, revocation, links that outlive
//! their login, and smaller hardening gaps. Each drives the real binaries on loopback and
//! asserts the fixed behaviour; the raw requests go through `fernwart_e2e::https`.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read},
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::PermissionsExt,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Barrier,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use fernwart_e2e::{
    audit_actions, default_password,
    https::{cli_token, login_body, tcp_from, Https, Outcome, Reply},
    open_tunnel, poll,
    process::{clip, run},
    rfc3339, roundtrip, totp, tunnel_refuses, wait_closed, Echo, Options, Proc, World,
};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);
/// A source address of its own for the misbehaving client (all of 127/8 is loopback).
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const WRONG_PASSWORD: &str = "Wrong-Passw0rd!2026";

// ---------------------------------------------------------------- 1, 2: login races

#[test]
fn parallel_wrong_passwords_lock_the_account() -> Result<()> {
    let mut w = World::boot_with(options(&[("FERNWART_AUTH_LOCKOUT_THRESHOLD", "5")]))?;
    w.add_user("tech1", "technician")?;
    let mut otp = Totp::enrol(&mut w, "tech1")?;
    let api = client(&w)?;

    let flood = (0..40).map(|i| login_req("tech1", &format!("{WRONG_PASSWORD}-{i}"), None));
    let answers = fire_together(&api, flood.collect());
    eprintln!("40 parallel wrong passwords for tech1: {}", tally(&answers));
    ensure!(
        !answers.iter().any(|a| a.as_ref().is_ok_and(Reply::ok)),
        "a wrong password logged in: {}",
        tally(&answers)
    );

    // The right password and a fresh, valid code. A rate limit may refuse at first; the
    // verdict that matters is "locked", and never a login.
    let password = w.password("tech1");
    let code = otp.code()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = loop {
        let r = api.login("tech1", &password, Some(&code))?;
        ensure!(
            !r.ok(),
            "lockout bypassed: after 40 parallel wrong passwords (threshold 5) the right \
             password and code still logged tech1 in ({})",
            r.summary()
        );
        if r.error().to_ascii_lowercase().contains("lock") || Instant::now() >= deadline {
            break r;
        }
        thread::sleep(Duration::from_millis(500));
    };
    eprintln!("right credentials after the flood: {}", last.summary());
    let events = w.audit("admin")?;
    ensure!(
        events.iter().any(|e| field(e, "action").contains("lock") && field(e, "target") == "tech1"),
        "no lockout of tech1 in the audit trail after 40 wrong passwords (threshold 5); \
         last answer {}; actions: {}",
        last.summary(),
        audit_actions(&events)
    );
    Ok(())
}

#[test]
fn one_totp_code_logs_in_once_under_parallel_use() -> Result<()> {
    // Threshold 20: the 19 refused replays must not lock the account during the test.
    let mut w = World::boot_with(options(&[("FERNWART_AUTH_LOCKOUT_THRESHOLD", "20")]))?;
    w.add_user("tech1", "technician")?;
    let mut otp = Totp::enrol(&mut w, "tech1")?;
    let api = client(&w)?;
    let password = w.password("tech1");
    let code = otp.code()?;

    let same = (0..20).map(|_| login_req("tech1", &password, Some(&code)));
    let answers = fire_together(&api, same.collect());
    let logins = answers.iter().filter(|a| a.as_ref().is_ok_and(Reply::ok)).count();
    eprintln!("20 parallel logins with one TOTP code: {}", tally(&answers));
    ensure!(
        logins == 1,
        "one TOTP code gave {logins} logins (exactly one expected): {}",
        tally(&answers)
    );
    Ok(())
}

// ---------------------------------------------------------------- 3: before authentication

#[test]
fn a_login_flood_for_unknown_users_stays_bounded() -> Result<()> {
    let mut w = World::boot()?;
    // A user without a second factor: a password login for it is legit and cheap to repeat.
    w.add_user("probe", "technician")?;
    let api = client(&w)?;
    let pid = w.server().map(|p| p.pid()).context("the server does not run")?;
    let before = peak_rss_kib(pid)?;

    let flood = (0..300).map(|i| login_req(&format!("ghost-{i:03}"), "Ghost-Passw0rd!2026", None));
    let started = Instant::now();
    let answers = fire_together(&api, flood.collect());
    let peak = peak_rss_kib(pid)?;
    eprintln!(
        "300 parallel logins for unknown users in {:?}: {}; server peak RSS (VmHWM) {} MiB \
         (before the flood {} MiB)",
        started.elapsed(),
        tally(&answers),
        peak / 1024,
        before / 1024
    );
    server_alive(&mut w)?;
    ensure!(
        !answers.iter().any(|a| a.as_ref().is_ok_and(Reply::ok)),
        "an unknown user logged in: {}",
        tally(&answers)
    );
    ensure!(
        peak < 512 * 1024,
        "300 logins for unknown users drove the server's peak RSS to {} MiB (limit 512 MiB)",
        peak / 1024
    );

    let pw = format!("{}\n", w.password("probe"));
    let t0 = Instant::now();
    poll(
        "a legit login after the flood",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let out =
                w.fw_raw("probe", &["login", "--user", "probe", "--password-stdin"], Some(&pw))?;
            Ok(out.success().then_some(()))
        },
    )?;
    eprintln!("a legit login worked again {:?} after the flood", t0.elapsed());
    server_alive(&mut w)?;
    Ok(())
}

/// The same flood from 300 addresses, one login each: no per-source or per-name allowance
/// stops it, only the bound on concurrent password hashes (and on requests waiting for one).
#[test]
fn a_login_flood_from_many_addresses_stays_bounded() -> Result<()> {
    let mut w = World::boot()?;
    let api = client(&w)?;
    let pid = w.server().map(|p| p.pid()).context("the server does not run")?;
    let before = peak_rss_kib(pid)?;
    let barrier = Arc::new(Barrier::new(300));
    let started = Instant::now();
    let handles: Vec<_> = (0..300u16)
        .map(|i| {
            let (api, barrier) = (api.clone(), barrier.clone());
            let [hi, lo] = (256 + i).to_be_bytes();
            let source = std::net::IpAddr::from([127, 1, hi, lo]);
            thread::spawn(move || {
                let conn = api.connect_from(source);
                barrier.wait();
                let body = login_req(&format!("ghost-{i:03}"), "Ghost-Passw0rd!2026", None);
                conn?.request(body.method, &body.path, None, body.body.as_ref())
            })
        })
        .collect();
    let answers: Vec<Result<Reply>> = handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a client thread panicked"))))
        .collect();
    let peak = peak_rss_kib(pid)?;
    eprintln!(
        "300 logins for unknown users from 300 addresses in {:?}: {}; server peak RSS (VmHWM) \
         {} MiB (before the flood {} MiB)",
        started.elapsed(),
        tally(&answers),
        peak / 1024,
        before / 1024
    );
    server_alive(&mut w)?;
    ensure!(!answers.iter().any(|a| a.as_ref().is_ok_and(Reply::ok)), "an unknown user logged in");
    ensure!(
        peak < 512 * 1024,
        "300 logins from 300 addresses drove the server's peak RSS to {} MiB (limit 512 MiB)",
        peak / 1024
    );
    Ok(())
}

#[test]
fn malformed_user_names_are_refused_and_not_audited() -> Result<()> {
    let w = World::boot()?;
    let api = client(&w)?;
    let names: Vec<String> = vec![
        String::new(),
        "a".repeat(200),
        "evil user".into(),
        "evil\u{1b}[31mred\u{7}".into(),
        "evil\nauth.login admin ok".into(),
        "nul\u{0}byte".into(),
        "b".repeat(10 * 1024),
    ];
    let mut wrong = Vec::new();
    for name in &names {
        let r = api.login(name, WRONG_PASSWORD, None)?;
        eprintln!("login as {}: {}", show(name), r.summary());
        if r.status != 400 {
            wrong.push(format!("{} got {}", show(name), r.summary()));
        }
    }

    let events = w.audit("admin")?;
    let mut leaked = Vec::new();
    for name in &names {
        let hit = events.iter().find(|e| {
            if name.is_empty() {
                field(e, "action").contains("login")
                    && (field(e, "target").is_empty() || field(e, "actor").is_empty())
            } else {
                let mut all = Vec::new();
                strings(e, &mut all);
                all.iter().any(|s| s.contains(name.as_str()))
            }
        });
        if let Some(e) = hit {
            leaked.push(format!("{} in {}", show(name), clip(&e.to_string())));
        }
    }
    ensure!(
        wrong.is_empty() && leaked.is_empty(),
        "malformed user names: not refused with HTTP 400: [{}]; in the audit trail: [{}]",
        wrong.join("; "),
        leaked.join("; ")
    );
    Ok(())
}

// ---------------------------------------------------------------- 4: slow clients

#[test]
fn a_slow_request_body_is_cut_off() -> Result<()> {
    let w = World::boot_with(options(&[("FERNWART_SERVER_REQUEST_TIMEOUT", "2s")]))?;
    let api = client(&w)?;
    let mut conn = api.connect_from(ATTACKER)?;
    conn.send(
        b"POST /v1/login HTTP/1.1\r\nHost: fernwart\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{",
    )
    .context("sending the request head")?;
    let t0 = Instant::now();
    let give_up = Duration::from_secs(10);
    let (how, after) = loop {
        if t0.elapsed() >= give_up {
            bail!(
                "a request body trickling one byte per 500 ms was still open after {give_up:?} \
                 (request timeout 2 s)"
            );
        }
        if conn.send(b" ").is_err() {
            break ("closed (write failed)".to_owned(), t0.elapsed());
        }
        match conn.wait(Duration::from_millis(500))? {
            Outcome::Open => {}
            Outcome::Closed => break ("closed".to_owned(), t0.elapsed()),
            Outcome::Answered(r) => {
                ensure!(
                    r.status >= 400,
                    "an incomplete body got {} instead of 408 or a close",
                    r.summary()
                );
                break (r.summary(), t0.elapsed());
            }
        }
    };
    eprintln!("slow body from {ATTACKER}: {how} after {after:?}");
    ensure!(after <= Duration::from_secs(5), "the slow body was cut only after {after:?}");
    w.fw("admin", &["machine", "list"]).context("the server after the slow body")?;
    Ok(())
}

#[test]
fn slow_connections_from_one_source_are_capped() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::boot_with(options(&[
        ("FERNWART_SERVER_MAX_CONNECTIONS", "16"),
        ("FERNWART_SERVER_MAX_CONNECTIONS_PER_SOURCE", "8"),
    ]))?;
    let hog = Hog::start(&client(&w)?, ATTACKER, 10, 10);
    hog.wait_opened(20)?;
    others_get_in(&mut w, &echo, &hog)
}

/// The same attack on default settings (64 per source): 100 idle connections from one address
/// must not fill a table of 80.
#[test]
fn one_source_cannot_fill_the_connection_table() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::boot_with(options(&[("FERNWART_SERVER_MAX_CONNECTIONS", "80")]))?;
    let hog = Hog::start(&client(&w)?, ATTACKER, 100, 0);
    hog.wait_opened(100)?;
    others_get_in(&mut w, &echo, &hog)
}

/// While `hog` holds its connections: a CLI call from 127.0.0.1 works and an agent comes online.
fn others_get_in(w: &mut World, echo: &Echo, hog: &Hog) -> Result<()> {
    let t0 = Instant::now();
    w.fw("admin", &["machine", "list"]).with_context(|| {
        format!("a CLI call from 127.0.0.1 while {ATTACKER} holds {} connections", hog.held())
    })?;
    w.start_agent("m1", &[("echo", echo.addr)]).with_context(|| {
        format!("an agent enrolling while {ATTACKER} holds {} connections", hog.held())
    })?;
    eprintln!(
        "CLI and agent got in within {:?} while {ATTACKER} held {} connections ({} opened)",
        t0.elapsed(),
        hog.held(),
        hog.opened()
    );
    server_alive(w)
}

// ---------------------------------------------------------------- 5: revocation

#[test]
fn a_revoked_machine_stays_revoked() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::boot()?;
    let mut problems = Vec::new();

    // Revoked before its token was used.
    let token = w.add_machine("m9")?;
    w.fw("admin", &["machine", "revoke", "m9"])?;
    let dir = w.write_agent_toml("m9", &[("echo", echo.addr)])?;
    let out = w.enroll_raw(&dir, &token, &w.ca.clone())?;
    if out.success() {
        problems.push("the unused token of revoked machine m9 still enrolled it".to_owned());
    } else {
        eprintln!("enrol after revoke: {}", out.stderr.trim());
    }
    if !revoked(&w, "m9")? {
        problems.push(format!("machine m9 is no longer revoked: {:?}", w.machine("m9")?));
    }

    // Enrolled, then revoked: its link ends and it cannot come back.
    let token = w.add_machine("m8")?;
    let dir = w.write_agent_toml("m8", &[("echo", echo.addr)])?;
    w.enroll_raw(&dir, &token, &w.ca.clone())?.check()?;
    w.run_agent("m8")?;
    w.wait_machine("m8", true, T)?;
    w.fw("admin", &["machine", "revoke", "m8"])?;
    w.wait_machine("m8", false, T).context("the revoked agent's link")?;
    let again = w.root.join("agent-m8-again");
    std::fs::create_dir_all(&again)?;
    std::fs::copy(dir.join("agent.toml"), again.join("agent.toml"))?;
    if w.enroll_raw(&again, &token, &w.ca.clone())?.success() {
        problems.push("revoked machine m8 enrolled again with its token".to_owned());
    }
    if !revoked(&w, "m8")? {
        problems.push(format!("machine m8 is no longer revoked: {:?}", w.machine("m8")?));
    }
    if w.machine("m8")?.and_then(|m| m.get("online").and_then(Value::as_bool)) == Some(true) {
        problems.push("revoked machine m8 is online again".to_owned());
    }
    ensure!(problems.is_empty(), "revocation undone: {}", problems.join("; "));
    Ok(())
}

fn revoked(w: &World, name: &str) -> Result<bool> {
    let m = w.machine(name)?.with_context(|| format!("machine {name} is not listed"))?;
    Ok(m.get("revoked").and_then(Value::as_bool) == Some(true))
}

// ---------------------------------------------------------------- 6: links outlive logins

#[test]
fn links_end_when_the_login_expires() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::boot_with(Options {
        server_env: vec![("FERNWART_SESSIONS_ALLOW_NO_APPROVAL".into(), "true".into())],
        ..Options::default()
    })?;
    w.start_agent("m1", &[("echo", echo.addr)])?;
    w.switch("m1", true)?;
    w.add_user("tech1", "technician")?;
    w.create_session_raw("s1", "m1", &["echo"], &["tech1"], &["--no-approval"])?.check()?;

    // Short logins from now on; the admin's login, issued before, keeps its lifetime.
    let ttl = Duration::from_secs(10);
    w.stop_server()?;
    w.opts.server_env.push(("FERNWART_AUTH_TOKEN_TTL".into(), "10s".into()));
    w.start_server()?;
    w.wait_machine("m1", true, Duration::from_secs(30))?;
    w.wait_switch("m1", true, T)?;

    w.login("tech1")?;
    let expiry = Instant::now() + ttl;
    let mut conn = w.spawn_connect("s1", "tech1")?;
    conn.wait_forwards(T)?;
    let fwd = conn.forward("echo")?;
    roundtrip(fwd, b"before the login expires", T)?;
    ensure!(Instant::now() < expiry, "the set-up took longer than the 10 s login; retry");
    eprintln!("link up {:?} before the login expires", expiry - Instant::now());
    let mut open = open_tunnel(fwd)?;

    let cut = wait_cut(&mut conn, fwd, expiry)?;
    let open_closed = wait_closed(&mut open, Duration::from_millis(500)).is_some();
    eprintln!("login expiry: {cut} (open tunnel closed: {open_closed})");
    Ok(())
}

#[test]
fn links_end_when_the_account_expires() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::boot_with(Options {
        server_env: vec![("FERNWART_SESSIONS_ALLOW_NO_APPROVAL".into(), "true".into())],
        ..Options::default()
    })?;
    w.start_agent("m1", &[("echo", echo.addr)])?;
    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;

    let ahead = 12;
    let expires = totp::unix_now() + ahead;
    let stdin = format!("{}\n", default_password("tech9"));
    let when = rfc3339(expires as i64);
    let args =
        ["user", "add", "tech9", "--role", "technician", "--expires", &when, "--password-stdin"];
    w.fw_in("admin", &args, &stdin)?;
    let until = SystemTime::UNIX_EPOCH + Duration::from_secs(expires);
    let expiry = Instant::now() + until.duration_since(SystemTime::now()).unwrap_or_default();
    w.login("tech9")?;
    w.create_session_raw("s1", "m1", &["echo"], &["tech9"], &["--no-approval"])?.check()?;
    let mut conn = w.spawn_connect("s1", "tech9")?;
    conn.wait_forwards(T)?;
    let fwd = conn.forward("echo")?;
    roundtrip(fwd, b"before the account expires", T)?;
    ensure!(Instant::now() < expiry, "the set-up took longer than the {ahead} s account; retry");
    eprintln!("link up {:?} before the account expires", expiry - Instant::now());

    let cut = wait_cut(&mut conn, fwd, expiry)?;
    eprintln!("account expiry ({when}): {cut}");
    Ok(())
}

/// Waits until `connect` exits or its forward refuses new connections; fails when that has
/// not happened 4 s after `expiry` (the promise is 1 s; the rest is polling slack).
fn wait_cut(
    conn: &mut fernwart_e2e::Connect,
    fwd: std::net::SocketAddr,
    expiry: Instant,
) -> Result<String> {
    let deadline = expiry + Duration::from_secs(4);
    loop {
        if !conn.proc.running() {
            return Ok(format!("connect exited {}", relative(expiry)));
        }
        if tunnel_refuses(fwd, Duration::from_millis(800)) {
            return Ok(format!("the forward refused a new connection {}", relative(expiry)));
        }
        if Instant::now() >= deadline {
            bail!(
                "the technician link outlived the expiry by 4 s: connect still runs and its \
                 forward still carries new connections; connect log: {}",
                conn.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn relative(expiry: Instant) -> String {
    let now = Instant::now();
    if now >= expiry {
        format!("{:?} after the expiry", now - expiry)
    } else {
        format!("{:?} before the expiry", expiry - now)
    }
}

// ---------------------------------------------------------------- 7: transitions race

#[test]
fn end_wins_over_a_concurrent_approve() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::standard()?;
    w.start_agent("m1", &[("echo", echo.addr)])?;
    let api = client(&w)?;
    let admin = cli_token(&w.root, "admin")?;
    let op1 = cli_token(&w.root, "op1")?;
    let names: Vec<String> = (0..30).map(|i| format!("race{i:02}")).collect();
    for name in &names {
        let body = json!({
            "name": name, "machine": "m1", "targets": ["echo"], "users": ["tech1"],
            "duration_secs": 3600, "reason": "TICKET-7 approve/end race",
        });
        let r = api.request("POST", "/v1/sessions", Some(&admin), Some(&body))?;
        ensure!(r.ok(), "creating session {name}: {}", r.summary());
    }

    // One pair at a time, so that the server's workers take up both requests of a session
    // together rather than a queue of sixty in some order.
    let mut approves = Vec::new();
    let mut ends = Vec::new();
    for name in &names {
        let pair = vec![
            Req::post(&format!("/v1/sessions/{name}/approve"), &op1, None),
            Req::post(&format!("/v1/sessions/{name}/end"), &admin, None),
        ];
        let mut answers = fire_together(&api, pair).into_iter();
        approves.push(answers.next().unwrap_or_else(|| Err(anyhow!("no approve answer"))));
        ends.push(answers.next().unwrap_or_else(|| Err(anyhow!("no end answer"))));
    }
    eprintln!("approve: {}; end: {}", tally(&approves), tally(&ends));

    let mut wrong = Vec::new();
    let mut ended = 0;
    for (name, end) in names.iter().zip(&ends) {
        if !end.as_ref().is_ok_and(Reply::ok) {
            continue;
        }
        ended += 1;
        let r = api.request("GET", &format!("/v1/sessions/{name}"), Some(&admin), None)?;
        let state = r.json()?.get("state").and_then(Value::as_str).unwrap_or_default().to_owned();
        if state != "ended" {
            wrong.push(format!("{name}: {state}"));
        }
    }
    ensure!(ended > 0, "no `end` succeeded: {}", tally(&ends));
    ensure!(
        wrong.is_empty(),
        "{} of {ended} sessions whose `end` returned 2xx are not ended: {}",
        wrong.len(),
        wrong.join(", ")
    );
    Ok(())
}

// ---------------------------------------------------------------- 8: smaller gaps

#[test]
fn user_names_differing_only_in_case_are_refused() -> Result<()> {
    let mut w = World::boot()?;
    w.add_user("tech1", "technician")?;
    let stdin = format!("{}\n", default_password("Tech1"));
    let out = w.fw_raw(
        "admin",
        &["user", "add", "Tech1", "--role", "technician", "--password-stdin"],
        Some(&stdin),
    )?;
    let users = w.fw(&w.admin, &["user", "list", "--json"])?.json_list();
    let names: Vec<&str> = users.iter().filter_map(|u| u.get("name")?.as_str()).collect();
    ensure!(
        !out.success() && !names.contains(&"Tech1"),
        "`user add Tech1` next to tech1 succeeded (exit {:?}); users: {names:?}",
        out.code
    );
    eprintln!("Tech1 refused: {}", out.stderr.trim());
    Ok(())
}

#[test]
fn the_database_is_private_to_the_server() -> Result<()> {
    let mut w = World::boot()?;
    w.add_user("tech1", "technician")?;
    let mut seen = Vec::new();
    let mut open = Vec::new();
    for file in ["fernwart.db", "fernwart.db-wal", "fernwart.db-shm"] {
        let path = w.srv_dir.join(file);
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        let mode = meta.permissions().mode() & 0o777;
        seen.push(format!("{file} {mode:o}"));
        if mode & 0o077 != 0 {
            open.push(format!("{file} has mode {mode:o}"));
        }
    }
    eprintln!("database files: {}", seen.join(", "));
    ensure!(seen.iter().any(|s| s.starts_with("fernwart.db ")), "no srv/fernwart.db");
    ensure!(open.is_empty(), "the database is readable beyond its owner: {}", open.join(", "));
    server_alive(&mut w)
}

#[test]
fn a_request_with_100_kb_of_headers_is_refused() -> Result<()> {
    let w = World::boot()?;
    let api = client(&w)?;
    let mut req = b"GET /v1/health HTTP/1.1\r\nHost: fernwart\r\n".to_vec();
    for i in 0..50 {
        req.extend_from_slice(format!("X-Pad-{i:02}: {}\r\n", "a".repeat(2000)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    // Whether a server with a loose limit notices depends on how the bytes arrive: try a few.
    for attempt in 1..=5 {
        let mut conn = api.connect()?;
        // The server may close while we still write: that is a refusal too.
        let _ = conn.send(&req);
        let verdict = match conn.wait(Duration::from_secs(15))? {
            Outcome::Answered(r) if (400..500).contains(&r.status) => r.summary(),
            Outcome::Answered(r) => {
                bail!("100 KB of headers were accepted (attempt {attempt}): {}", r.summary())
            }
            Outcome::Closed => "closed".to_owned(),
            Outcome::Open => bail!("100 KB of headers: no answer and no close within 15 s"),
        };
        eprintln!("100 KB of headers, attempt {attempt}: {verdict}");
    }
    w.fw("admin", &["machine", "list"]).context("the server after 100 KB of headers")?;
    Ok(())
}

#[test]
fn an_unusable_audit_setting_stops_the_server() -> Result<()> {
    let mut w = World::boot()?;
    w.stop_server()?;
    let srv = w.srv_dir.to_str().context("utf-8 path")?.to_owned();
    // Each refused at start with a message naming the setting and the variable.
    for (env, names) in [
        (vec![("FERNWART_AUDIT_SYSLOG", "udp://127.0.0.1:514")], "audit.syslog"),
        (vec![("FERNWART_AUDIT_SYSLOG", "tcp://")], "audit.syslog"),
        (
            vec![
                ("FERNWART_AUDIT_SYSLOG", "tls://127.0.0.1:6514"),
                ("FERNWART_AUDIT_SYSLOG_CA", "no-such-ca.pem"),
            ],
            "audit.syslog_ca",
        ),
        (vec![("FERNWART_AUDIT_JSONL", "no/such/dir/audit.jsonl")], "audit.jsonl"),
    ] {
        let mut cmd = w.server_cmd(&["run", "--data", &srv]);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let log = w.log_path("server-audit-setting");
        let mut proc = Proc::spawn(cmd, "fernwart-server run (audit setting)", &log, false)?;
        let status = proc.wait_exit(T);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        match status {
            None => {
                bail!("`fernwart-server run` with {env:?} still runs after {T:?}: {}", clip(&text))
            }
            Some(s) if s.success() => {
                bail!("`fernwart-server run` with {env:?} exited 0: {}", clip(&text))
            }
            Some(_) => {
                let var = env.last().map_or("", |(k, _)| *k);
                ensure!(
                    text.contains(&format!("{names} = ")) && text.contains(var),
                    "`fernwart-server run` with {env:?} failed without naming {names} ({var}): {}",
                    clip(&text)
                );
            }
        }
        eprintln!("{env:?} refused: {}", text.trim());
    }
    // A usable receiver that is not there (yet) does not stop the server: the records wait.
    w.opts.server_env = vec![("FERNWART_AUDIT_SYSLOG".into(), "tcp://127.0.0.1:1".into())];
    w.start_server()?;
    w.fw("admin", &["machine", "list"]).context("the server with an absent syslog receiver")?;
    ensure!(w.server().is_some_and(|p| p.running()), "the server stopped");
    Ok(())
}

#[test]
fn audit_verify_does_not_pass_an_unverified_or_tampered_trail() -> Result<()> {
    let mut w = World::boot()?;
    w.add_user("tech1", "technician")?;
    w.stop_server()?;
    let srv = w.srv_dir.to_str().context("utf-8 path")?.to_owned();
    let verify = || run(w.server_cmd(&["audit", "verify", "--data", &srv]), None, T);

    let out = verify()?;
    let said = format!("{} {}", out.stdout, out.stderr).to_ascii_lowercase();
    ensure!(
        !out.success() || !said.contains("not implemented"),
        "`fernwart-server audit verify` exits 0 although it verifies nothing: {}",
        clip(&said)
    );

    let db = rusqlite::Connection::open(w.srv_dir.join("fernwart.db"))?;
    let changed = db.execute(
        "UPDATE audit SET details = '{\"tampered\":true}' WHERE id = (SELECT MIN(id) FROM audit)",
        [],
    )?;
    drop(db);
    ensure!(changed == 1, "could not tamper with the audit table ({changed} rows)");
    let out = verify()?;
    ensure!(
        !out.success(),
        "`fernwart-server audit verify` passed a tampered trail: {}",
        clip(&out.stdout)
    );
    eprintln!("verify of a tampered trail: {}", clip(&format!("{}{}", out.stdout, out.stderr)));
    Ok(())
}

#[test]
fn the_agent_audits_grants_from_the_welcome() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::boot()?;
    w.add_user("tech1", "technician")?;
    w.add_user("op1", "approver")?;
    w.login("op1")?;
    w.start_agent("m1", &[("echo", echo.addr)])?;
    w.stop_agent("m1");
    w.wait_machine("m1", false, T)?;

    // Approved while the agent is away: the grant arrives with the next welcome.
    let session = "welcome-s7";
    w.create_session(session, "m1", &["echo"], &["tech1"])?;
    w.fw("op1", &["session", "approve", session])?;
    w.run_agent("m1")?;
    w.wait_machine("m1", true, T)?;

    let dir = w.agent_dir("m1");
    let found = poll(
        "the agent's audit trail to record the welcome's grant",
        T,
        Duration::from_millis(100),
        || {
            // The agent's trail: DIR/audit/*.jsonl (DIR/audit.jsonl before the hash chain).
            let mut files = vec![dir.join("audit.jsonl")];
            if let Ok(entries) = std::fs::read_dir(dir.join("audit")) {
                for entry in entries {
                    files.push(entry?.path());
                }
            }
            for path in files {
                if path.is_file() {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    if text.contains(session) {
                        return Ok(Some(path));
                    }
                }
            }
            Ok(None)
        },
    );
    let path = found.with_context(|| {
        let text =
            std::fs::read_to_string(dir.join("audit").join("current.jsonl")).unwrap_or_default();
        format!("agent audit/current.jsonl: {}", clip(&text))
    })?;
    eprintln!("the welcome's grant is in {}", path.display());
    Ok(())
}

// ---------------------------------------------------------------- helpers

fn options(env: &[(&str, &str)]) -> Options {
    Options {
        server_env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..Options::default()
    }
}

fn client(w: &World) -> Result<Https> {
    Https::new(&w.ca, w.listen)
}

fn server_alive(w: &mut World) -> Result<()> {
    let Some(p) = w.server() else { bail!("no server") };
    if p.running() {
        Ok(())
    } else {
        bail!("the server died: {}", p.log_tail())
    }
}

/// A TOTP secret enrolled by hand (not through `World::login`), so that its first login code
/// is usable at once instead of after the next 30 s step.
struct Totp {
    secret: String,
    last: u64,
}

impl Totp {
    fn enrol(w: &mut World, who: &str) -> Result<Self> {
        let pw = format!("{}\n", w.password(who));
        w.fw_in(who, &["login", "--user", who, "--password-stdin"], &pw)
            .with_context(|| format!("first login of {who}"))?;
        let js = w.fw_json(who, &["mfa", "enroll"])?;
        let secret = js
            .get("secret")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("`mfa enroll --json` gave no secret: {js}"))?
            .to_owned();
        let step = totp::next_usable_step(None);
        w.fw(who, &["mfa", "confirm", &totp::code(&secret, step)?])
            .with_context(|| format!("mfa confirm of {who}"))?;
        Ok(Self { secret, last: step })
    }

    /// A code of a step the server has not seen.
    fn code(&mut self) -> Result<String> {
        self.last = totp::next_usable_step(Some(self.last));
        totp::code(&self.secret, self.last)
    }
}

/// One raw API request.
struct Req {
    method: &'static str,
    path: String,
    token: Option<String>,
    body: Option<Value>,
}

impl Req {
    fn post(path: &str, token: &str, body: Option<Value>) -> Self {
        Self { method: "POST", path: path.to_owned(), token: Some(token.to_owned()), body }
    }
}

fn login_req(user: &str, password: &str, otp: Option<&str>) -> Req {
    Req {
        method: "POST",
        path: "/v1/login".into(),
        token: None,
        body: Some(login_body(user, password, otp)),
    }
}

/// Sends `reqs` at once: every client connects (TLS done) first, then all send together.
/// Answers come back in the order of `reqs`.
fn fire_together(api: &Https, reqs: Vec<Req>) -> Vec<Result<Reply>> {
    let barrier = Arc::new(Barrier::new(reqs.len()));
    let handles: Vec<_> = reqs
        .into_iter()
        .map(|req| {
            let api = api.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let conn = api.connect();
                barrier.wait();
                conn?.request(req.method, &req.path, req.token.as_deref(), req.body.as_ref())
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a client thread panicked"))))
        .collect()
}

/// "HTTP 200 ×1, HTTP 401 ×19, no answer ×0" with one example message per kind.
fn tally(answers: &[Result<Reply>]) -> String {
    let mut kinds: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for a in answers {
        let (kind, example) = match a {
            Ok(r) => (format!("HTTP {}", r.status), r.error()),
            Err(e) => ("no answer".to_owned(), format!("{e:#}")),
        };
        let entry = kinds.entry(kind).or_insert((0, example));
        entry.0 += 1;
    }
    let parts: Vec<String> = kinds
        .iter()
        .map(|(k, (n, ex))| format!("{k} ×{n} ({})", ex.chars().take(100).collect::<String>()))
        .collect();
    parts.join(", ")
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow!("{path} has no VmHWM"))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("cannot read {line:?}"))
}

fn field<'a>(e: &'a Value, name: &str) -> &'a str {
    e.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// Every string inside `v`.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(map) => map.values().for_each(|i| strings(i, out)),
        _ => {}
    }
}

/// A user name for messages: escaped, long ones shortened.
fn show(name: &str) -> String {
    if name.len() > 40 {
        let head: String = name.chars().take(16).collect();
        format!("{head:?}… ({} bytes)", name.len())
    } else {
        format!("{name:?}")
    }
}

// ---------------------------------------------------------------- the connection hog

/// Threads that keep connections from `source` open: idle ones (TCP only, no ClientHello)
/// and slow ones (TLS, then a request head trickling one byte per 500 ms). A connection the
/// server closes is opened again, as an attacker would.
struct Hog {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Hog {
    fn start(api: &Https, source: IpAddr, idle: usize, slow: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let threads = (0..idle + slow)
            .map(|i| {
                let (api, stop, opened, held) =
                    (api.clone(), stop.clone(), opened.clone(), held.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let _ = hold_one(&api, source, i >= idle, &stop, &opened, &held);
                        // Pace the reconnects of refused connections.
                        thread::sleep(Duration::from_millis(100));
                    }
                })
            })
            .collect();
        Self { stop, opened, held, threads }
    }

    fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    /// Connections open right now, as the attacker sees them.
    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections were opened (the first round is in the server's queue).
    fn wait_opened(&self, n: usize) -> Result<()> {
        poll(&format!("{n} attacker connections"), T, Duration::from_millis(20), || {
            Ok((self.opened() >= n).then_some(()))
        })
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Opens one connection and keeps it until the server closes it or `stop` is set.
fn hold_one(
    api: &Https,
    source: IpAddr,
    slow: bool,
    stop: &AtomicBool,
    opened: &AtomicUsize,
    held: &AtomicUsize,
) -> Result<()> {
    let tcp = tcp_from(source, api.server(), T)?;
    opened.fetch_add(1, Ordering::SeqCst);
    held.fetch_add(1, Ordering::SeqCst);
    let _held = Held(held);
    if slow {
        let mut conn = api.tls(tcp)?;
        conn.send(b"POST /v1/login HTTP/1.1\r\nHost: fernwart\r\nX-Slow: ")?;
        while !stop.load(Ordering::SeqCst) {
            conn.send(b"s")?;
            if !matches!(conn.wait(Duration::from_millis(500))?, Outcome::Open) {
                return Ok(());
            }
        }
    } else {
        let mut tcp = tcp;
        tcp.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::SeqCst) {
            match tcp.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Ok(()),
            }
        }
    }
    Ok(())
}

/// Counts a connection as held while it lives.
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
