//! What must fail, fails: a non-zero exit with a one-line reason, or a closed tunnel.
//! Every test has a world of its own.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fernwart_e2e::{
    free_port, open_tunnel, poll, roundtrip, totp, tunnel_refuses, wait_closed, Connect, Echo,
    Options, World, LOCALHOST,
};

const T: Duration = Duration::from_secs(10);

/// A standard world with machine `m1` (targets `echo`, `other`), key switch on.
fn world_with_agent(echo: &Echo, other: &Echo) -> Result<World> {
    let mut w = World::standard()?;
    w.start_agent("m1", &[("echo", echo.addr), ("other", other.addr)])?;
    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;
    Ok(w)
}

/// Connects as `who`; approves as `op1` if the session asks for it; waits for the forwards.
fn connect_approving_if_asked(w: &mut World, session: &str, who: &str) -> Result<Connect> {
    let mut conn = w.spawn_connect(session, who)?;
    let mut approved = false;
    poll(
        "connect to open its forwards",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            if !approved && w.session_state(session)? == "requested" {
                w.fw("op1", &["session", "approve", session])?;
                approved = true;
            }
            match conn.wait_forwards(Duration::from_millis(200)) {
                Ok(_) => Ok(Some(())),
                Err(e) if conn.proc.running() => {
                    let _ = e;
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        },
    )?;
    Ok(conn)
}

#[test]
fn wrong_password_policy_and_missing_otp_fail() -> Result<()> {
    let mut w = World::boot()?;
    w.add_user("tech1", "technician")?;
    let admin_pw = format!("{}\n", w.password("admin"));

    let out = w.fw_raw(
        "intruder",
        &["login", "--user", "admin", "--password-stdin"],
        Some("Wrong-Passw0rd!2026\n"),
    )?;
    let why = out.reason().context("login with a wrong password")?;
    eprintln!("wrong password: {why}");

    // The admin has TOTP: a login without --otp must not succeed.
    let out = w.fw_raw(
        "admin-nootp",
        &["login", "--user", "admin", "--password-stdin"],
        Some(&admin_pw),
    )?;
    let why = out.reason().context("login of an MFA user without --otp")?;
    eprintln!("missing otp: {why}");

    // A wrong code fails; a code once used is not accepted again.
    let out = w.fw_raw(
        "admin-badotp",
        &["login", "--user", "admin", "--password-stdin", "--otp", "000000"],
        Some(&admin_pw),
    );
    let out = out?;
    if out.success() {
        bail!("login with the TOTP code 000000 succeeded (or 000000 happened to be right)");
    }
    let code = w.next_code("admin")?;
    let args = ["login", "--user", "admin", "--password-stdin", "--otp", code.as_str()];
    w.fw_raw("admin-replay1", &args, Some(&admin_pw))?.check().context("fresh TOTP login")?;
    let out = w.fw_raw("admin-replay2", &args, Some(&admin_pw))?;
    let why = out.reason().context("login replaying a used TOTP code")?;
    eprintln!("replayed code: {why}");

    for weak in ["Sh0rt!", "alllowercaseletters"] {
        let out = w.fw_raw(
            "admin",
            &["user", "add", "weakling", "--role", "technician", "--password-stdin"],
            Some(&format!("{weak}\n")),
        )?;
        let why = out.reason().with_context(|| format!("user add with password {weak:?}"))?;
        eprintln!("weak password {weak:?}: {why}");
    }
    // nothing was created: the weak user cannot log in with that password
    let out = w.fw_raw(
        "weakling",
        &["login", "--user", "weakling", "--password-stdin"],
        Some("alllowercaseletters\n"),
    )?;
    out.reason().context("login of a user refused by the password policy")?;
    Ok(())
}

#[test]
fn repeated_login_failures_lock_the_account() -> Result<()> {
    let opts = Options {
        server_env: vec![("FERNWART_AUTH_LOCKOUT_THRESHOLD".into(), "3".into())],
        ..Options::default()
    };
    let mut w = World::boot_with(opts)?;
    w.add_user("tech1", "technician")?;
    for i in 0..3 {
        let out = w.fw_raw(
            "tech1",
            &["login", "--user", "tech1", "--password-stdin"],
            Some("Wrong-Passw0rd!2026\n"),
        )?;
        out.reason().with_context(|| format!("wrong password #{}", i + 1))?;
    }
    let right = format!("{}\n", w.password("tech1"));
    let out = w.fw_raw("tech1", &["login", "--user", "tech1", "--password-stdin"], Some(&right))?;
    let why = out.reason().context("the right password on a locked account")?;
    eprintln!("locked: {why}");
    let events = w.audit("admin")?;
    ensure!(
        fernwart_e2e::audit_has(&events, &["lock"]),
        "no audit event (alert) for the lockout; actions: {}",
        fernwart_e2e::audit_actions(&events)
    );
    Ok(())
}

#[test]
fn enrolment_token_reuse_and_wrong_ca_fail() -> Result<()> {
    let echo = Echo::start()?;
    let w = World::boot()?;
    let token = w.add_machine("m1")?;
    let dir = w.write_agent_toml("m1", &[("echo", echo.addr)])?;

    // A CA from another `fernwart-server init` does not vouch for this server.
    let other_dir = w.root.join("other-srv");
    let port = free_port(LOCALHOST)?;
    let listen = format!("127.0.0.1:{port}");
    let url = format!("https://{listen}");
    let other_data = other_dir.to_str().context("utf-8 path")?;
    let init = [
        "init",
        "--data",
        other_data,
        "--listen",
        &listen,
        "--public-url",
        &url,
        "--admin",
        "admin",
    ];
    fernwart_e2e::process::run(w.server_cmd(&init), Some("0ther-Adm1n-Passw0rd!\n"), T)?.check()?;
    let out = w.enroll_raw(&dir, &token, &other_dir.join("ca.pem"))?;
    let why = out.reason().context("enrol trusting another server's CA")?;
    eprintln!("wrong CA: {why}");

    let out = w.enroll_raw(&dir, "fw-not-a-real-token", &w.ca)?;
    let why = out.reason().context("enrol with a made-up token")?;
    eprintln!("made-up token: {why}");

    // The failed TLS handshake revealed nothing: the token still works, once.
    w.enroll_raw(&dir, &token, &w.ca)?.check().context("enrol after the wrong-CA attempt")?;
    let dir2 = w.root.join("agent-m1-copy");
    std::fs::create_dir_all(&dir2)?;
    std::fs::copy(dir.join("agent.toml"), dir2.join("agent.toml"))?;
    let out = w.enroll_raw(&dir2, &token, &w.ca)?;
    let why = out.reason().context("enrol reusing a token")?;
    eprintln!("reused token: {why}");
    Ok(())
}

#[test]
fn expired_enrolment_token_fails() -> Result<()> {
    let echo = Echo::start()?;
    let ttl = 2;
    let opts = Options {
        server_env: vec![("FERNWART_ENROLMENT_TOKEN_TTL".into(), format!("{ttl}s"))],
        ..Options::default()
    };
    let w = World::boot_with(opts)?;
    let issued = totp::unix_now();
    let token = w.add_machine("m1")?;
    let dir = w.write_agent_toml("m1", &[("echo", echo.addr)])?;
    // Wait on the clock (not on a process) until the token is surely past its lifetime.
    while totp::unix_now() < issued + ttl + 2 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = w.enroll_raw(&dir, &token, &w.ca)?;
    let why = out.reason().context("enrol with an expired token")?;
    eprintln!("expired token: {why}");
    Ok(())
}

#[test]
fn session_refusals() -> Result<()> {
    let echo = Echo::start()?;
    let other = Echo::start()?;
    let mut w = world_with_agent(&echo, &other)?;

    // unknown target: refused, nothing created
    let out = w.create_session_raw("s-unknown", "m1", &["nosuch"], &["tech1"], &[])?;
    let why = out.reason().context("session create with an unknown target")?;
    eprintln!("unknown target: {why}");
    ensure!(
        w.fw_raw("admin", &["session", "show", "s-unknown", "--json"], None)?.code != Some(0),
        "a refused session was stored anyway"
    );
    // unknown machine, too
    let out = w.create_session_raw("s-nomachine", "nosuch", &["echo"], &["tech1"], &[])?;
    out.reason().context("session create for an unknown machine")?;

    // a technician not assigned to the session cannot connect
    w.create_session("s1", "m1", &["echo"], &["tech1"])?;
    let mut conn = w.spawn_connect("s1", "tech2")?;
    let status = conn.wait_exit(T);
    let Some(status) = status else {
        bail!("connect by an unassigned technician still runs after {T:?}: {}", conn.log_tail());
    };
    ensure!(!status.success(), "connect by an unassigned technician exited 0");
    ensure!(conn.forwards.is_empty());
    ensure!(
        w.session_state("s1")? == "prepared",
        "an unassigned technician changed the session: {}",
        w.session("s1")?
    );
    eprintln!("unassigned technician: {}", conn.log_tail());

    // reject: the waiting connect exits non-zero
    let mut conn = w.spawn_connect("s1", "tech1")?;
    w.wait_session_state("s1", "requested", T)?;
    w.fw("op1", &["session", "reject", "s1"])?;
    let status = conn.wait_exit(T);
    let Some(status) = status else {
        bail!("connect still waits {T:?} after `session reject`: {}", conn.log_tail());
    };
    ensure!(!status.success(), "connect exited 0 after `session reject`");
    ensure!(w.session_state("s1")? == "rejected", "after reject: {}", w.session("s1")?);
    eprintln!("rejected: {}", conn.log_tail());
    // --wait bounds how long connect waits for an approval
    w.create_session("s2", "m1", &["echo"], &["tech1"])?;
    let out = w.fw_raw("tech1", &["connect", "s2", "--wait", "2s", "--json"], None)?;
    ensure!(!out.success(), "connect --wait 2s without an approval exited 0");
    eprintln!("--wait 2s: {}", out.stderr.trim());
    ensure!(echo.accepted() == 0 && other.accepted() == 0, "a target was reached");
    Ok(())
}

#[test]
fn key_switch_cuts_and_restores() -> Result<()> {
    let echo = Echo::start()?;
    let other = Echo::start()?;
    let mut w = world_with_agent(&echo, &other)?;
    w.create_session("s1", "m1", &["echo"], &["tech1"])?;
    let mut conn = w.connect_approved("s1", "tech1", "op1")?;
    let fwd = conn.forward("echo")?;
    let mut open = open_tunnel(fwd)?;

    w.switch("m1", false)?;
    let closed = wait_closed(&mut open, Duration::from_secs(5));
    let Some(after) = closed else {
        bail!("a tunnel connection stayed open 5 s after `switch off`");
    };
    eprintln!("switch off closed the open connection after {after:?}");
    ensure!(
        after <= Duration::from_millis(1500),
        "switch off took {after:?} to cut (promise: 1 s)"
    );
    ensure!(
        tunnel_refuses(fwd, Duration::from_secs(3)),
        "a new connection worked with the switch off"
    );
    w.wait_switch("m1", false, T)?;
    ensure!(
        echo.active() == 0,
        "the agent still holds {} connections to the target",
        echo.active()
    );

    w.switch("m1", true)?;
    ensure!(conn.proc.running(), "connect ended while the switch was off: {}", conn.log_tail());
    poll("the tunnel to work again after switch on", T, Duration::from_millis(200), || {
        Ok(roundtrip(fwd, b"back again", Duration::from_secs(2)).ok())
    })?;
    Ok(())
}

#[test]
fn agent_reconnects_after_server_restart() -> Result<()> {
    let echo = Echo::start()?;
    let other = Echo::start()?;
    let mut w = world_with_agent(&echo, &other)?;
    w.create_session("s1", "m1", &["echo"], &["tech1"])?;
    let conn = w.connect_approved("s1", "tech1", "op1")?;
    roundtrip(conn.forward("echo")?, b"before restart", T)?;
    drop(conn);

    // the server notices a lost agent
    w.stop_agent("m1");
    w.wait_machine("m1", false, Duration::from_secs(30))?;
    w.run_agent("m1")?;
    w.wait_machine("m1", true, Duration::from_secs(30))?;

    w.stop_server()?;
    w.start_server()?;
    let t0 = Instant::now();
    w.wait_machine("m1", true, Duration::from_secs(60))?;
    eprintln!("agent back online {:?} after the server restarted", t0.elapsed());
    ensure!(w.agent("m1").is_some_and(|p| p.running()), "the agent process ended");

    // DESIGN §4 promise 3: the dropped link took tech1's login with it.
    let stale = w.fw_raw("tech1", &["session", "list"], None)?;
    ensure!(!stale.success(), "tech1's login outlived the dropped link");
    let events = w.audit("admin")?;
    ensure!(
        fernwart_e2e::audit_has(&events, &["login ended"]),
        "no audit record of the login ended with the link; actions: {}",
        fernwart_e2e::audit_actions(&events)
    );
    w.login("tech1")?;
    let conn = connect_approving_if_asked(&mut w, "s1", "tech1")?;
    roundtrip(conn.forward("echo")?, b"after restart", T)?;
    Ok(())
}

#[test]
fn roles_limit_what_each_user_may_do() -> Result<()> {
    let echo = Echo::start()?;
    let other = Echo::start()?;
    let mut w = world_with_agent(&echo, &other)?;
    w.create_session("s1", "m1", &["echo"], &["tech1"])?;
    let pw = "Another-Passw0rd!2026\n";
    let attempts: &[(&str, &[&str], Option<&str>)] = &[
        ("tech1", &["session", "approve", "s1"], None),
        ("tech1", &["user", "add", "x1", "--role", "admin", "--password-stdin"], Some(pw)),
        ("tech1", &["machine", "add", "m2", "--json"], None),
        (
            "tech1",
            &[
                "session",
                "create",
                "s9",
                "--machine",
                "m1",
                "--target",
                "echo",
                "--user",
                "tech1",
                "--reason",
                "self-service",
            ],
            None,
        ),
        ("tech1", &["audit", "export", "--out", "/dev/null"], None),
        ("aud1", &["session", "approve", "s1"], None),
        ("aud1", &["user", "add", "x2", "--role", "technician", "--password-stdin"], Some(pw)),
        ("op1", &["user", "add", "x3", "--role", "approver", "--password-stdin"], Some(pw)),
        ("op1", &["machine", "add", "m3", "--json"], None),
        ("op1", &["user", "disable", "tech1"], None),
    ];
    let mut allowed = Vec::new();
    for (who, args, stdin) in attempts {
        let out = w.fw_raw(who, args, *stdin)?;
        match out.reason() {
            Ok(why) => eprintln!("{who} {}: {why}", args.join(" ")),
            Err(e) => allowed.push(format!("{who}: {e:#}")),
        }
    }
    ensure!(allowed.is_empty(), "role checks let through:\n{}", allowed.join("\n"));
    ensure!(
        w.session_state("s1")? == "prepared",
        "session after refused approvals: {}",
        w.session("s1")?
    );

    // sessions without approval are refused by default (issue 9 rule 3) ...
    let out = w.create_session_raw("s2", "m1", &["echo"], &["tech1"], &["--no-approval"])?;
    ensure!(!out.success(), "--no-approval was accepted by default");
    // ... and open at once where the server allows them
    w.stop_server()?;
    w.opts.server_env.push(("FERNWART_SESSIONS_ALLOW_NO_APPROVAL".into(), "true".into()));
    w.start_server()?;
    w.wait_machine("m1", true, Duration::from_secs(30))?;
    w.wait_switch("m1", true, T)?;
    let out = w.create_session_raw("s2", "m1", &["echo"], &["tech1"], &["--no-approval"])?;
    out.check()?;
    let mut conn = w.spawn_connect("s2", "tech1")?;
    conn.wait_forwards(T)?;
    roundtrip(conn.forward("echo")?, b"no approval needed", T)?;
    Ok(())
}

/// Mutual TLS: a certificate the server's CA never issued is refused in the handshake; a
/// revoked machine is cut off and stays out, and its agent says why.
#[test]
fn foreign_or_revoked_machine_certificate_is_refused() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::standard()?;
    w.start_agent("m1", &[("echo", echo.addr)])?;

    // A copy of m1's identity whose key and certificate were made elsewhere (self-signed).
    let real = w.agent_dir("m1");
    let fake = w.root.join("agent-m1-forged");
    std::fs::create_dir_all(&fake)?;
    for f in ["agent.toml", "identity.toml", "server-ca.pem"] {
        std::fs::copy(real.join(f), fake.join(f)).with_context(|| format!("copy {f}"))?;
    }
    let forged = rcgen::generate_simple_self_signed(vec!["m1".to_owned()])?;
    std::fs::write(fake.join("agent-cert.pem"), forged.cert.pem())?;
    std::fs::write(fake.join("agent-key.pem"), forged.key_pair.serialize_pem())?;
    let log = w.log_path("agent-forged");
    let fake_dir = fake.to_str().context("utf-8 path")?;
    let mut forged_agent = fernwart_e2e::Proc::spawn(
        w.agent_cmd(&["run", "--data", fake_dir]),
        "forged agent",
        &log,
        false,
    )?;
    let why =
        poll("the forged agent to report its refusal", T, Duration::from_millis(200), || {
            let tail = forged_agent.log_tail();
            Ok(tail.lines().find(|l| l.contains("cannot connect")).map(str::to_owned))
        })?;
    eprintln!("forged certificate: {why}");
    ensure!(
        why.contains("does not accept this machine's certificate"),
        "the refusal of a forged certificate does not say it is the certificate: {why}"
    );
    ensure!(forged_agent.running(), "a refused agent keeps trying; it must not exit");
    drop(forged_agent);

    // Revocation: the running agent is cut off and refused on every retry.
    w.fw("admin", &["machine", "revoke", "m1"])?;
    w.wait_machine("m1", false, T)?;
    let why = poll(
        "the revoked agent to report its refusal",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let tail = w.agent("m1").map(|a| a.log_tail()).unwrap_or_default();
            Ok(tail.lines().find(|l| l.contains("revoked")).map(str::to_owned))
        },
    )?;
    eprintln!("revoked: {why}");
    std::thread::sleep(Duration::from_secs(3));
    let m = w.machine("m1")?.context("m1 is gone from the list")?;
    ensure!(
        m.get("online") != Some(&serde_json::Value::Bool(true)),
        "a revoked machine is back online: {m}"
    );
    let actions = fernwart_e2e::audit_actions(&w.audit("aud1")?);
    ensure!(actions.contains("agent.refused"), "no agent.refused in the audit trail: {actions}");
    Ok(())
}
