//! Issue 10 points 2, 3 and 5: the audit trail is a hash chain with signed checkpoints that
//! `fernwart-server audit verify` checks offline, naming the first record changed, removed,
//! inserted or moved; an export verifies elsewhere; acknowledged events survive `kill -9`;
//! `audit list` filters, pages and shows each caller only what it may see.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use fernwart_e2e::{
    https::Https,
    process::{clip, run, Output},
    World,
};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

fn verify(w: &World) -> Result<Output> {
    let srv = w.srv_dir.to_str().context("utf-8 path")?.to_owned();
    run(w.server_cmd(&["audit", "verify", "--data", &srv]), None, T)
}

fn said(out: &Output) -> String {
    format!("{}{}", out.stdout, out.stderr)
}

/// A trail with some records, the server stopped (so that the last checkpoint is written).
fn trail() -> Result<World> {
    let mut w = World::boot()?;
    for i in 0..6 {
        w.fw("admin", &["org", "add", &format!("org{i}"), "--kind", "provider"])?;
    }
    w.stop_server()?;
    Ok(w)
}

/// Runs SQL on the server's database (the server stopped), as someone with the file would.
fn tamper(w: &World, sql: &str) -> Result<()> {
    let db = rusqlite::Connection::open(w.srv_dir.join("fernwart.db"))?;
    db.execute_batch(sql).with_context(|| format!("tampering: {sql}"))?;
    Ok(())
}

fn expect_break(w: &World, what: &str, words: &[&str]) -> Result<()> {
    let out = verify(w)?;
    ensure!(!out.success(), "verify passed a trail with {what}: {}", clip(&said(&out)));
    let text = said(&out);
    for word in words {
        ensure!(text.contains(word), "verify of a trail with {what} does not say {word:?}: {text}");
    }
    eprintln!("{what}: {}", text.trim());
    Ok(())
}

#[test]
fn verify_names_each_kind_of_tampering() -> Result<()> {
    let w = trail()?;
    let out = verify(&w)?;
    ensure!(out.success(), "an untouched trail does not verify: {}", said(&out));
    ensure!(out.stdout.contains("verified"), "{}", out.stdout);
    eprintln!("untouched: {}", out.stdout.trim());
    let db = w.srv_dir.join("fernwart.db");
    // Everything into the database file, so that one copy of it is the whole trail.
    rusqlite::Connection::open(&db)?.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    let pristine = std::fs::read(&db)?;
    let restore = || -> Result<()> {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        std::fs::write(&db, &pristine)?;
        Ok(())
    };

    tamper(&w, "UPDATE audit SET details = '{\"kind\":\"operator\"}' WHERE seq = 4")?;
    expect_break(&w, "a changed record", &["record 4", "changed"])?;
    restore()?;

    tamper(&w, "DELETE FROM audit WHERE seq = 3")?;
    expect_break(&w, "a removed record", &["record 3", "removed"])?;
    restore()?;

    // Rows 3 and 4 swap places (contents move, ids stay).
    tamper(
        &w,
        "UPDATE audit SET id = -3 WHERE id = 3; UPDATE audit SET id = 3 WHERE id = 4; \
         UPDATE audit SET id = 4 WHERE id = -3;",
    )?;
    expect_break(&w, "two records moved", &["record 3", "moved"])?;
    restore()?;

    // A forged record slipped in at place 3, linked properly to record 2, the rest moved up.
    let forged = forged_after(&w, 2)?;
    tamper(
        &w,
        &format!(
            "UPDATE audit SET id = id + 100000 WHERE id >= 3; UPDATE audit SET id = id - 99999 WHERE id >= 100000; {forged}"
        ),
    )?;
    expect_break(&w, "an inserted record", &["inserted", "3"])?;
    restore()?;

    // The last records cut off: the signed checkpoint still counts them.
    tamper(&w, "DELETE FROM audit WHERE seq >= (SELECT MAX(seq) - 1 FROM audit)")?;
    expect_break(&w, "a cut-off end", &["removed", "checkpoint"])?;
    restore()?;

    // A checkpoint whose signature was made by someone else's key.
    tamper(&w, "UPDATE audit_checkpoints SET signature = substr(signature, 1, 10) || 'ff' || substr(signature, 13)")?;
    expect_break(&w, "a forged checkpoint", &["checkpoint", "not signed"])?;
    restore()?;

    ensure!(verify(&w)?.success(), "the restored trail does not verify");
    Ok(())
}

/// SQL inserting a record at id 3 that links to record `after`'s hash with a correct hash of
/// its own (what a forger with the database but not the key can make).
fn forged_after(w: &World, after: i64) -> Result<String> {
    let db = rusqlite::Connection::open(w.srv_dir.join("fernwart.db"))?;
    let prev: String =
        db.query_row("SELECT hash FROM audit WHERE seq = ?1", [after], |r| r.get(0))?;
    let seq = u64::try_from(after + 1)?;
    let body = fernwart_proto::chain::Body {
        time_ms: 1,
        actor: "admin".into(),
        action: "user.add".into(),
        target: "ghost".into(),
        source: "127.0.0.1".into(),
        details: "{}".into(),
    };
    let hash = fernwart_proto::chain::hash(&prev, seq, &body);
    Ok(format!(
        "INSERT INTO audit (id, seq, time_ms, actor, action, target, source, details, prev, hash) \
         VALUES ({seq}, {seq}, 1, 'admin', 'user.add', 'ghost', '127.0.0.1', '{{}}', '{prev}', '{hash}');"
    ))
}

#[test]
fn an_export_verifies_elsewhere_and_only_as_exported() -> Result<()> {
    let mut w = World::boot()?;
    w.add_user("aud1", "auditor")?;
    w.login("aud1")?;
    w.fw("admin", &["org", "add", "plant-a", "--kind", "operator"])?;
    w.add_user_in("aud-a", "auditor", Some("plant-a"))?;
    w.login("aud-a")?;
    // Let a checkpoint cover the records.
    std::thread::sleep(Duration::from_millis(2500));
    let file = w.srv_dir.with_file_name("export.json");
    let file_s = file.to_str().context("utf-8")?.to_owned();
    w.fw("aud1", &["audit", "export", "--out", &file_s])?;
    let key = run(
        w.server_cmd(&["audit", "key", "--data", w.srv_dir.to_str().context("utf-8")?]),
        None,
        T,
    )?;
    let key = key.check()?.stdout.trim().to_owned();
    ensure!(key.len() == 64, "audit key: {key:?}");
    let check = |key: Option<&str>| {
        let mut args = vec!["audit", "verify", "--export", &file_s];
        if let Some(k) = key {
            args.extend(["--key", k]);
        }
        run(w.server_cmd(&args), None, T)
    };
    let out = check(Some(&key))?;
    ensure!(out.success(), "the export does not verify: {}", said(&out));
    ensure!(
        !out.stdout.contains("signed up to record 0"),
        "no checkpoint in the export: {}",
        out.stdout
    );
    let other = "00".repeat(32);
    ensure!(!check(Some(&other))?.success(), "the export verified against another key");

    // An edited export fails.
    let mut export: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    export["records"][1]["actor"] = json!("someone-else");
    std::fs::write(&file, serde_json::to_string(&export)?)?;
    let out = check(Some(&key))?;
    ensure!(!out.success() && said(&out).contains("record 2"), "edited export: {}", said(&out));

    // An auditor of one organization cannot export the whole trail.
    let refused = w.fw_raw("aud-a", &["audit", "export", "--out", &file_s], None)?;
    ensure!(!refused.success() && refused.stderr.contains("whole trail"), "{}", refused.stderr);
    Ok(())
}

#[test]
fn audit_list_filters_pages_and_scopes() -> Result<()> {
    let mut w = World::boot()?;
    w.fw("admin", &["org", "add", "plant-a", "--kind", "operator"])?;
    w.fw("admin", &["org", "add", "plant-b", "--kind", "operator"])?;
    for (name, role, org) in [
        ("aud-a", "auditor", Some("plant-a")),
        ("op-a", "approver", Some("plant-a")),
        ("op-b", "approver", Some("plant-b")),
        ("tech1", "technician", None),
        ("aud1", "auditor", None),
    ] {
        w.add_user_in(name, role, org)?;
        w.login(name)?;
    }
    w.add_machine_in("m-a", Some("plant-a"))?;
    w.add_machine_in("m-b", Some("plant-b"))?;
    // A refused action of tech1's, in its own records.
    let _ = w.fw_raw("tech1", &["user", "list"], None)?;

    let list = |who: &str, args: &[&str]| -> Result<Vec<Value>> {
        let mut all = vec!["audit", "list"];
        all.extend_from_slice(args);
        all.push("--json");
        Ok(w.fw(who, &all)?.json_list())
    };
    let field = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();

    let everything = list("aud1", &[])?;
    ensure!(everything.len() > 10, "few records: {}", everything.len());
    let ids: Vec<i64> = everything.iter().filter_map(|e| e["id"].as_i64()).collect();
    ensure!(ids.windows(2).all(|p| p[0] < p[1]), "not in order: {ids:?}");

    // Filters.
    let logins = list("aud1", &["--kind", "auth.login"])?;
    ensure!(!logins.is_empty() && logins.iter().all(|e| field(e, "action") == "auth.login"));
    let family = list("aud1", &["--kind", "machine"])?;
    ensure!(family.iter().all(|e| field(e, "action").starts_with("machine.")) && family.len() >= 2);
    let by_user = list("aud1", &["--user", "op-a"])?;
    ensure!(!by_user.is_empty() && by_user.iter().all(|e| field(e, "actor") == "op-a"));
    let by_machine = list("aud1", &["--machine", "m-b"])?;
    ensure!(
        !by_machine.is_empty() && by_machine.iter().all(|e| e.to_string().contains("m-b")),
        "{by_machine:?}"
    );
    let future = list("aud1", &["--since", "2099-01-01T00:00:00Z"])?;
    ensure!(future.is_empty(), "records from the future: {future:?}");
    let past = list("aud1", &["--until", "2000-01-01T00:00:00Z"])?;
    ensure!(past.is_empty());

    // Pages: three at a time, then the next three after the last id.
    let first = w.fw("aud1", &["audit", "list", "--limit", "3", "--json"])?;
    let page1 = first.json_list();
    ensure!(page1.len() == 3, "page of {}", page1.len());
    ensure!(first.stderr.contains("--after"), "no hint to the next page: {}", first.stderr);
    let last = page1[2]["id"].as_i64().context("id")?;
    let page2 = list("aud1", &["--limit", "3", "--after", &last.to_string()])?;
    ensure!(page2.first().and_then(|e| e["id"].as_i64()) == Some(ids[3]), "page 2: {page2:?}");

    // Scopes: plant-a's auditor sees plant-a's people and machines only.
    let a = list("aud-a", &[])?;
    ensure!(a.iter().any(|e| field(e, "actor") == "op-a"), "aud-a misses op-a's records");
    ensure!(a.iter().any(|e| e.to_string().contains("m-a")), "aud-a misses m-a's records");
    ensure!(
        !a.iter().any(|e| field(e, "actor") == "op-b" || e.to_string().contains("m-b")),
        "aud-a sees plant-b's records"
    );
    // Technicians: their own only.
    let t = list("tech1", &[])?;
    ensure!(!t.is_empty() && t.iter().all(|e| field(e, "actor") == "tech1"), "{t:?}");
    ensure!(t.iter().any(|e| field(e, "action") == "access.refused"), "tech1's refusal missing");
    // Approvers do not read the trail.
    ensure!(!w.fw_raw("op-a", &["audit", "list"], None)?.success());
    Ok(())
}

/// Point 3: kill -9 the server again and again under a steady load of acknowledged changes;
/// every acknowledged change is in the trail afterwards and the chain verifies.
#[test]
fn acknowledged_events_survive_kill_9() -> Result<()> {
    let mut w = World::boot()?;
    let token = fernwart_e2e::https::cli_token(&w.root, &w.admin.clone())?;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut rounds = Vec::new();
    for round in 0..5 {
        let api = Https::new(&w.ca, w.listen)?;
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let (api, stop, acked, token) =
                    (api.clone(), stop.clone(), acked.clone(), token.clone());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let name = format!("r{round}t{t}n{i}");
                        i += 1;
                        let body = json!({"name": name, "kind": "provider"});
                        if let Ok(reply) =
                            api.request("POST", "/v1/orgs", Some(&token), Some(&body))
                        {
                            if reply.status == 200 {
                                if let Ok(mut a) = acked.lock() {
                                    a.push(name);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        let run_for = Duration::from_millis(400 + 300 * round);
        std::thread::sleep(run_for);
        let killed_at = Instant::now();
        w.kill_server()?;
        stop.store(true, Ordering::Relaxed);
        for t in workers {
            let _ = t.join();
        }
        rounds.push((run_for, killed_at.elapsed()));
        w.start_server()?;
    }
    w.stop_server()?;
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    ensure!(acked.len() > 20, "too little load: {} acknowledged", acked.len());
    let stored = stored_org_adds(&w.srv_dir)?;
    let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    eprintln!(
        "kill -9 x5: {} changes acknowledged, {} org.add records stored, {} lost",
        acked.len(),
        stored.len(),
        lost.len()
    );
    ensure!(lost.is_empty(), "acknowledged but not in the trail: {lost:?}");
    let out = verify(&w)?;
    ensure!(out.success(), "the chain does not verify after kill -9: {}", said(&out));
    eprintln!("{}", out.stdout.trim());
    Ok(())
}

fn stored_org_adds(dir: &Path) -> Result<std::collections::HashSet<String>> {
    let db = rusqlite::Connection::open(dir.join("fernwart.db"))?;
    let mut stmt = db.prepare("SELECT target FROM audit WHERE action = 'org.add'")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
