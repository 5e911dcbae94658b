//! Issue 10 point 6: the audit trail goes to a SIEM as RFC 5424 syslog over TCP (RFC 6587
//! octet counting) and TLS (RFC 5425), and to a JSON lines file; while the receiver is down
//! records wait in the trail and arrive in order when it is back.
//!
//! The receiver (`fernwart_e2e::syslog`) checks every frame and message byte for byte; each
//! scenario stops it in the middle of the run, makes 50 records, starts it again on the same
//! port, stops it once more while the server restarts, and then requires every record from 1
//! to the last, in order, each exactly as stored (a record sent twice must be the same bytes:
//! delivery is at least once).

mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use fernwart_e2e::{
    poll,
    syslog::{Message, Receiver},
    Options, World,
};
use fernwart_proto::chain::{self, Body, Linked};

/// Reconnects back off up to 10 s; a CLI call takes a moment.
const T: Duration = Duration::from_secs(40);
const SD: &str = "fernwart@32473";
/// Records made while the receiver is down.
const DURING_OUTAGE: usize = 50;

fn options(env: &[(&str, String)]) -> Options {
    Options {
        server_env: env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
        ..Options::default()
    }
}

/// One audit record (`org.add`) per name.
fn make_orgs(w: &World, prefix: &str, n: usize) -> Result<()> {
    for i in 0..n {
        w.fw("admin", &["org", "add", &format!("{prefix}{i}"), "--kind", "provider"])?;
    }
    Ok(())
}

/// Waits until the receiver got the `org.add` of `org`.
fn wait_for_org(rx: &Receiver, org: &str) -> Result<()> {
    poll(&format!("the syslog record of org {org}"), T, Duration::from_millis(100), || {
        let errors = rx.errors();
        ensure!(errors.is_empty(), "the receiver saw broken syslog: {errors:?}");
        Ok(rx
            .messages()
            .iter()
            .any(|m| m.param(SD, "action") == Some("org.add") && m.param(SD, "target") == Some(org))
            .then_some(()))
    })
}

/// The trail as the server stored it (the server stopped).
fn stored_chain(w: &World) -> Result<Vec<Linked>> {
    let db = rusqlite::Connection::open(w.srv_dir.join("fernwart.db"))?;
    let mut stmt = db.prepare(
        "SELECT seq, prev, hash, time_ms, actor, action, target, source, details FROM audit \
         ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Linked {
            seq: r.get::<_, i64>(0)? as u64,
            prev: r.get(1)?,
            hash: r.get(2)?,
            body: Body {
                time_ms: r.get(3)?,
                actor: r.get(4)?,
                action: r.get(5)?,
                target: r.get(6)?,
                source: r.get(7)?,
                details: r.get(8)?,
            },
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Milliseconds since 1970 of an RFC 5424 timestamp in UTC with milliseconds.
fn unix_ms(ts: &str) -> Result<i64> {
    let n = |range: std::ops::Range<usize>| -> Result<i64> {
        ts.get(range.clone())
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("timestamp {ts:?} at {range:?}"))
    };
    ensure!(ts.len() == 24 && ts.ends_with('Z'), "timestamp {ts:?} is not UTC with milliseconds");
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + n(11..13)?) * 60 + n(14..16)?) * 60_000 + n(17..19)? * 1000 + n(20..23)?)
}

/// The record a syslog message carries.
fn record_of(m: &Message) -> Result<Linked> {
    let p = |name: &str| {
        m.param(SD, name).map(str::to_owned).with_context(|| format!("no {name} in {:?}", m.raw))
    };
    let seq: u64 = p("seq")?.parse().context("seq")?;
    let time_ms = unix_ms(m.timestamp.as_deref().context("no TIMESTAMP")?)?;
    Ok(Linked {
        seq,
        prev: p("prev")?,
        hash: p("hash")?,
        body: Body {
            time_ms,
            actor: p("actor")?,
            action: p("action")?,
            target: p("target")?,
            source: p("source")?,
            details: String::from_utf8(m.msg.clone()).context("MSG")?,
        },
    })
}

/// Checks what the receiver got against the stored trail: every record from 1 to the last,
/// in order (never ahead of the next one due), a repeat only as the same bytes, each message
/// well formed and carrying its record exactly. Returns (messages, repeats).
fn check_delivery(rx: &Receiver, stored: &[Linked]) -> Result<(usize, usize)> {
    let errors = rx.errors();
    ensure!(errors.is_empty(), "the receiver saw broken syslog: {errors:?}");
    let messages = rx.messages();
    let mut first: BTreeMap<u64, &Message> = BTreeMap::new();
    let mut next = 1u64;
    let mut repeats = 0;
    for m in &messages {
        let r = record_of(m)?;
        if let Some(earlier) = first.get(&r.seq) {
            ensure!(
                earlier.raw == m.raw,
                "record {} sent twice, differently:\n{:?}\n{:?}",
                r.seq,
                String::from_utf8_lossy(&earlier.raw),
                String::from_utf8_lossy(&m.raw)
            );
            repeats += 1;
            continue;
        }
        ensure!(
            r.seq == next,
            "record {} arrived when {next} was due (out of order or a gap)",
            r.seq
        );
        let Some(s) = stored.get(next as usize - 1) else {
            bail!("record {} arrived but the trail has {} records", r.seq, stored.len());
        };
        ensure!(&r == s, "record {} differs from the stored one:\n{r:?}\n{s:?}", r.seq);
        ensure!(m.facility == 13, "facility {} in record {}", m.facility, r.seq);
        ensure!(m.app_name.as_deref() == Some("fernwart"), "APP-NAME {:?}", m.app_name);
        ensure!(m.hostname.as_deref() == Some("127.0.0.1"), "HOSTNAME {:?}", m.hostname);
        let action: String = s.body.action.chars().take(32).collect();
        ensure!(m.msgid.as_deref() == Some(action.as_str()), "MSGID {:?}", m.msgid);
        first.insert(r.seq, m);
        next += 1;
    }
    ensure!(
        next - 1 == stored.len() as u64,
        "the receiver got records 1 to {} of {}",
        next - 1,
        stored.len()
    );
    // The copy verifies on its own: hashes and links from record 1 on.
    let copy: Vec<Linked> = first.values().map(|m| record_of(m)).collect::<Result<_>>()?;
    chain::verify(&copy, 1, chain::GENESIS, &[]).context("the syslog copy of the chain")?;
    Ok((messages.len(), repeats))
}

/// Boot with the receiver, some records, stop it, 50 records, start it again, some more,
/// stop the server: the whole trail must have arrived.
fn outage_and_return(mut rx: Receiver, extra_env: &[(&str, String)]) -> Result<World> {
    let mut env = vec![("FERNWART_AUDIT_SYSLOG", rx.url())];
    env.extend(extra_env.iter().cloned());
    let mut w = World::boot_with(options(&env))?;
    make_orgs(&w, "before", 3)?;
    wait_for_org(&rx, "before2")?;
    let before = rx.messages().len();

    rx.stop();
    let down = Instant::now();
    make_orgs(&w, "down", DURING_OUTAGE)?;
    eprintln!("{DURING_OUTAGE} records made in {:?} with the receiver down", down.elapsed());
    let connections = rx.connections();
    rx.restart()?;
    let back = Instant::now();
    wait_for_org(&rx, &format!("down{}", DURING_OUTAGE - 1))?;
    eprintln!("the backlog arrived {:?} after the receiver came back", back.elapsed());
    ensure!(rx.connections() > connections, "no new connection after the restart");

    // Down again, and the server restarts meanwhile: the queue is on disk.
    rx.stop();
    make_orgs(&w, "down-again", 2)?;
    w.stop_server()?;
    w.start_server()?;
    make_orgs(&w, "restarted", 3)?;
    rx.restart()?;
    wait_for_org(&rx, "restarted2")?;

    make_orgs(&w, "after", 3)?;
    wait_for_org(&rx, "after2")?;
    let status = w.stop_server()?;
    ensure!(status.success(), "the server stopped with {status}");
    let stored = stored_chain(&w)?;
    let (messages, repeats) = check_delivery(&rx, &stored)?;
    // The clean stop closed the connection and saw the receiver close: all counted.
    let db = rusqlite::Connection::open(w.srv_dir.join("fernwart.db"))?;
    let cursor: i64 =
        db.query_row("SELECT seq FROM delivery_cursors WHERE sink = 'syslog'", [], |r| r.get(0))?;
    ensure!(
        cursor as usize == stored.len(),
        "after a clean stop the syslog cursor is at {cursor} of {}",
        stored.len()
    );
    eprintln!(
        "{}: {} records stored, {messages} messages received ({before} before the outage, \
         {repeats} sent again after reconnecting), over {} connections; all in order",
        rx.url(),
        stored.len(),
        rx.connections()
    );
    Ok(w)
}

#[test]
fn syslog_over_tcp_survives_a_receiver_outage_and_jsonl_holds_the_chain() -> Result<()> {
    let rx = Receiver::start_tcp()?;
    let w = outage_and_return(rx, &[("FERNWART_AUDIT_JSONL", "audit.jsonl".to_owned())])?;

    // The JSON lines copy: every record once, in order, the chain intact.
    let path = w.srv_dir.join("audit.jsonl");
    let lines = read_jsonl(&path)?;
    let stored = stored_chain(&w)?;
    ensure!(
        lines == stored,
        "{} holds {} records, the trail {}",
        path.display(),
        lines.len(),
        stored.len()
    );
    let verified = chain::verify(&lines, 1, chain::GENESIS, &[]).context("the JSON lines copy")?;
    eprintln!("{}: {} records, chain verified", path.display(), verified.records);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{} has mode {mode:o}", path.display());
    }
    Ok(())
}

fn read_jsonl(path: &Path) -> Result<Vec<Linked>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let r: Linked = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: {line:?}", path.display(), i + 1))?;
        let v: serde_json::Value = serde_json::from_str(line)?;
        ensure!(v["time"].is_string(), "line {} has no RFC 3339 time: {line}", i + 1);
        records.push(r);
    }
    ensure!(text.ends_with('\n'), "{} does not end with a whole line", path.display());
    Ok(records)
}

#[test]
fn syslog_over_tls_survives_a_receiver_outage() -> Result<()> {
    let pki = tempfile::tempdir()?;
    let (ca_pem, chain, key) = common::receiver_pki("siem")?;
    let ca_file = pki.path().join("siem-ca.pem");
    std::fs::write(&ca_file, ca_pem)?;
    let rx = Receiver::start_tls(chain, key)?;
    let ca = ca_file.to_str().context("utf-8 path")?.to_owned();
    outage_and_return(rx, &[("FERNWART_AUDIT_SYSLOG_CA", ca)])?;
    Ok(())
}

#[test]
fn records_made_while_the_receiver_comes_and_goes_all_arrive_in_order() -> Result<()> {
    let mut rx = Receiver::start_tcp()?;
    let w = World::boot_with(options(&[("FERNWART_AUDIT_SYSLOG", rx.url())]))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // The receiver goes away and comes back every few hundred ms while records are made,
    // so that some go out just as it closes.
    let churn = thread::spawn(move || -> Result<(Receiver, usize)> {
        let mut outages = 0;
        while !flag.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(150 + 100 * (outages % 4) as u64));
            rx.stop();
            outages += 1;
            thread::sleep(Duration::from_millis(200));
            rx.restart()?;
        }
        Ok((rx, outages))
    });
    let made = make_orgs(&w, "churn", 100);
    stop.store(true, Ordering::SeqCst);
    let (rx, outages) =
        churn.join().map_err(|_| anyhow::anyhow!("the churn thread panicked"))??;
    made?;
    wait_for_org(&rx, "churn99")?;
    let mut w = w;
    w.stop_server()?;
    let stored = stored_chain(&w)?;
    let (messages, repeats) = check_delivery(&rx, &stored)?;
    eprintln!(
        "{} records, {outages} outages while they were made: {messages} messages over {} \
         connections ({repeats} sent again), all in order",
        stored.len(),
        rx.connections()
    );
    Ok(())
}

#[test]
fn a_tls_receiver_the_ca_does_not_vouch_for_gets_nothing() -> Result<()> {
    let pki = tempfile::tempdir()?;
    let (_, chain, key) = common::receiver_pki("siem")?;
    let (other_ca, _, _) = common::receiver_pki("siem")?;
    let ca_file = pki.path().join("other-ca.pem");
    std::fs::write(&ca_file, other_ca)?;
    let rx = Receiver::start_tls(chain, key)?;
    let ca = ca_file.to_str().context("utf-8 path")?.to_owned();
    let w = World::boot_with(options(&[
        ("FERNWART_AUDIT_SYSLOG", rx.url()),
        ("FERNWART_AUDIT_SYSLOG_CA", ca),
    ]))?;
    make_orgs(&w, "org", 2)?;
    // It keeps trying (and failing the handshake).
    poll("two connection attempts", T, Duration::from_millis(100), || {
        Ok((rx.connections() >= 2).then_some(()))
    })?;
    ensure!(rx.messages().is_empty(), "an unverified receiver got {} records", rx.messages().len());
    drop(w);
    Ok(())
}
