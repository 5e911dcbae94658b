//! The embedded default: SQLite in one file of the data directory, versioned schema.
//!
//! One writing connection (WAL, `synchronous = FULL`: an acknowledged write survives a crash)
//! and one read-only connection, so reads never wait behind a write's fsync. All calls are
//! blocking; [`super::Store`] runs them off the async workers.

use std::{path::Path, sync::Mutex, time::Duration};

use fernwart_api::{AuditRecord, OrgKind, Scope, TargetInfo};
use fernwart_proto::chain;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{
    migrations, AgentBatch, AgentRecord, AgentTrust, ApiTokenRecord, Applied, Attempt, AuditFilter,
    Backend, ChallengePurpose, Checkpoint, Credential, E2eKeySeen, EnrolToken, IssuedCert,
    LoginSubject, MachineOwner, MachineRecord, NewSession, NewUser, NewWindow, OrgRecord,
    PrepareRule, SettingWrite, StoreError, TechKey, UserRecord, MAX_TECH_KEYS,
};
use crate::{
    audit::{Entry, Event},
    authz::{PrepareFacts, Release, SigningFacts, UserFacts},
    domain::{
        session::{Session, SignedApproval},
        window::{Days, Window},
        Caller, Role, SessionEvent, SessionState, UnixSecs,
    },
    util,
};

pub const DB_FILE: &str = "fernwart.db";

/// How long a read waits for a busy database before it fails.
const READER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Sqlite {
    conn: Mutex<Connection>,
    /// None for in-memory databases (tests): reads then use `conn`.
    reader: Option<Mutex<Connection>>,
}

impl Sqlite {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DB_FILE);
        create_private(&path)?;
        let mut store = Self::setup(Connection::open(&path)?)?;
        let reader = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(READER_BUSY_TIMEOUT)?;
        reader.pragma_update(None, "query_only", "ON")?;
        store.reader = Some(Mutex::new(reader));
        Ok(store)
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        migrations::migrate(&mut conn)?;
        {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            chain_backfill(&tx)?;
            tx.commit()?;
        }
        Ok(Self { conn: Mutex::new(conn), reader: None })
    }

    /// Runs `f` in one write transaction; a poisoned lock is recovered (SQLite keeps its own
    /// consistency: an unfinished transaction rolls back when dropped).
    fn tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.reader.as_ref().unwrap_or(&self.conn);
        let guard = conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }
}

/// The database and its WAL files are readable by the server's user only: SQLite gives its
/// `-wal` and `-shm` files the mode of the database file.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::File { path: path.display().to_string(), source };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        for suffix in ["", "-wal", "-shm"] {
            let p = format!("{}{suffix}", path.display());
            if Path::new(&p).exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(err)?;
            }
        }
    }
    #[cfg(not(unix))]
    {
        // The data directory's ACL (set at init) is what protects the file on Windows.
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
    }
    Ok(())
}

/// Appends `entry` to the audit chain, in the caller's transaction: its place is the last
/// record's plus one, its `prev` the last record's hash (the write lock serializes appends).
fn credential_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Credential> {
    let count: i64 = r.get(5)?;
    Ok(Credential {
        id: r.get(0)?,
        user_id: r.get(1)?,
        name: r.get(2)?,
        credential_id: r.get(3)?,
        public_key: r.get(4)?,
        // Stored from a u32; anything else was not written by us.
        sign_count: u32::try_from(count).unwrap_or(u32::MAX),
        created_at: r.get(6)?,
        last_used: r.get(7)?,
    })
}

fn audit(c: &Connection, entry: &Entry) -> Result<(), StoreError> {
    let last = last_link(c)?;
    let body = chain::Body {
        time_ms: util::now_ms(),
        actor: entry.actor.clone(),
        action: entry.event.action(),
        target: entry.event.target().to_owned(),
        source: entry.source.clone(),
        details: entry.event.details().to_string(),
    };
    let linked = chain::link(last.as_ref().map(|(seq, h)| (*seq, h.as_str())), body);
    // What the record concerns, for filters and organizations (not part of the hash: derived
    // from the names it holds and the organizations at the time).
    let actor_org: Option<String> = c
        .prepare_cached("SELECT org FROM users WHERE name = ?1 COLLATE NOCASE")?
        .query_row([&entry.actor], |r| r.get(0))
        .optional()?
        .flatten();
    let session = entry.event.session();
    let machine: Option<String> = match (entry.event.machine(), session) {
        (Some(m), _) => Some(m.to_owned()),
        (None, Some(s)) => c
            .prepare_cached(
                "SELECT m.name FROM sessions s JOIN machines m ON m.id = s.machine_id WHERE s.name = ?1",
            )?
            .query_row([s], |r| r.get(0))
            .optional()?,
        (None, None) => None,
    };
    let machine_org: Option<String> = match &machine {
        Some(m) => c
            .prepare_cached("SELECT org FROM machines WHERE name = ?1")?
            .query_row([m], |r| r.get(0))
            .optional()?
            .flatten(),
        None => None,
    };
    let b = &linked.body;
    c.prepare_cached(
        "INSERT INTO audit (id, seq, time_ms, actor, action, target, source, details, prev, hash, actor_org, machine, session, machine_org) \
         VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        seq_sql(linked.seq)?,
        b.time_ms,
        b.actor,
        b.action,
        b.target,
        b.source,
        b.details,
        linked.prev,
        linked.hash,
        actor_org,
        machine,
        session,
        machine_org
    ])?;
    Ok(())
}

/// The place and hash of the chain's last record.
fn last_link(c: &Connection) -> Result<Option<(u64, String)>, StoreError> {
    let row: Option<(i64, Option<String>)> = c
        .prepare_cached("SELECT COALESCE(seq, id), hash FROM audit ORDER BY id DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.map(|(id, hash)| (u64::try_from(id).unwrap_or(0), hash.unwrap_or_default())))
}

fn seq_sql(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Invalid("the audit chain is full".into()))
}

/// Links records written before the chain existed (schema 10), once, in place order.
fn chain_backfill(c: &Connection) -> Result<(), StoreError> {
    let unlinked: i64 =
        c.query_row("SELECT COUNT(*) FROM audit WHERE hash IS NULL", [], |r| r.get(0))?;
    if unlinked == 0 {
        return Ok(());
    }
    let mut rows = Vec::new();
    {
        let mut stmt = c.prepare(
            "SELECT id, time_ms, actor, action, target, source, details FROM audit ORDER BY id",
        )?;
        let mut q = stmt.query([])?;
        while let Some(r) = q.next()? {
            let id: i64 = r.get(0)?;
            rows.push((
                id,
                chain::Body {
                    time_ms: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    source: r.get(5)?,
                    details: r.get(6)?,
                },
            ));
        }
    }
    let mut prev = chain::GENESIS.to_owned();
    for (id, body) in rows {
        let h = chain::hash(&prev, u64::try_from(id).unwrap_or(0), &body);
        c.execute("UPDATE audit SET prev = ?2, hash = ?3 WHERE id = ?1", params![id, prev, h])?;
        prev = h;
    }
    Ok(())
}

/// The last of a machine's own records held: (place, hash).
fn agent_last(c: &Connection, machine: i64) -> Result<Option<(u64, String)>, StoreError> {
    let row: Option<(i64, String)> = c
        .prepare_cached(
            "SELECT seq, hash FROM agent_audit WHERE machine_id = ?1 ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([machine], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.map(|(seq, hash)| (u64::try_from(seq).unwrap_or(0), hash)))
}

/// The hashes held of a machine's records `from..=to`.
fn agent_hashes(
    c: &Connection,
    machine: i64,
    from: u64,
    to: u64,
) -> Result<Vec<(u64, String)>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, hash FROM agent_audit WHERE machine_id = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![machine, seq_sql(from)?, seq_sql(to)?], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, hash) = row?;
        out.push((u64::try_from(seq).unwrap_or(0), hash));
    }
    Ok(out)
}

/// Deletes a machine's oldest records when it has more than `keep` (held records run without
/// gaps from the oldest to `last`), down to nine tenths of `keep`: (deleted, first kept).
fn agent_prune(
    c: &Connection,
    machine: i64,
    last: u64,
    keep: u64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let keep = keep.max(1);
    let first: Option<i64> =
        c.query_row("SELECT MIN(seq) FROM agent_audit WHERE machine_id = ?1", [machine], |r| {
            r.get(0)
        })?;
    let Some(first) = first.and_then(|f| u64::try_from(f).ok()) else { return Ok(None) };
    if last.saturating_sub(first) < keep {
        return Ok(None);
    }
    let first_kept = last + 1 - (keep - keep / 10);
    let dropped = c.execute(
        "DELETE FROM agent_audit WHERE machine_id = ?1 AND seq < ?2",
        params![machine, seq_sql(first_kept)?],
    )?;
    Ok(Some((dropped as u64, first_kept)))
}

const AUDIT_RECORD: &str =
    "SELECT id, time_ms, actor, action, target, source, details, prev, hash, COALESCE(seq, id) FROM audit";

fn linked_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<chain::Linked> {
    let seq: i64 = r.get(9)?;
    Ok(chain::Linked {
        seq: u64::try_from(seq).unwrap_or(0),
        body: chain::Body {
            time_ms: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            source: r.get(5)?,
            details: r.get(6)?,
        },
        prev: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
        hash: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
    })
}

/// As [`AUDIT_RECORD`], with the actor's organization last.
const AUDIT_LISTED: &str = "SELECT id, time_ms, actor, action, target, source, details, prev, hash, COALESCE(seq, id), actor_org FROM audit";

fn listed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let org: Option<String> = r.get(10)?;
    Ok(AuditRecord { org, ..record_of(linked_row(r)?) })
}

fn record_of(l: chain::Linked) -> AuditRecord {
    AuditRecord {
        org: None,
        id: i64::try_from(l.seq).unwrap_or(i64::MAX),
        time: util::rfc3339_ms(l.body.time_ms),
        actor: l.body.actor,
        action: l.body.action,
        target: l.body.target,
        source: l.body.source,
        details: serde_json::from_str(&l.body.details).unwrap_or(serde_json::Value::Null),
    }
}

fn role(raw: String) -> rusqlite::Result<Role> {
    raw.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn state(raw: String) -> rusqlite::Result<SessionState> {
    raw.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn scope(raw: &str) -> Scope {
    // Anything but a full login is treated as the weakest scope.
    if raw == Scope::Full.as_str() {
        Scope::Full
    } else {
        Scope::MfaSetup
    }
}

/// The states that `pick` selects, as an SQL list (`'ended', 'rejected'`); from the enum, so
/// the SQL cannot drift from the states it names.
fn states(pick: impl Fn(SessionState) -> bool) -> String {
    let names: Vec<String> = SessionState::ALL
        .into_iter()
        .filter(|s| pick(*s))
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    names.join(", ")
}

/// Machines an organization may see: its own, and its contracted operators'.
const VISIBLE_TO_ORG: &str =
    "(m.org = ?9 COLLATE NOCASE OR m.org IN (SELECT operator FROM contracts WHERE provider = ?9 COLLATE NOCASE))";

const SESSION: &str = "SELECT s.id, s.name, s.machine_id, m.name, s.targets, s.reason, s.state, \
     s.approval_required, s.valid_from, s.valid_until, s.created_by, s.created_at, s.decided_by, s.ended_by, m.org, s.record, \
     s.approval_nonce, s.approval_key, s.approval_signature, s.tech_keys \
     FROM sessions s JOIN machines m ON m.id = s.machine_id";

fn session_row(c: &Connection, r: &rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    let id: i64 = r.get(0)?;
    let targets: String = r.get(4)?;
    let users = c
        .prepare_cached(
            "SELECT u.id, u.name FROM session_users su JOIN users u ON u.id = su.user_id \
             WHERE su.session_id = ?1 ORDER BY u.name",
        )?
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<(i64, String)>, _>>()?;
    Ok(Session {
        id,
        name: r.get(1)?,
        machine_id: r.get(2)?,
        machine: r.get(3)?,
        machine_org: r.get(14)?,
        targets: serde_json::from_str(&targets).unwrap_or_default(),
        users,
        reason: r.get(5)?,
        state: state(r.get(6)?)?,
        approval_required: r.get::<_, i64>(7)? != 0,
        from: r.get(8)?,
        until: r.get(9)?,
        created_by: r.get(10)?,
        created_at: r.get(11)?,
        decided_by: r.get(12)?,
        ended_by: r.get(13)?,
        record: r.get::<_, i64>(15)? != 0,
        nonce: r.get::<_, Option<String>>(16)?.unwrap_or_default(),
        approval: match (r.get::<_, Option<String>>(17)?, r.get::<_, Option<String>>(18)?) {
            (Some(key), Some(signature)) => Some(SignedApproval { key, signature }),
            _ => None,
        },
        tech_keys: serde_json::from_str(&r.get::<_, String>(19)?).unwrap_or_default(),
    })
}

/// Whether approvals on the machine must be signed, and by whom (what its agent reported).
fn signing_facts(c: &Connection, machine: i64) -> Result<SigningFacts, StoreError> {
    c.prepare_cached(
        "SELECT m.name, m.org, m.trust, m.approvers, o.require_signed FROM machines m \
         LEFT JOIN orgs o ON o.name = m.org COLLATE NOCASE WHERE m.id = ?1",
    )?
    .query_row([machine], |r| {
        Ok(SigningFacts {
            machine: r.get(0)?,
            machine_org: r.get(1)?,
            agent_requires: r.get::<_, Option<String>>(2)?.as_deref()
                == Some(fernwart_proto::approval::LEVEL_SIGNED),
            approvers: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
            operator_requires: r.get::<_, Option<i64>>(4)?.unwrap_or(0) != 0,
        })
    })
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("no machine {machine}")))
}

const WINDOW: &str = "SELECT w.id, w.machine_id, m.name, w.provider, w.days, w.start_min, w.end_min, \
     w.zone, w.created_by, w.created_at, m.org FROM maintenance_windows w JOIN machines m ON m.id = w.machine_id";

/// Windows with the organization of their machine.
fn windows_with_org(
    c: &Connection,
    clause: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<(Window, Option<String>)>, StoreError> {
    let mut stmt = c.prepare_cached(&format!("{WINDOW} {clause}"))?;
    let rows = stmt.query_map(args, |r| {
        let days: u8 = r.get(4)?;
        let days = Days::from_bits(days).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Integer,
                "days".into(),
            )
        })?;
        Ok((
            Window {
                id: r.get(0)?,
                machine_id: r.get(1)?,
                machine: r.get(2)?,
                provider: r.get(3)?,
                days,
                start: r.get(5)?,
                end: r.get(6)?,
                zone: r.get(7)?,
                created_by: r.get(8)?,
                created_at: r.get(9)?,
            },
            r.get(10)?,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn windows_where(
    c: &Connection,
    clause: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<Window>, StoreError> {
    Ok(windows_with_org(c, clause, args)?.into_iter().map(|(w, _)| w).collect())
}

/// The providers under contract with `operator`.
fn providers_of(c: &Connection, operator: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT provider FROM contracts WHERE operator = ?1 COLLATE NOCASE ORDER BY provider",
    )?;
    let rows = stmt.query_map([operator], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn sessions_where(
    c: &Connection,
    clause: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<Session>, StoreError> {
    let mut stmt = c.prepare_cached(&format!("{SESSION} {clause}"))?;
    let rows = stmt.query_map(args, |r| session_row(c, r))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn session_by_id(c: &Connection, id: i64) -> Result<Option<Session>, StoreError> {
    Ok(sessions_where(c, "WHERE s.id = ?1", [id])?.pop())
}

fn caller_row(c: &Connection, token_hash: &str) -> Result<Option<Caller>, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT u.id, u.name, u.role, t.scope, t.expires_at, u.disabled, u.expires_at, u.org, \
             COALESCE(t.last_used_at, t.created_at) FROM auth_tokens t \
             JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?1",
        )?
        .query_row([token_hash], |r| {
            Ok(Caller {
                user_id: r.get(0)?,
                name: r.get(1)?,
                role: role(r.get(2)?)?,
                scope: scope(&r.get::<_, String>(3)?),
                login_expires: r.get(4)?,
                disabled: r.get::<_, i64>(5)? != 0,
                account_expires: r.get(6)?,
                source: String::new(),
                api_token: None,
                org: r.get(7)?,
                serves: Vec::new(),
                last_used: r.get(8)?,
            })
        })
        .optional()?;
    if let Some(mut caller) = row {
        caller.serves = served(c, caller.org.as_deref())?;
        return Ok(Some(caller));
    }
    // An API token: it acts under its own name, with its role; revoked counts as disabled.
    c.prepare_cached(
        "SELECT id, role, expires_at, revoked_at, org FROM api_tokens WHERE token_hash = ?1",
    )?
    .query_row([token_hash], |r| {
        let id: i64 = r.get(0)?;
        let serves = Vec::new();
        Ok(Caller {
            user_id: 0,
            name: super::token_name(id),
            role: role(r.get(1)?)?,
            scope: Scope::Full,
            login_expires: r.get(2)?,
            account_expires: None,
            disabled: r.get::<_, Option<i64>>(3)?.is_some(),
            source: String::new(),
            api_token: Some(id),
            org: r.get(4)?,
            serves,
            last_used: None,
        })
    })
    .optional()?
    .map(|mut caller| {
        caller.serves = served(c, caller.org.as_deref())?;
        Ok::<_, StoreError>(caller)
    })
    .transpose()
}

/// The operators an organization services under contract.
fn served(c: &Connection, org: Option<&str>) -> Result<Vec<String>, StoreError> {
    let Some(org) = org else { return Ok(Vec::new()) };
    let mut stmt =
        c.prepare_cached("SELECT operator FROM contracts WHERE provider = ?1 COLLATE NOCASE")?;
    let rows = stmt.query_map([org], |r| r.get(0))?;
    Ok(rows.collect::<Result<Vec<String>, _>>()?)
}

/// The kind of an organization, if it exists.
fn org_kind(c: &Connection, name: &str) -> Result<Option<OrgKind>, StoreError> {
    let kind: Option<String> = c
        .prepare_cached("SELECT kind FROM orgs WHERE name = ?1 COLLATE NOCASE")?
        .query_row([name], |r| r.get(0))
        .optional()?;
    kind.map(|k| k.parse().map_err(StoreError::Invalid)).transpose()
}

/// Moves one session by compare-and-set, with its record.
fn transition(
    tx: &Transaction<'_>,
    id: i64,
    from: SessionState,
    to: SessionState,
    by: &str,
    now: UnixSecs,
    entry: &Entry,
) -> Result<Option<Applied>, StoreError> {
    transition_with(tx, id, from, to, None, by, now, entry)
}

/// [`transition`], storing the approver's signature of an approval with it.
#[allow(clippy::too_many_arguments)]
fn transition_with(
    tx: &Transaction<'_>,
    id: i64,
    from: SessionState,
    to: SessionState,
    approval: Option<&SignedApproval>,
    by: &str,
    now: UnixSecs,
    entry: &Entry,
) -> Result<Option<Applied>, StoreError> {
    let Some(before) = session_by_id(tx, id)? else { return Ok(None) };
    let n = match to {
        SessionState::Approved | SessionState::Rejected => tx.execute(
            "UPDATE sessions SET state = ?3, decided_by = ?4, decided_at = ?5 WHERE id = ?1 AND state = ?2",
            params![id, from.as_str(), to.as_str(), by, now],
        )?,
        s if s.is_terminal() => tx.execute(
            "UPDATE sessions SET state = ?3, ended_by = ?4, ended_at = ?5 WHERE id = ?1 AND state = ?2",
            params![id, from.as_str(), to.as_str(), by, now],
        )?,
        _ => tx.execute(
            "UPDATE sessions SET state = ?3 WHERE id = ?1 AND state = ?2",
            params![id, from.as_str(), to.as_str()],
        )?,
    };
    if n != 1 {
        return Ok(None);
    }
    if let Some(a) = approval {
        tx.execute(
            "UPDATE sessions SET approval_key = ?2, approval_signature = ?3 WHERE id = ?1",
            params![id, a.key, a.signature],
        )?;
    }
    audit(tx, entry)?;
    let after = session_by_id(tx, id)?
        .ok_or_else(|| StoreError::NotFound(format!("session {id} vanished")))?;
    Ok(Some(Applied { before, after }))
}

impl Backend for Sqlite {
    fn record(&self, entries: &[Entry]) -> Result<(), StoreError> {
        self.tx(|tx| entries.iter().try_for_each(|e| audit(tx, e)))
    }

    fn audit_list(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(|c| {
            // Every filter is a parameter; an absent one is NULL and matches all.
            let mut stmt = c.prepare_cached(&format!(
                "{AUDIT_LISTED} WHERE id > ?1 \
                 AND (?2 IS NULL OR time_ms >= ?2) AND (?3 IS NULL OR time_ms < ?3) \
                 AND (?4 IS NULL OR actor = ?4 COLLATE NOCASE) \
                 AND (?5 IS NULL OR actor_org = ?5 COLLATE NOCASE OR machine_org = ?5 COLLATE NOCASE) \
                 AND (?6 IS NULL OR machine = ?6) AND (?7 IS NULL OR session = ?7) \
                 AND (?8 IS NULL OR action = ?8 OR action LIKE ?8 || '.%') \
                 AND (?9 IS NULL OR actor = ?9 COLLATE NOCASE) \
                 AND (?10 IS NULL OR actor_org = ?10 COLLATE NOCASE OR machine_org = ?10 COLLATE NOCASE) \
                 ORDER BY id LIMIT ?11"
            ))?;
            let rows = stmt.query_map(
                params![
                    f.after,
                    f.since_ms,
                    f.until_ms,
                    f.actor,
                    f.org,
                    f.machine,
                    f.session,
                    f.kind,
                    f.only_actor,
                    f.only_org,
                    f.limit
                ],
                listed_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn audit_chain(&self, after: u64, limit: usize) -> Result<Vec<chain::Linked>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached(&format!("{AUDIT_RECORD} WHERE id > ?1 ORDER BY id LIMIT ?2"))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![seq_sql(after)?, limit], linked_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, hash, time_ms, signature FROM audit_checkpoints ORDER BY seq",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Checkpoint {
                    seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    hash: r.get(1)?,
                    time_ms: r.get(2)?,
                    signature: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn audit_checkpoint(
        &self,
        sign: &dyn Fn(&[u8]) -> String,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        self.tx(|tx| {
            let Some((seq, hash)) = last_link(tx)? else { return Ok(None) };
            let signed: Option<i64> =
                tx.query_row("SELECT MAX(seq) FROM audit_checkpoints", [], |r| r.get(0))?;
            if signed.is_some_and(|s| s >= seq_sql(seq).unwrap_or(i64::MAX)) {
                return Ok(None);
            }
            let signature = sign(&chain::checkpoint_message(seq, &hash));
            tx.execute(
                "INSERT INTO audit_checkpoints (seq, hash, time_ms, signature) VALUES (?1, ?2, ?3, ?4)",
                params![seq_sql(seq)?, hash, now_ms, signature],
            )?;
            Ok(Some(seq))
        })
    }

    fn released_sessions(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT s.name, m.name FROM sessions s JOIN machines m ON m.id = s.machine_id \
                 WHERE s.state IN ({}) ORDER BY s.name",
                states(|st| matches!(st, SessionState::Approved | SessionState::Active))
            ))?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn machine_cert_ends(&self) -> Result<Vec<(String, UnixSecs)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, cert_not_after FROM machines WHERE revoked = 0 AND cert_not_after IS NOT NULL ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn delivery_cursor(&self, sink: &str) -> Result<u64, StoreError> {
        self.read(|c| {
            let seq: Option<i64> = c
                .query_row("SELECT seq FROM delivery_cursors WHERE sink = ?1", [sink], |r| r.get(0))
                .optional()?;
            Ok(seq.map_or(0, |s| u64::try_from(s).unwrap_or(0)))
        })
    }

    fn delivery_advance(&self, sink: &str, seq: u64) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO delivery_cursors (sink, seq) VALUES (?1, ?2) \
                 ON CONFLICT (sink) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                params![sink, seq_sql(seq)?],
            )?;
            Ok(())
        })
    }

    fn agent_audit_last(&self, machine: i64) -> Result<u64, StoreError> {
        self.read(|c| Ok(agent_last(c, machine)?.map_or(0, |(seq, _)| seq)))
    }

    fn agent_audit_append(
        &self,
        machine: i64,
        records: &[chain::Linked],
        received_at: UnixSecs,
        keep: u64,
        entries: &dyn Fn(&AgentBatch) -> Vec<Entry>,
    ) -> Result<AgentBatch, StoreError> {
        self.tx(|tx| {
            let last = agent_last(tx, machine)?;
            let held_up_to = last.as_ref().map_or(0, |(seq, _)| *seq);
            // The copies held of the places the batch starts with, to compare.
            let held = match records.first() {
                Some(first) if first.seq <= held_up_to => {
                    let to = records.last().map_or(first.seq, |r| r.seq).min(held_up_to);
                    agent_hashes(tx, machine, first.seq, to)?
                }
                _ => Vec::new(),
            };
            let last_ref = last.as_ref().map(|(seq, hash)| (*seq, hash.as_str()));
            let outcome = match crate::audit::agent::check(last_ref, &held, records) {
                Err(refusal) => AgentBatch::Refused { last: held_up_to, refusal },
                Ok(plan) => {
                    let new = records.get(plan.known..).unwrap_or_default();
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO agent_audit (machine_id, seq, prev, hash, time_ms, actor, action, target, source, details, received_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    )?;
                    for r in new {
                        let b = &r.body;
                        insert.execute(params![
                            machine,
                            seq_sql(r.seq)?,
                            r.prev,
                            r.hash,
                            b.time_ms,
                            b.actor,
                            b.action,
                            b.target,
                            b.source,
                            b.details,
                            received_at
                        ])?;
                    }
                    let last = new.last().map_or(held_up_to, |r| r.seq);
                    let pruned =
                        if new.is_empty() { None } else { agent_prune(tx, machine, last, keep)? };
                    AgentBatch::Stored {
                        last,
                        added: new.len() as u64,
                        starts_at: plan.starts_at,
                        pruned,
                    }
                }
            };
            for e in entries(&outcome) {
                audit(tx, &e)?;
            }
            Ok(outcome)
        })
    }

    fn agent_audit(
        &self,
        machine: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, prev, hash, time_ms, actor, action, target, source, details, received_at \
                 FROM agent_audit WHERE machine_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![machine, after, limit], |r| {
                Ok(AgentRecord {
                    record: chain::Linked {
                        seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        prev: r.get(1)?,
                        hash: r.get(2)?,
                        body: chain::Body {
                            time_ms: r.get(3)?,
                            actor: r.get(4)?,
                            action: r.get(5)?,
                            target: r.get(6)?,
                            source: r.get(7)?,
                            details: r.get(8)?,
                        },
                    },
                    received_at: r.get(9)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn login_subject(&self, name: &str) -> Result<Option<LoginSubject>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT id, name, role, password_hash, totp_secret, totp_confirmed, disabled, expires_at \
                 FROM users WHERE name = ?1 COLLATE NOCASE",
            )?
            .query_row([name], |r| {
                Ok(LoginSubject {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    role: role(r.get(2)?)?,
                    password_hash: r.get(3)?,
                    totp_secret: r.get(4)?,
                    totp_confirmed: r.get::<_, i64>(5)? != 0,
                    disabled: r.get::<_, i64>(6)? != 0,
                    expires_at: r.get(7)?,
                })
            })
            .optional()?)
        })
    }

    fn claim_login_attempt(
        &self,
        user: i64,
        now: UnixSecs,
        threshold: i64,
        lock_until: UnixSecs,
    ) -> Result<Attempt, StoreError> {
        self.tx(|tx| {
            // SQLite evaluates every SET expression on the row as it was: `failed_logins` on
            // the right is the old count.
            let n: Option<i64> = tx
                .query_row(
                    "UPDATE users SET \
                       failed_logins = CASE WHEN failed_logins >= ?3 THEN 1 ELSE failed_logins + 1 END, \
                       locked_until = CASE WHEN failed_logins + 1 = ?3 OR (?3 = 1 AND failed_logins >= ?3) \
                                      THEN ?4 ELSE NULL END \
                     WHERE id = ?1 AND (locked_until IS NULL OR locked_until <= ?2) \
                     RETURNING failed_logins",
                    params![user, now, threshold, lock_until],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(n.map_or(Attempt::Locked, Attempt::Counted))
        })
    }

    fn clear_failures(&self, user: i64) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = ?1",
                [user],
            )?;
            Ok(())
        })
    }

    fn login_failed(&self, entries: &[Entry]) -> Result<(), StoreError> {
        self.tx(|tx| entries.iter().try_for_each(|e| audit(tx, e)))
    }

    fn use_totp_step(&self, user: i64, step: u64) -> Result<bool, StoreError> {
        let step = i64::try_from(step)
            .map_err(|_| StoreError::Invalid("TOTP step out of range".into()))?;
        self.tx(|tx| {
            // Steps older than the accepted window can never be replayed: forget them.
            tx.execute(
                "DELETE FROM totp_steps WHERE user_id = ?1 AND step < ?2",
                params![user, step - 4],
            )?;
            let n = tx.execute(
                "INSERT INTO totp_steps (user_id, step) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![user, step],
            )?;
            Ok(n == 1)
        })
    }

    fn webauthn_challenge_new(
        &self,
        challenge: &str,
        purpose: ChallengePurpose,
        user: Option<i64>,
        now: UnixSecs,
        expires: UnixSecs,
    ) -> Result<bool, StoreError> {
        self.tx(|tx| {
            tx.execute("DELETE FROM webauthn_challenges WHERE expires_at <= ?1", [now])?;
            // Counted per purpose: a flood of login challenges (asked before any login) does
            // not stop a logged-in user from registering a key.
            let pending: i64 = tx.query_row(
                "SELECT COUNT(*) FROM webauthn_challenges WHERE purpose = ?1",
                [purpose.as_str()],
                |r| r.get(0),
            )?;
            if pending >= super::MAX_CHALLENGES {
                return Ok(false);
            }
            let n = tx.execute(
                "INSERT INTO webauthn_challenges (challenge, purpose, user_id, expires_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![challenge, purpose.as_str(), user, expires],
            )?;
            Ok(n == 1)
        })
    }

    fn webauthn_challenge_take(
        &self,
        challenge: &str,
        purpose: ChallengePurpose,
        user: Option<i64>,
        now: UnixSecs,
    ) -> Result<bool, StoreError> {
        self.tx(|tx| {
            let found: Option<(String, Option<i64>, i64)> = tx
                .query_row(
                    "SELECT purpose, user_id, expires_at FROM webauthn_challenges WHERE challenge = ?1",
                    [challenge],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((p, u, expires)) = found else { return Ok(false) };
            // Gone whatever it was: a challenge shown to a wrong ceremony is spent too.
            let n = tx.execute("DELETE FROM webauthn_challenges WHERE challenge = ?1", [challenge])?;
            Ok(n == 1 && p == purpose.as_str() && u == user && expires > now)
        })
    }

    fn webauthn_add(
        &self,
        user: i64,
        name: &str,
        credential_id: &str,
        public_key: &str,
        sign_count: u32,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<bool, StoreError> {
        self.tx(|tx| {
            let count: i64 = tx.query_row(
                "SELECT COUNT(*) FROM webauthn_credentials WHERE user_id = ?1",
                [user],
                |r| r.get(0),
            )?;
            if count >= super::MAX_CREDENTIALS {
                return Ok(false);
            }
            let n = tx.execute(
                "INSERT INTO webauthn_credentials (user_id, name, credential_id, public_key, sign_count, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                params![user, name, credential_id, public_key, i64::from(sign_count), now],
            )?;
            if n == 1 {
                audit(tx, entry)?;
            }
            Ok(n == 1)
        })
    }

    fn webauthn_list(&self, user: i64) -> Result<Vec<Credential>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT id, user_id, name, credential_id, public_key, sign_count, created_at, last_used \
                 FROM webauthn_credentials WHERE user_id = ?1 ORDER BY id",
            )?;
            let rows = st.query_map([user], credential_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn webauthn_credential(&self, credential_id: &str) -> Result<Option<Credential>, StoreError> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT id, user_id, name, credential_id, public_key, sign_count, created_at, last_used \
                 FROM webauthn_credentials WHERE credential_id = ?1",
                [credential_id],
                credential_row,
            )
            .optional()?)
        })
    }

    fn webauthn_remove(&self, user: i64, id: i64, entry: &Entry) -> Result<bool, StoreError> {
        self.tx(|tx| {
            let n = tx.execute(
                "DELETE FROM webauthn_credentials WHERE id = ?1 AND user_id = ?2",
                params![id, user],
            )?;
            if n == 1 {
                audit(tx, entry)?;
            }
            Ok(n == 1)
        })
    }

    fn webauthn_counter(
        &self,
        id: i64,
        old: u32,
        new: u32,
        now: UnixSecs,
    ) -> Result<bool, StoreError> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE webauthn_credentials SET sign_count = ?3, last_used = ?4 \
                 WHERE id = ?1 AND sign_count = ?2",
                params![id, i64::from(old), i64::from(new), now],
            )?;
            Ok(n == 1)
        })
    }

    fn login_succeeded(
        &self,
        user: i64,
        token_hash: &str,
        scope: Scope,
        now: UnixSecs,
        until: UnixSecs,
        entry: &Entry,
    ) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.execute("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = ?1", [user])?;
            tx.execute("DELETE FROM auth_tokens WHERE expires_at <= ?1", [now])?;
            tx.execute(
                "INSERT INTO auth_tokens (token_hash, user_id, scope, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![token_hash, user, scope.as_str(), now, until],
            )?;
            audit(tx, entry)
        })
    }

    fn login_used(&self, token_hash: &str, now: UnixSecs) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE auth_tokens SET last_used_at = ?2 WHERE token_hash = ?1",
                params![token_hash, now],
            )?;
            Ok(())
        })
    }

    fn logout(&self, token_hash: &str, entry: &Entry) -> Result<bool, StoreError> {
        self.tx(|tx| {
            let n = tx.execute("DELETE FROM auth_tokens WHERE token_hash = ?1", [token_hash])?;
            if n == 1 {
                audit(tx, entry)?;
            }
            Ok(n == 1)
        })
    }

    fn password_hashes(&self, user: i64, earlier: usize) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let current: String =
                c.query_row("SELECT password_hash FROM users WHERE id = ?1", [user], |r| r.get(0))?;
            let mut stmt = c.prepare_cached(
                "SELECT password_hash FROM password_history WHERE user_id = ?1 \
                 ORDER BY changed_at DESC, rowid DESC LIMIT ?2",
            )?;
            let limit = i64::try_from(earlier).unwrap_or(i64::MAX);
            let older = stmt.query_map(params![user, limit], |r| r.get(0))?;
            let mut all = vec![current];
            for h in older {
                all.push(h?);
            }
            Ok(all)
        })
    }

    fn password_change(
        &self,
        user: i64,
        old_hash: &str,
        new_hash: &str,
        keep_token: &str,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<bool, StoreError> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE users SET password_hash = ?3, failed_logins = 0, locked_until = NULL \
                 WHERE id = ?1 AND password_hash = ?2",
                params![user, old_hash, new_hash],
            )?;
            if n != 1 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO password_history (user_id, password_hash, changed_at) VALUES (?1, ?2, ?3)",
                params![user, old_hash, now],
            )?;
            // Keep what any policy may ask (at most 24 earlier passwords).
            tx.execute(
                "DELETE FROM password_history WHERE user_id = ?1 AND rowid NOT IN \
                 (SELECT rowid FROM password_history WHERE user_id = ?1 ORDER BY changed_at DESC, rowid DESC LIMIT 24)",
                [user],
            )?;
            tx.execute(
                "DELETE FROM auth_tokens WHERE user_id = ?1 AND token_hash != ?2",
                params![user, keep_token],
            )?;
            audit(tx, entry)?;
            Ok(true)
        })
    }

    fn api_token_create(
        &self,
        token_hash: &str,
        role: Role,
        org: Option<&str>,
        created_by: &str,
        now: UnixSecs,
        expires_at: UnixSecs,
        entry: &dyn Fn(i64) -> Entry,
    ) -> Result<i64, StoreError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO api_tokens (token_hash, role, org, created_by, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![token_hash, role.as_str(), org, created_by, now, expires_at],
            )?;
            let id = tx.last_insert_rowid();
            audit(tx, &entry(id))?;
            Ok(id)
        })
    }

    fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, role, org, created_by, created_at, expires_at, revoked_at FROM api_tokens ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(ApiTokenRecord {
                    id: r.get(0)?,
                    role: role(r.get(1)?)?,
                    org: r.get(2)?,
                    created_by: r.get(3)?,
                    created_at: r.get(4)?,
                    expires_at: r.get(5)?,
                    revoked: r.get::<_, Option<i64>>(6)?.is_some(),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn api_token_revoke(&self, id: i64, now: UnixSecs, entry: &Entry) -> Result<bool, StoreError> {
        self.tx(|tx| {
            if tx
                .query_row("SELECT 1 FROM api_tokens WHERE id = ?1", [id], |_| Ok(()))
                .optional()?
                .is_none()
            {
                return Err(StoreError::NotFound(format!("no API token {id}")));
            }
            let n = tx.execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now],
            )?;
            if n == 1 {
                audit(tx, entry)?;
            }
            Ok(n == 1)
        })
    }

    fn caller(&self, token_hash: &str) -> Result<Option<Caller>, StoreError> {
        self.read(|c| caller_row(c, token_hash))
    }

    fn mfa_state(&self, user: i64) -> Result<(Option<String>, bool), StoreError> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT totp_secret, totp_confirmed FROM users WHERE id = ?1",
                [user],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)),
            )?)
        })
    }

    fn mfa_begin(&self, user: i64, secret: &str, entry: &Entry) -> Result<bool, StoreError> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE users SET totp_secret = ?2 WHERE id = ?1 AND totp_confirmed = 0",
                params![user, secret],
            )?;
            if n == 1 {
                audit(tx, entry)?;
            }
            Ok(n == 1)
        })
    }

    fn mfa_confirm(
        &self,
        user: i64,
        secret: &str,
        step: u64,
        entry: &Entry,
    ) -> Result<bool, StoreError> {
        let step = i64::try_from(step)
            .map_err(|_| StoreError::Invalid("TOTP step out of range".into()))?;
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE users SET totp_confirmed = 1 WHERE id = ?1 AND totp_confirmed = 0 AND totp_secret = ?2",
                params![user, secret],
            )?;
            if n != 1 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO totp_steps (user_id, step) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![user, step],
            )?;
            tx.execute("DELETE FROM auth_tokens WHERE user_id = ?1 AND scope = ?2", params![user, Scope::MfaSetup.as_str()])?;
            audit(tx, entry)?;
            Ok(true)
        })
    }

    fn user_add(&self, u: &NewUser, now: UnixSecs, entry: &Entry) -> Result<i64, StoreError> {
        self.tx(|tx| {
            let exists: Option<String> = tx
                .query_row("SELECT name FROM users WHERE name = ?1 COLLATE NOCASE", [&u.name], |r| r.get(0))
                .optional()?;
            if let Some(existing) = exists {
                return Err(StoreError::Conflict(if existing == u.name {
                    format!("user {} exists", u.name)
                } else {
                    format!("user {} exists (as {existing}; names are compared without case)", u.name)
                }));
            }
            if let Some(org) = u.org.as_deref() {
                if org_kind(tx, org)?.is_none() {
                    return Err(StoreError::NotFound(format!(
                        "no organization {org}: add it first with `fernwart org add`"
                    )));
                }
            }
            tx.execute(
                "INSERT INTO users (name, role, org, password_hash, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![u.name, u.role.as_str(), u.org, u.password_hash, u.expires_at, now],
            )?;
            let id = tx.last_insert_rowid();
            audit(tx, entry)?;
            Ok(id)
        })
    }

    fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, role, org, disabled, totp_confirmed, expires_at FROM users ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(UserRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    role: role(r.get(2)?)?,
                    org: r.get(3)?,
                    disabled: r.get::<_, i64>(4)? != 0,
                    mfa: r.get::<_, i64>(5)? != 0,
                    expires_at: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn user_disable(&self, name: &str, entry: &Entry) -> Result<i64, StoreError> {
        self.tx(|tx| {
            let id: Option<i64> = tx
                .query_row("SELECT id FROM users WHERE name = ?1 COLLATE NOCASE", [name], |r| {
                    r.get(0)
                })
                .optional()?;
            let id = id.ok_or_else(|| StoreError::NotFound(format!("no user {name}")))?;
            tx.execute("UPDATE users SET disabled = 1 WHERE id = ?1", [id])?;
            tx.execute("DELETE FROM auth_tokens WHERE user_id = ?1", [id])?;
            // The API tokens they created leave with them.
            tx.execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE created_by = (SELECT name FROM users WHERE id = ?1) \
                 AND revoked_at IS NULL",
                params![id, util::now()],
            )?;
            audit(tx, entry)?;
            Ok(id)
        })
    }

    fn org_add(
        &self,
        name: &str,
        kind: OrgKind,
        allow_no_approval: bool,
        max_session_secs: Option<i64>,
        require_signed: bool,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<(), StoreError> {
        self.tx(|tx| {
            if org_kind(tx, name)?.is_some() {
                return Err(StoreError::Conflict(format!("organization {name} exists")));
            }
            tx.execute(
                "INSERT INTO orgs (name, kind, created_at, allow_no_approval, max_session_secs, require_signed) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![name, kind.as_str(), now, allow_no_approval, max_session_secs, require_signed],
            )?;
            audit(tx, entry)
        })
    }

    fn org_set(
        &self,
        name: &str,
        change: crate::domain::org::OrgChange,
        entry: &dyn Fn(crate::domain::org::OrgPolicy) -> Entry,
    ) -> Result<crate::domain::org::OrgPolicy, StoreError> {
        use crate::domain::org::OrgPolicy;
        self.tx(|tx| {
            let found = tx
                .prepare_cached(
                    "SELECT kind, allow_no_approval, max_session_secs, require_signed FROM orgs \
                     WHERE name = ?1 COLLATE NOCASE",
                )?
                .query_row([name], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        OrgPolicy {
                            allow_no_approval: r.get::<_, i64>(1)? != 0,
                            max_session_secs: r.get(2)?,
                            require_signed: r.get::<_, i64>(3)? != 0,
                        },
                    ))
                })
                .optional()?;
            let Some((kind, now)) = found else {
                return Err(StoreError::NotFound(format!("no organization {name}")));
            };
            let kind: OrgKind = kind.parse().map_err(StoreError::Invalid)?;
            let next = change.apply(kind, now).map_err(StoreError::Invalid)?;
            tx.execute(
                "UPDATE orgs SET allow_no_approval = ?2, max_session_secs = ?3, require_signed = ?4 \
                 WHERE name = ?1 COLLATE NOCASE",
                params![name, next.allow_no_approval, next.max_session_secs, next.require_signed],
            )?;
            audit(tx, &entry(next))?;
            Ok(next)
        })
    }

    fn settings(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT key, value FROM settings ORDER BY key")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn settings_set(
        &self,
        writes: &[SettingWrite],
        by: &str,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<bool, StoreError> {
        self.tx(|tx| {
            for w in writes {
                let stored: Option<String> = tx
                    .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
                    .query_row([&w.key], |r| r.get(0))
                    .optional()?;
                if stored != w.expected {
                    return Ok(false);
                }
            }
            for w in writes {
                tx.execute(
                    "INSERT INTO settings (key, value, changed_by, changed_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (key) DO UPDATE SET value = ?2, changed_by = ?3, changed_at = ?4",
                    params![w.key, w.value, by, now],
                )?;
            }
            audit(tx, entry)?;
            Ok(true)
        })
    }

    fn orgs(&self) -> Result<Vec<OrgRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT name, kind, allow_no_approval, max_session_secs, require_signed FROM orgs ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)? != 0,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, i64>(4)? != 0,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, kind, allow_no_approval, max_session_secs, require_signed) = row?;
                let kind: OrgKind = kind.parse().map_err(|e: String| StoreError::Invalid(e))?;
                let sql = match kind {
                    OrgKind::Provider => {
                        "SELECT operator FROM contracts WHERE provider = ?1 ORDER BY operator"
                    }
                    OrgKind::Operator => {
                        "SELECT provider FROM contracts WHERE operator = ?1 ORDER BY provider"
                    }
                };
                let contracts = c
                    .prepare_cached(sql)?
                    .query_map([&name], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                out.push(OrgRecord {
                    name,
                    kind,
                    contracts,
                    allow_no_approval,
                    max_session_secs,
                    require_signed,
                });
            }
            Ok(out)
        })
    }

    fn contract_add(
        &self,
        provider: &str,
        operator: &str,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<(), StoreError> {
        self.tx(|tx| {
            match org_kind(tx, provider)? {
                None => return Err(StoreError::NotFound(format!("no organization {provider}"))),
                Some(OrgKind::Operator) => {
                    return Err(StoreError::Invalid(format!("{provider} is an operator, not a provider")))
                }
                Some(OrgKind::Provider) => {}
            }
            match org_kind(tx, operator)? {
                None => return Err(StoreError::NotFound(format!("no organization {operator}"))),
                Some(OrgKind::Provider) => {
                    return Err(StoreError::Invalid(format!("{operator} is a provider, not an operator")))
                }
                Some(OrgKind::Operator) => {}
            }
            let n = tx.execute(
                "INSERT INTO contracts (provider, operator, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![provider, operator, now],
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("{provider} services {operator} already")));
            }
            audit(tx, entry)
        })
    }

    fn machine_add(
        &self,
        name: &str,
        org: Option<&str>,
        token_hash: &str,
        now: UnixSecs,
        token_expires: UnixSecs,
        entry: &Entry,
    ) -> Result<i64, StoreError> {
        self.tx(|tx| {
            if tx.query_row("SELECT 1 FROM machines WHERE name = ?1", [name], |_| Ok(())).optional()?.is_some() {
                return Err(StoreError::Conflict(format!("machine {name} exists")));
            }
            if let Some(org) = org {
                match org_kind(tx, org)? {
                    None => {
                        return Err(StoreError::NotFound(format!(
                            "no organization {org}: add it first with `fernwart org add`"
                        )))
                    }
                    Some(OrgKind::Provider) => {
                        return Err(StoreError::Invalid(format!(
                            "{org} is a provider: machines belong to operators"
                        )))
                    }
                    Some(OrgKind::Operator) => {}
                }
            }
            tx.execute("INSERT INTO machines (name, org, created_at) VALUES (?1, ?2, ?3)", params![name, org, now])?;
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO enrol_tokens (token_hash, machine_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![token_hash, id, now, token_expires],
            )?;
            audit(tx, entry)?;
            Ok(id)
        })
    }

    fn machines(&self, org: Option<&str>) -> Result<Vec<MachineRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT m.id, m.name, m.org, m.targets, m.enrolled_at, m.revoked, m.last_seen, m.trust, m.approvers, \
                 COALESCE((SELECT o.require_signed FROM orgs o WHERE o.name = m.org COLLATE NOCASE), 0) FROM machines m \
                 WHERE (?9 IS NULL OR {VISIBLE_TO_ORG}) ORDER BY m.name"
            ))?;
            let none: Option<i64> = None;
            let rows = stmt.query_map(params![none, none, none, none, none, none, none, none, org], |r| {
                let targets: String = r.get(3)?;
                Ok(MachineRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    org: r.get(2)?,
                    targets: serde_json::from_str(&targets).unwrap_or_default(),
                    enrolled_at: r.get(4)?,
                    revoked: r.get::<_, i64>(5)? != 0,
                    last_seen: r.get(6)?,
                    trust: r.get(7)?,
                    approvers: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default(),
                    operator_requires_signed: r.get::<_, i64>(9)? != 0,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn machine_revoke(
        &self,
        name: &str,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<(i64, Vec<Applied>), StoreError> {
        self.tx(|tx| {
            let id: Option<i64> = tx
                .query_row("SELECT id FROM machines WHERE name = ?1", [name], |r| r.get(0))
                .optional()?;
            let id = id.ok_or_else(|| StoreError::NotFound(format!("no machine {name}")))?;
            tx.execute("UPDATE machines SET revoked = 1 WHERE id = ?1", [id])?;
            // Revocation is final: no unused token may enrol the machine again.
            tx.execute("DELETE FROM enrol_tokens WHERE machine_id = ?1 AND used_at IS NULL", [id])?;
            let open = sessions_where(
                tx,
                &format!(
                    "WHERE s.machine_id = ?1 AND s.state NOT IN ({})",
                    states(SessionState::is_terminal)
                ),
                [id],
            )?;
            let mut applied = Vec::new();
            for s in open {
                let change = Entry::new(
                    entry.actor.clone(),
                    entry.source.clone(),
                    Event::SessionChange {
                        session: s.name.clone(),
                        event: SessionEvent::Revoke,
                        from: s.state,
                        to: SessionState::Revoked,
                    },
                );
                if let Some(a) = transition(
                    tx,
                    s.id,
                    s.state,
                    SessionState::Revoked,
                    &entry.actor,
                    now,
                    &change,
                )? {
                    applied.push(a);
                }
            }
            audit(tx, entry)?;
            Ok((id, applied))
        })
    }

    fn enrol_token(&self, token_hash: &str) -> Result<Option<EnrolToken>, StoreError> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT m.id, m.name, t.expires_at, t.used_at, m.revoked FROM enrol_tokens t \
                 JOIN machines m ON m.id = t.machine_id WHERE t.token_hash = ?1",
                [token_hash],
                |r| {
                    Ok(EnrolToken {
                        machine_id: r.get(0)?,
                        machine: r.get(1)?,
                        expires_at: r.get(2)?,
                        used: r.get::<_, Option<i64>>(3)?.is_some(),
                        machine_revoked: r.get::<_, i64>(4)? != 0,
                    })
                },
            )
            .optional()?)
        })
    }

    fn enrol(
        &self,
        token_hash: &str,
        cert: &IssuedCert,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<bool, StoreError> {
        self.tx(|tx| {
            let machine: Option<i64> = tx
                .query_row(
                    "UPDATE enrol_tokens SET used_at = ?2 WHERE token_hash = ?1 AND used_at IS NULL AND expires_at > ?2 \
                     AND machine_id IN (SELECT id FROM machines WHERE revoked = 0) RETURNING machine_id",
                    params![token_hash, now],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(machine) = machine else { return Ok(false) };
            // A new enrolment replaces the end-to-end key too (a gateway replaced, a key lost).
            tx.execute(
                "UPDATE machines SET cert_fingerprint = ?2, cert_not_after = ?3, enrolled_at = ?4, e2e_key = ?5 \
                 WHERE id = ?1 AND revoked = 0",
                params![machine, cert.fingerprint, cert.not_after, now, cert.e2e_key],
            )?;
            audit(tx, entry)?;
            Ok(true)
        })
    }

    fn machine_by_cert(
        &self,
        fingerprint: &str,
    ) -> Result<Option<(i64, String, bool, Option<String>)>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT id, name, revoked, org FROM machines WHERE cert_fingerprint = ?1",
            )?
            .query_row([fingerprint], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0, r.get(3)?))
            })
            .optional()?)
        })
    }

    fn agent_online(
        &self,
        machine: i64,
        targets: &[TargetInfo],
        switch_on: bool,
        trust: &AgentTrust,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<Vec<Session>, StoreError> {
        let targets = serde_json::to_string(targets).unwrap_or_else(|_| "[]".into());
        let approvers = serde_json::to_string(&trust.approvers).unwrap_or_else(|_| "[]".into());
        self.tx(|tx| {
            tx.execute(
                "UPDATE machines SET targets = ?2, switch_on = ?3, last_seen = ?4, trust = ?5, approvers = ?6 WHERE id = ?1",
                params![machine, targets, switch_on, now, trust.level, approvers],
            )?;
            audit(tx, entry)?;
            sessions_where(
                tx,
                &format!(
                    "WHERE s.machine_id = ?1 AND s.state IN ({}) AND s.valid_until > ?2",
                    states(|s| matches!(s, SessionState::Approved | SessionState::Active))
                ),
                params![machine, now],
            )
        })
    }

    fn signing_facts(&self, machine: i64) -> Result<SigningFacts, StoreError> {
        self.read(|c| signing_facts(c, machine))
    }

    fn agent_trust(
        &self,
        machine: i64,
        trust: &AgentTrust,
        entry: &Entry,
    ) -> Result<bool, StoreError> {
        let approvers = serde_json::to_string(&trust.approvers).unwrap_or_else(|_| "[]".into());
        self.tx(|tx| {
            let changed = tx.execute(
                "UPDATE machines SET trust = ?2, approvers = ?3 WHERE id = ?1 \
                 AND (trust IS NOT ?2 OR approvers IS NOT ?3)",
                params![machine, trust.level, approvers],
            )? > 0;
            if changed {
                audit(tx, entry)?;
            }
            Ok(changed)
        })
    }

    fn agent_switch(&self, machine: i64, on: bool, entry: &Entry) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.execute("UPDATE machines SET switch_on = ?2 WHERE id = ?1", params![machine, on])?;
            audit(tx, entry)
        })
    }

    fn agent_e2e_key(&self, machine: i64, key: &str) -> Result<E2eKeySeen, StoreError> {
        self.tx(|tx| {
            let held: Option<String> = tx
                .query_row("SELECT e2e_key FROM machines WHERE id = ?1", [machine], |r| r.get(0))
                .optional()?
                .flatten();
            Ok(match held {
                Some(k) if k == key => E2eKeySeen::Same,
                Some(k) => E2eKeySeen::Different(k),
                None => {
                    tx.execute(
                        "UPDATE machines SET e2e_key = ?2 WHERE id = ?1",
                        params![machine, key],
                    )?;
                    E2eKeySeen::Recorded
                }
            })
        })
    }

    fn session_tech_key(&self, session: i64, key: &str) -> Result<TechKey, StoreError> {
        self.tx(|tx| {
            let row: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT tech_keys, approval_signature FROM sessions WHERE id = ?1",
                    [session],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((keys, signature)) = row else {
                return Err(StoreError::NotFound("session is gone".into()));
            };
            let mut keys: Vec<String> = serde_json::from_str(&keys).unwrap_or_default();
            if keys.iter().any(|k| k == key) {
                return Ok(TechKey::Named);
            }
            if signature.is_some() {
                return Ok(TechKey::SignedWithout);
            }
            keys.push(key.to_owned());
            if keys.len() > MAX_TECH_KEYS {
                keys.remove(0);
            }
            let text = serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into());
            tx.execute("UPDATE sessions SET tech_keys = ?2 WHERE id = ?1", params![session, text])?;
            Ok(TechKey::Added)
        })
    }

    fn machine_e2e_key(&self, machine: i64) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT e2e_key FROM machines WHERE id = ?1")?
                .query_row([machine], |r| r.get(0))
                .optional()?
                .flatten())
        })
    }

    fn machine_e2e_keys(&self) -> Result<Vec<(i64, String)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, e2e_key FROM machines WHERE e2e_key IS NOT NULL ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn agent_offline(&self, machine: i64, now: UnixSecs, entry: &Entry) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.execute("UPDATE machines SET last_seen = ?2 WHERE id = ?1", params![machine, now])?;
            audit(tx, entry)
        })
    }

    fn session_create(
        &self,
        s: &NewSession,
        rule: &PrepareRule<'_>,
        entry: &Entry,
    ) -> Result<Session, StoreError> {
        self.tx(|tx| {
            if tx.query_row("SELECT 1 FROM sessions WHERE name = ?1", [&s.name], |_| Ok(())).optional()?.is_some() {
                return Err(StoreError::Conflict(format!("session {} exists", s.name)));
            }
            let m: Option<(i64, String, i64, Option<String>)> = tx
                .query_row(
                    "SELECT id, targets, revoked, org FROM machines WHERE name = ?1",
                    [&s.machine],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((machine_id, offered, revoked, machine_org)) = m else {
                return Err(StoreError::NotFound(format!("no machine {}", s.machine)));
            };
            if revoked != 0 {
                return Err(StoreError::Conflict(format!("machine {} is revoked", s.machine)));
            }
            let offered: Vec<TargetInfo> = serde_json::from_str(&offered).unwrap_or_default();
            for t in &s.targets {
                if !offered.iter().any(|o| &o.name == t) {
                    let names: Vec<&str> = offered.iter().map(|o| o.name.as_str()).collect();
                    return Err(StoreError::Invalid(format!(
                        "unknown target {t:?}: machine {} offers {}",
                        s.machine,
                        if names.is_empty() { "no targets yet (agent never connected)".to_owned() } else { names.join(", ") }
                    )));
                }
            }
            let mut facts = PrepareFacts {
                machine: s.machine.clone(),
                machine_org: machine_org.clone(),
                windows: windows_where(tx, "WHERE w.machine_id = ?1", [machine_id])?,
                ..PrepareFacts::default()
            };
            if let Some(op) = machine_org.as_deref() {
                facts.providers = providers_of(tx, op)?;
                let rules: Option<(i64, Option<i64>)> = tx
                    .query_row(
                        "SELECT allow_no_approval, max_session_secs FROM orgs WHERE name = ?1 COLLATE NOCASE",
                        [op],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((free, max)) = rules {
                    facts.operator_allows_no_approval = free != 0;
                    facts.operator_max_session = max;
                }
            }
            facts.signatures_required = signing_facts(tx, machine_id)?.required();
            let mut user_ids = Vec::new();
            for u in &s.users {
                let row: Option<(i64, String, String, i64, Option<String>)> = tx
                    .query_row(
                        "SELECT id, name, role, disabled, org FROM users WHERE name = ?1 COLLATE NOCASE",
                        [u],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                    )
                    .optional()?;
                let Some((id, name, role, disabled, org)) = row else {
                    return Err(StoreError::NotFound(format!("no user {u}")));
                };
                let role = role.parse::<Role>().map_err(|_| StoreError::Invalid(format!("user {name} has an unknown role")))?;
                facts.users.push(UserFacts { name, role, disabled: disabled != 0, org });
                user_ids.push(id);
            }
            let release = rule(&facts).map_err(StoreError::Refused)?;
            let mut targets = s.targets.clone();
            targets.sort();
            targets.dedup();
            tx.execute(
                "INSERT INTO sessions (name, machine_id, targets, reason, state, approval_required, valid_from, valid_until, created_by, created_at, record, approval_nonce) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, lower(hex(randomblob(16))))",
                params![
                    s.name,
                    machine_id,
                    serde_json::to_string(&targets).unwrap_or_default(),
                    s.reason,
                    SessionState::Prepared.as_str(),
                    s.approval_required,
                    s.from,
                    s.until,
                    s.created_by,
                    s.created_at,
                    s.record
                ],
            )?;
            let sid = tx.last_insert_rowid();
            user_ids.sort_unstable();
            user_ids.dedup();
            for uid in user_ids {
                tx.execute("INSERT INTO session_users (session_id, user_id) VALUES (?1, ?2)", params![sid, uid])?;
            }
            audit(tx, entry)?;
            if let Release::Window(w) = &release {
                // Released by the operator ahead of time: approved now, by the window's setter.
                let by = format!("{} (window {})", w.created_by, w.id);
                tx.execute(
                    "UPDATE sessions SET state = ?2, decided_by = ?3 WHERE id = ?1",
                    params![sid, SessionState::Approved.as_str(), by],
                )?;
                audit(
                    tx,
                    &Entry::new(
                        &s.created_by,
                        &entry.source,
                        Event::SessionPreapproved {
                            session: s.name.clone(),
                            window: w.id,
                            schedule: w.describe(),
                            provider: w.provider.clone(),
                            approved_by: w.created_by.clone(),
                        },
                    ),
                )?;
            }
            session_by_id(tx, sid)?.ok_or_else(|| StoreError::NotFound("session vanished".into()))
        })
    }

    fn machine_owner(&self, name: &str) -> Result<Option<MachineOwner>, StoreError> {
        self.read(|c| {
            let m: Option<(i64, Option<String>)> = c
                .query_row("SELECT id, org FROM machines WHERE name = ?1", [name], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let Some((id, org)) = m else { return Ok(None) };
            let providers = match org.as_deref() {
                Some(op) => providers_of(c, op)?,
                None => Vec::new(),
            };
            Ok(Some(MachineOwner { id, org, providers }))
        })
    }

    fn window_add(
        &self,
        w: &NewWindow,
        entry: &dyn Fn(i64) -> Entry,
    ) -> Result<Window, StoreError> {
        self.tx(|tx| {
            match org_kind(tx, &w.provider)? {
                None => return Err(StoreError::NotFound(format!("no organization {}", w.provider))),
                Some(OrgKind::Provider) => {}
                Some(_) => {
                    return Err(StoreError::Invalid(format!(
                        "{} is an operator: windows pre-approve service providers",
                        w.provider
                    )))
                }
            }
            let count: i64 = tx.query_row(
                "SELECT COUNT(*) FROM maintenance_windows WHERE machine_id = ?1",
                [w.machine_id],
                |r| r.get(0),
            )?;
            if count >= 64 {
                return Err(StoreError::Invalid("a machine has at most 64 maintenance windows".into()));
            }
            tx.execute(
                "INSERT INTO maintenance_windows (machine_id, provider, days, start_min, end_min, zone, created_by, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![w.machine_id, w.provider, w.days.bits(), w.start, w.end, w.zone, w.created_by, w.created_at],
            )?;
            let id = tx.last_insert_rowid();
            audit(tx, &entry(id))?;
            windows_where(tx, "WHERE w.id = ?1", [id])?
                .pop()
                .ok_or_else(|| StoreError::NotFound("window vanished".into()))
        })
    }

    fn windows(&self, org: Option<&str>) -> Result<Vec<Window>, StoreError> {
        self.read(|c| {
            let none: Option<i64> = None;
            windows_where(
                c,
                &format!("WHERE (?9 IS NULL OR {VISIBLE_TO_ORG}) ORDER BY m.name, w.id"),
                params![none, none, none, none, none, none, none, none, org],
            )
        })
    }

    fn window_by_id(&self, id: i64) -> Result<Option<(Window, Option<String>)>, StoreError> {
        self.read(|c| Ok(windows_with_org(c, "WHERE w.id = ?1", [id])?.pop()))
    }

    fn window_remove(&self, id: i64, entry: &Entry) -> Result<bool, StoreError> {
        self.tx(|tx| {
            let n = tx.execute("DELETE FROM maintenance_windows WHERE id = ?1", [id])?;
            if n == 1 {
                audit(tx, entry)?;
            }
            Ok(n == 1)
        })
    }

    fn session_by_name(&self, name: &str) -> Result<Option<Session>, StoreError> {
        self.read(|c| Ok(sessions_where(c, "WHERE s.name = ?1", [name])?.pop()))
    }

    fn session_by_id(&self, id: i64) -> Result<Option<Session>, StoreError> {
        self.read(|c| session_by_id(c, id))
    }

    fn sessions(
        &self,
        only_user: Option<i64>,
        org: Option<&str>,
    ) -> Result<Vec<Session>, StoreError> {
        self.read(|c| {
            // ?1 the user (or none), ?9 the organization (or none); unused numbers are NULL.
            let clause = format!(
                "WHERE (?1 IS NULL OR s.id IN (SELECT session_id FROM session_users WHERE user_id = ?1)) \
                 AND (?9 IS NULL OR {VISIBLE_TO_ORG}) ORDER BY s.id"
            );
            let none: Option<i64> = None;
            sessions_where(c, &clause, params![only_user, none, none, none, none, none, none, none, org])
        })
    }

    fn sessions_overdue(&self, now: UnixSecs) -> Result<Vec<Session>, StoreError> {
        self.read(|c| {
            sessions_where(
                c,
                &format!(
                    "WHERE s.valid_until <= ?1 AND s.state NOT IN ({})",
                    states(SessionState::is_terminal)
                ),
                [now],
            )
        })
    }

    fn session_transition(
        &self,
        id: i64,
        from: SessionState,
        to: SessionState,
        by: &str,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<Option<Applied>, StoreError> {
        self.tx(|tx| transition(tx, id, from, to, by, now, entry))
    }

    fn session_approve(
        &self,
        id: i64,
        from: SessionState,
        approval: Option<&SignedApproval>,
        by: &str,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<Option<Applied>, StoreError> {
        self.tx(|tx| {
            transition_with(tx, id, from, SessionState::Approved, approval, by, now, entry)
        })
    }

    fn tunnel_check(
        &self,
        session: i64,
        token_hash: &str,
    ) -> Result<super::TunnelCheck, StoreError> {
        self.read(|c| Ok((session_by_id(c, session)?, caller_row(c, token_hash)?)))
    }

    fn tunnel_check_now(&self, session: i64, token_hash: &str) -> Option<super::TunnelCheck> {
        // Only the file database's own read connection, only if it is free, and without
        // SQLite's busy wait: whatever would wait goes to a blocking thread instead.
        let reader = self.reader.as_ref()?;
        let conn = match reader.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        conn.busy_timeout(Duration::ZERO).ok()?;
        let found =
            session_by_id(&conn, session).and_then(|s| Ok((s, caller_row(&conn, token_hash)?)));
        // The blocking path waits as before; should this fail, it fails there too and says so.
        if conn.busy_timeout(READER_BUSY_TIMEOUT).is_err() {
            return None;
        }
        found.ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_store_suite() {
        super::super::suite::all(&|| {
            Arc::new(Sqlite::open_in_memory().unwrap()) as Arc<dyn Backend>
        });
    }

    #[test]
    fn state_lists_come_from_the_enum() {
        assert_eq!(states(SessionState::is_terminal), "'rejected', 'ended', 'expired', 'revoked'");
    }

    #[test]
    fn a_tunnel_check_reads_at_once_only_from_a_free_read_connection() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(dir.path()).unwrap();
        // Nothing there: the same answer as the blocking read.
        let now = db.tunnel_check_now(7, "no such token").expect("a free reader answers");
        assert!(now.0.is_none() && now.1.is_none());
        let blocking = db.tunnel_check(7, "no such token").unwrap();
        assert!(blocking.0.is_none() && blocking.1.is_none());
        // A reader that is busy elsewhere: no waiting here.
        {
            let _busy = db.reader.as_ref().unwrap().lock().unwrap();
            assert!(db.tunnel_check_now(7, "no such token").is_none());
        }
        // Its busy wait is back for the reads that may wait.
        assert!(db.tunnel_check_now(7, "no such token").is_some());
        let waits: i64 = db
            .reader
            .as_ref()
            .unwrap()
            .lock()
            .unwrap()
            .pragma_query_value(None, "busy_timeout", |r| r.get(0))
            .unwrap();
        assert_eq!(waits, READER_BUSY_TIMEOUT.as_millis() as i64);
        // The in-memory database (tests) has no reader of its own: always the blocking path.
        assert!(Sqlite::open_in_memory().unwrap().tunnel_check_now(7, "x").is_none());
    }

    #[test]
    fn the_database_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let _db = Sqlite::open(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for suffix in ["", "-wal", "-shm"] {
                let p = dir.path().join(format!("{DB_FILE}{suffix}"));
                if let Ok(meta) = std::fs::metadata(&p) {
                    assert_eq!(meta.permissions().mode() & 0o077, 0, "{}", p.display());
                }
            }
        }
    }
}
