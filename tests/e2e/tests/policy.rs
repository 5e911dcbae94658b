//! Login and password policy (DESIGN.md §4.4, §6): `fernwart logout` ends the login at the
//! server, failed logins look alike from outside while the lock is recorded with an alert,
//! repeated failures are answered more and more slowly, and `fernwart passwd` changes one's
//! own password under the policy (history, common passwords, the user name, length) and ends
//! the user's other logins.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use fernwart_e2e::{
    audit_actions,
    https::{cli_token, Https},
    process::Output,
    rfc3339_in, totp, Options, World,
};
use serde_json::Value;

const WRONG_PASSWORD: &str = "Wrong-Passw0rd!2026";
/// Policy-conformant passwords for the changes (no user name, not common).
const NEW_PASSWORD: &str = "Fresh-Kestrel#4471x";
const NEWER_PASSWORD: &str = "Quiet-Harbour#8832y";
/// How long the test waits at most for a TOTP step the server has not seen.
const CODE_WAIT: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------- 1: logout

#[test]
fn logout_revokes_the_login_at_the_server() -> Result<()> {
    let mut w = World::boot()?;
    w.add_user("tech1", "technician")?;
    w.login("tech1")?;
    let api = client(&w)?;
    let token = cli_token(&w.root, "tech1")?;
    let admin_token = cli_token(&w.root, "admin")?;
    let before = api.request("GET", "/v1/sessions", Some(&token), None)?;
    ensure!(
        before.status != 401,
        "tech1's fresh login is refused before the logout: {}",
        before.summary()
    );

    w.fw("tech1", &["logout"]).context("`fernwart logout` as tech1")?;

    let after = api.request("GET", "/v1/sessions", Some(&token), None)?;
    ensure!(
        after.status == 401,
        "the token of tech1's login still works after `fernwart logout` (HTTP 401 expected): {}",
        after.summary()
    );
    // Only that login ends: the admin's stays.
    let other = api.request("GET", "/v1/sessions", Some(&admin_token), None)?;
    ensure!(other.status != 401, "tech1's logout ended the admin's login too: {}", other.summary());
    let events = w.audit("admin")?;
    ensure!(
        events.iter().any(|e| field(e, "action") == "auth.logout" && field(e, "target") == "tech1"),
        "no auth.logout record with target tech1 in the audit trail; actions: {}",
        audit_actions(&events)
    );
    Ok(())
}

// ---------------------------------------------------------------- 2: look-alike failures

#[test]
fn a_locked_account_answers_like_a_wrong_password_and_the_lock_is_recorded() -> Result<()> {
    let mut w = World::boot_with(options(&[("FERNWART_AUTH_LOCKOUT_THRESHOLD", "3")]))?;
    w.add_user("tech1", "technician")?;
    let password = w.password("tech1");
    let mut otp = Totp::enrol(&mut w, "tech1", &password)?;

    // A login for a name nobody has, in the same shape as tech1's.
    let unknown = login(&w, "ghost", "ghost7", &password, Some(&otp.invalid_code()?))?;
    let unknown_reason = unknown.reason().context("login for an unknown user name")?;

    let mut wrong_reasons = Vec::new();
    for i in 1..=3 {
        let out = login(&w, "tech1", "tech1", WRONG_PASSWORD, Some(&otp.invalid_code()?))?;
        wrong_reasons.push(out.reason().with_context(|| format!("wrong password #{i}"))?);
    }
    let wrong_reason = wrong_reasons[0].clone();
    ensure!(
        wrong_reasons.iter().all(|r| *r == wrong_reason),
        "the three wrong-password logins give different reasons: {wrong_reasons:?}"
    );

    // The right password and a valid, unused code: the account is locked now.
    let code = otp.code()?;
    let locked = login(&w, "tech1", "tech1", &password, Some(&code))?;
    ensure!(
        !locked.success(),
        "after 3 wrong passwords (threshold 3) the right password and code still log tech1 in"
    );
    let locked_reason = locked.reason().context("login of the locked account")?;
    eprintln!(
        "reasons: wrong password {wrong_reason:?}, locked {locked_reason:?}, unknown name \
         {unknown_reason:?}"
    );

    let mut problems = Vec::new();
    if locked_reason != wrong_reason {
        problems.push(format!(
            "the locked account answers {locked_reason:?}, a wrong password {wrong_reason:?}"
        ));
    }
    if unknown_reason != wrong_reason {
        problems.push(format!(
            "an unknown user name answers {unknown_reason:?}, a wrong password {wrong_reason:?}"
        ));
    }
    // The same on the wire: status and body of a locked account's and an unknown name's login.
    let api = client(&w)?;
    let raw_locked = api.login("tech1", &password, Some(&otp.invalid_code()?))?;
    let raw_unknown = api.login("ghost7", &password, Some(&otp.invalid_code()?))?;
    if (raw_locked.status, raw_locked.body.trim()) != (raw_unknown.status, raw_unknown.body.trim())
    {
        problems.push(format!(
            "on the wire the locked account answers {}, an unknown name {}",
            raw_locked.summary(),
            raw_unknown.summary()
        ));
    }

    let events = w.audit("admin")?;
    let lockouts: Vec<&Value> = events
        .iter()
        .filter(|e| field(e, "action") == "auth.lockout" && field(e, "target") == "tech1")
        .collect();
    if lockouts.is_empty() {
        problems.push(format!(
            "no auth.lockout record for tech1 in the audit trail; actions: {}",
            audit_actions(&events)
        ));
    } else if !lockouts
        .iter()
        .any(|e| e.get("details").and_then(|d| d.get("alert")) == Some(&Value::Bool(true)))
    {
        problems.push(format!(
            "the auth.lockout record of tech1 raises no alert (details.alert true expected): {}",
            lockouts[0]
        ));
    }
    ensure!(problems.is_empty(), "failed logins do not look alike:\n{}", problems.join("\n"));
    Ok(())
}

// ---------------------------------------------------------------- 3: growing delay

#[test]
fn repeated_failures_are_answered_more_and_more_slowly() -> Result<()> {
    let mut w = World::boot_with(options(&[("FERNWART_AUTH_LOCKOUT_THRESHOLD", "5")]))?;
    w.add_user("tech1", "technician")?;
    let mut took = Vec::new();
    for i in 1..=3 {
        let started = Instant::now();
        let out = login(&w, "tech1", "tech1", &format!("{WRONG_PASSWORD}-{i}"), None)?;
        took.push(started.elapsed());
        out.reason().with_context(|| format!("wrong password #{i}"))?;
    }
    eprintln!("wrong-password logins of tech1 took {took:?}");
    // The server waits 250 ms × 2^(n−1) before failure n: 1 s before the third.
    let bound = Duration::from_millis(800);
    ensure!(
        took[2] >= bound,
        "the third consecutive wrong password of tech1 was answered after {:?} (at least {bound:?} \
         expected: 250 ms × 2^(n−1) before failure n); all three: {took:?}",
        took[2]
    );
    Ok(())
}

// ---------------------------------------------------------------- 4: passwd

#[test]
fn passwd_changes_the_password_and_ends_the_other_logins() -> Result<()> {
    let mut w = World::boot()?;
    w.add_user("tech1", "technician")?;
    let old = w.password("tech1");
    let mut otp = Totp::enrol(&mut w, "tech1", &old)?;
    // Two logins of tech1: this desk (home-tech1) and a laptop (home-tech1-laptop).
    let code = otp.code()?;
    login(&w, "tech1", "tech1", &old, Some(&code))?.check().context("tech1 logs in")?;
    let code = otp.code()?;
    login(&w, "tech1-laptop", "tech1", &old, Some(&code))?
        .check()
        .context("tech1 logs in on a second FERNWART_HOME")?;
    let laptop = cli_token(&w.root, "tech1-laptop")?;
    let api = client(&w)?;
    let before = api.request("GET", "/v1/sessions", Some(&laptop), None)?;
    ensure!(
        before.status != 401,
        "tech1's second login is refused before any change: {}",
        before.summary()
    );

    w.fw_in("tech1", &["passwd"], &format!("{old}\n{NEW_PASSWORD}\n"))
        .context("`fernwart passwd` as tech1")?;

    let mut problems = Vec::new();
    let after = api.request("GET", "/v1/sessions", Some(&laptop), None)?;
    if after.status != 401 {
        problems.push(format!(
            "tech1's other login still works after the password change (HTTP 401 expected): {}",
            after.summary()
        ));
    }
    let events = w.audit("admin")?;
    if !events.iter().any(|e| field(e, "action") == "user.passwd" && field(e, "target") == "tech1")
    {
        problems.push(format!(
            "no user.passwd record with target tech1 in the audit trail; actions: {}",
            audit_actions(&events)
        ));
    }
    // The old password with a valid, unused code (a failed password does not spend the code;
    // should it, a fresh one is taken for the new password below).
    let code = otp.code()?;
    let old_login = login(&w, "tech1-old", "tech1", &old, Some(&code))?;
    if old_login.success() {
        problems.push("login with the old password still works".into());
    }
    let mut new_login = login(&w, "tech1", "tech1", NEW_PASSWORD, Some(&code))?;
    if !new_login.success() {
        let code = otp.code()?;
        new_login = login(&w, "tech1", "tech1", NEW_PASSWORD, Some(&code))?;
    }
    if !new_login.success() {
        problems.push(format!(
            "login with the new password fails: {}",
            new_login.reason().unwrap_or_else(|e| format!("{e:#}"))
        ));
    }
    ensure!(problems.is_empty(), "after `fernwart passwd`:\n{}", problems.join("\n"));
    Ok(())
}

#[test]
fn passwd_refuses_wrong_reused_common_personal_and_short_passwords() -> Result<()> {
    let mut w = World::boot()?;
    w.add_user("tech1", "technician")?;
    let first = w.password("tech1");
    let mut otp = Totp::enrol(&mut w, "tech1", &first)?;
    let code = otp.code()?;
    login(&w, "tech1", "tech1", &first, Some(&code))?.check().context("tech1 logs in")?;

    // tech1's password as the server has it: a change that should have been refused but was
    // not moves it on, so that the later checks still start from the right one.
    let mut current = first.clone();
    let mut problems = Vec::new();
    let mut refuse = |current: &mut String, given: &str, new: &str, word: &str, what: &str| {
        let out = w.fw_raw("tech1", &["passwd"], Some(&format!("{given}\n{new}\n")))?;
        if out.success() && given == current.as_str() {
            *current = new.to_owned();
        }
        check_refusal(&out, word, &format!("`passwd` with {what}"), &mut problems);
        anyhow::Ok(())
    };
    refuse(&mut current, WRONG_PASSWORD, NEW_PASSWORD, "current", "the current password wrong")?;
    let cur = current.clone();
    refuse(&mut current, &cur, &cur, "used before", "the new password equal to the current")?;
    for common in ["Password123!", "Welcome2026!"] {
        let (cur, what) = (current.clone(), format!("the common password {common:?}"));
        refuse(&mut current, &cur, common, "common", &what)?;
    }
    // The user name itself, with digits and symbols around it (a password that merely
    // contains the name is allowed: the harness's own passwords do).
    let cur = current.clone();
    let what = "the user name as a password";
    refuse(&mut current, &cur, "!!Tech1#2026#!!", "user name", what)?;
    let cur = current.clone();
    refuse(&mut current, &cur, "Sh0rt!x9", "short", "an 8-character password")?;

    // A change, then back to the password before it: one of the last five.
    let before = current.clone();
    w.fw_in("tech1", &["passwd"], &format!("{before}\n{NEWER_PASSWORD}\n")).with_context(|| {
        format!(
            "`fernwart passwd` as tech1 to a good password, after the refusals (problems so \
             far: [{}])",
            problems.join("; ")
        )
    })?;
    current = NEWER_PASSWORD.to_owned();
    let own = cli_token(&w.root, "tech1")?;
    if client(&w)?.request("GET", "/v1/sessions", Some(&own), None)?.status == 401 {
        // The change ended this login too; the spec only says the others end. Log in again.
        let code = otp.code()?;
        login(&w, "tech1", "tech1", &current, Some(&code))?
            .check()
            .context("tech1 logs in with the changed password")?;
    }
    let what = "the password before the current one";
    let out = w.fw_raw("tech1", &["passwd"], Some(&format!("{current}\n{before}\n")))?;
    check_refusal(&out, "used before", &format!("`passwd` with {what}"), &mut problems);

    // The admin setting a common password for a new user.
    let out = w.fw_raw(
        "admin",
        &["user", "add", "tech9", "--role", "technician", "--password-stdin"],
        Some("Password123!\n"),
    )?;
    check_refusal(&out, "common", "`user add tech9` with \"Password123!\"", &mut problems);

    ensure!(problems.is_empty(), "password policy gaps:\n{}", problems.join("\n"));
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

fn field<'a>(e: &'a Value, name: &str) -> &'a str {
    e.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// `fernwart login --user USER --password-stdin [--otp CODE]` in the FERNWART_HOME of `home`
/// (the harness keeps it in `ROOT/home-HOME`), whatever the outcome.
fn login(w: &World, home: &str, user: &str, password: &str, otp: Option<&str>) -> Result<Output> {
    let mut args = vec!["login", "--user", user, "--password-stdin"];
    if let Some(code) = otp {
        args.extend(["--otp", code]);
    }
    w.fw_raw(home, &args, Some(&format!("{password}\n")))
}

fn check_refusal(out: &Output, word: &str, what: &str, problems: &mut Vec<String>) {
    match out.reason() {
        Ok(reason) if reason.to_ascii_lowercase().contains(word) => {}
        Ok(reason) => problems
            .push(format!("{what}: refused, but the reason {reason:?} does not say {word:?}")),
        Err(e) => problems.push(format!("{what}: {e:#}")),
    }
}

/// A TOTP secret enrolled by hand, with every step the server accepts now (the one before,
/// the current and the next) usable once, so that a test gets several codes without waiting.
struct Totp {
    secret: String,
    used: BTreeSet<u64>,
}

impl Totp {
    /// Password-only login of `who` in its own FERNWART_HOME, `mfa enroll`, `mfa confirm`.
    fn enrol(w: &mut World, who: &str, password: &str) -> Result<Self> {
        login(w, who, who, password, None)?
            .check()
            .with_context(|| format!("first login of {who}"))?;
        let js = w.fw_json(who, &["mfa", "enroll"])?;
        let secret = js
            .get("secret")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("`mfa enroll --json` gave no secret: {js}"))?
            .to_owned();
        let mut t = Self { secret, used: BTreeSet::new() };
        let code = t.code()?;
        w.fw(who, &["mfa", "confirm", &code]).with_context(|| format!("mfa confirm of {who}"))?;
        Ok(t)
    }

    /// A valid code of a step the server has not seen yet (marked used).
    fn code(&mut self) -> Result<String> {
        let deadline = Instant::now() + CODE_WAIT;
        loop {
            let now = totp::unix_now();
            let step = totp::step_of(now);
            let into = now % totp::STEP;
            let mut candidates = vec![step, step + 1];
            // The step before only while the server cannot have moved on by the time it checks
            // (a few seconds ahead of the next step).
            if into <= 26 {
                candidates.push(step.saturating_sub(1));
            }
            if let Some(s) = candidates.into_iter().find(|s| !self.used.contains(s)) {
                self.used.insert(s);
                return totp::code(&self.secret, s);
            }
            if Instant::now() >= deadline {
                bail!("no unused TOTP step within {CODE_WAIT:?}");
            }
            // Every usable step is spent: the next one comes with the clock.
            let wait = (step + 1) * totp::STEP - now;
            std::thread::sleep(Duration::from_secs(wait.clamp(1, totp::STEP)));
        }
    }

    /// A well-formed code that is not valid now (that of a step far away).
    fn invalid_code(&self) -> Result<String> {
        let far = totp::step_of(totp::unix_now()) + 1000;
        let code = totp::code(&self.secret, far)?;
        // The far step's code may by chance equal one of the window's: pick another then.
        let now = totp::step_of(totp::unix_now());
        let window: Vec<String> = (now.saturating_sub(1)..=now + 2)
            .filter_map(|s| totp::code(&self.secret, s).ok())
            .collect();
        if window.contains(&code) {
            return totp::code(&self.secret, far + 1);
        }
        Ok(code)
    }
}

/// Issue 9 rule 10: admins create API tokens for automation, scoped to a role, expiring,
/// listed and revocable; a token acts under its own name and never as a person.
#[test]
fn api_tokens_are_scoped_listed_and_revocable() -> Result<()> {
    let mut w = World::boot()?;
    w.add_user("tech1", "technician")?;
    let expires = rfc3339_in(3600);
    let created =
        w.fw_json("admin", &["token", "create", "--role", "auditor", "--expires", &expires])?;
    let token = created
        .get("token")
        .and_then(Value::as_str)
        .context("token create --json gives the token")?
        .to_owned();
    let name = created.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    // A home without any login: the token alone authenticates.
    let as_token = |args: &[&str]| -> Result<Output> {
        let mut cmd = w.cli("automation");
        cmd.env("FERNWART_TOKEN", &token).args(args);
        fernwart_e2e::process::run(cmd, None, Duration::from_secs(30))
    };
    let listed = as_token(&["audit", "list", "--json"])?;
    ensure!(listed.success(), "an auditor token cannot list the audit trail: {}", listed.stderr);
    let refused = as_token(&["machine", "add", "m9"])?;
    ensure!(!refused.success(), "an auditor token added a machine");
    let refused = as_token(&["token", "create", "--role", "auditor", "--expires", &expires])?;
    ensure!(!refused.success(), "a token created a token");
    // Roles that need a person, and lifetimes that are too long or over, are refused.
    for (role, until) in [
        ("technician", expires.clone()),
        ("approver", expires.clone()),
        ("auditor", rfc3339_in(-60)),
        ("auditor", rfc3339_in(400 * 86400)),
    ] {
        let out =
            w.fw_raw("admin", &["token", "create", "--role", role, "--expires", &until], None)?;
        ensure!(!out.success(), "a {role} token until {until} was created");
    }
    let tokens = w.fw_json("admin", &["token", "list"])?;
    let shown = tokens.as_array().map(|a| a.len()).unwrap_or_default();
    ensure!(shown == 1, "token list shows {shown} tokens, one expected: {tokens}");
    ensure!(!tokens.to_string().contains(&token), "token list shows the secret");
    w.fw("admin", &["token", "revoke", &name])?;
    let after = as_token(&["audit", "list", "--json"])?;
    ensure!(!after.success(), "a revoked token still works");
    let events = w.audit("admin")?;
    for kind in [["token", "create"], ["token", "revoke"]] {
        ensure!(
            fernwart_e2e::audit_has(&events, &kind),
            "no {} record; actions: {}",
            kind.join("."),
            audit_actions(&events)
        );
    }
    Ok(())
}

/// Issue 9 rule 6: disabling a user revokes the API tokens they created too.
#[test]
fn disabling_a_user_revokes_their_api_tokens() -> Result<()> {
    let mut w = World::boot()?;
    w.add_user("adm2", "admin")?;
    w.login("adm2")?;
    let created = w.fw_json(
        "adm2",
        &["token", "create", "--role", "auditor", "--expires", &rfc3339_in(3600)],
    )?;
    let token = created.get("token").and_then(Value::as_str).context("a token")?.to_owned();
    let as_token = |w: &World| -> Result<Output> {
        let mut cmd = w.cli("automation");
        cmd.env("FERNWART_TOKEN", &token).args(["audit", "list", "--json"]);
        fernwart_e2e::process::run(cmd, None, Duration::from_secs(30))
    };
    ensure!(as_token(&w)?.success(), "adm2's token does not work before the disable");
    w.fw("admin", &["user", "disable", "adm2"])?;
    ensure!(!as_token(&w)?.success(), "adm2's token still works after adm2 was disabled");
    Ok(())
}

/// Issue 9 rule 8: an unused login ends after `auth.idle_timeout`; one in use does not.
#[test]
fn idle_logins_end() -> Result<()> {
    let mut w = World::boot_with(Options {
        server_env: vec![("FERNWART_AUTH_IDLE_TIMEOUT".into(), "4s".into())],
        ..Options::default()
    })?;
    w.add_user("aud1", "auditor")?;
    w.login("aud1")?;
    // In use: a call every second for 6 s keeps it.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        w.fw("aud1", &["session", "list"]).context("a login in use ended")?;
        std::thread::sleep(Duration::from_secs(1));
    }
    // Unused for longer than the timeout: it ends, and says so.
    std::thread::sleep(Duration::from_secs(6));
    let out = w.fw_raw("aud1", &["session", "list"], None)?;
    ensure!(!out.success(), "an unused login still works after the idle timeout");
    ensure!(out.stderr.contains("unused"), "unclear refusal: {}", out.stderr);
    w.login("admin")?; // the admin's login went unused as well
    let events = w.audit("admin")?;
    ensure!(
        fernwart_e2e::audit_has(&events, &["login ended"]),
        "no auth.login_ended record; actions: {}",
        audit_actions(&events)
    );
    Ok(())
}
