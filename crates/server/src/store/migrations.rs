//! Forward-only schema migrations. Each step runs once, in order, in a transaction.

use rusqlite::Connection;

use super::StoreError;

/// Every migration ever shipped, in order; never edit one, append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema
    "CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        org TEXT,
        password_hash TEXT NOT NULL,
        totp_secret TEXT,
        totp_confirmed INTEGER NOT NULL DEFAULT 0,
        totp_used_steps TEXT NOT NULL DEFAULT '',
        disabled INTEGER NOT NULL DEFAULT 0,
        expires_at BIGINT,
        failed_logins INTEGER NOT NULL DEFAULT 0,
        locked_until BIGINT,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE auth_tokens (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        scope TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE TABLE machines (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        org TEXT,
        created_at BIGINT NOT NULL,
        cert_fingerprint TEXT UNIQUE,
        cert_not_after BIGINT,
        enrolled_at BIGINT,
        revoked INTEGER NOT NULL DEFAULT 0,
        targets TEXT NOT NULL DEFAULT '[]',
        switch_on INTEGER,
        last_seen BIGINT
    );
    CREATE TABLE enrol_tokens (
        token_hash TEXT PRIMARY KEY,
        machine_id INTEGER NOT NULL REFERENCES machines(id),
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT
    );
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        machine_id INTEGER NOT NULL REFERENCES machines(id),
        targets TEXT NOT NULL,
        reason TEXT NOT NULL,
        state TEXT NOT NULL,
        approval_required INTEGER NOT NULL,
        valid_from BIGINT NOT NULL,
        valid_until BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        decided_by TEXT,
        decided_at BIGINT,
        ended_by TEXT,
        ended_at BIGINT
    );
    CREATE TABLE session_users (
        session_id INTEGER NOT NULL REFERENCES sessions(id),
        user_id INTEGER NOT NULL REFERENCES users(id),
        PRIMARY KEY (session_id, user_id)
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        time_ms BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        source TEXT NOT NULL,
        details TEXT NOT NULL
    );",
    // 2: user names unique regardless of case; TOTP steps used, one row each (marked atomically)
    "CREATE UNIQUE INDEX users_name_nocase ON users (name COLLATE NOCASE);
    CREATE TABLE totp_steps (
        user_id INTEGER NOT NULL REFERENCES users(id),
        step BIGINT NOT NULL,
        PRIMARY KEY (user_id, step)
    );",
    // 3: earlier password hashes, so that a new password cannot be an old one
    "CREATE TABLE password_history (
        user_id INTEGER NOT NULL REFERENCES users(id),
        password_hash TEXT NOT NULL,
        changed_at BIGINT NOT NULL
    );
    CREATE INDEX password_history_user ON password_history (user_id, changed_at);",
    // 4: API tokens for automation: a role (and organization), an expiry, revocable
    "CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        org TEXT,
        created_by TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        revoked_at BIGINT
    );",
    // 5: organizations (operators own machines, providers employ technicians) and service
    // contracts (which provider may service which operator's machines)
    "CREATE TABLE orgs (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        kind TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE contracts (
        provider TEXT NOT NULL COLLATE NOCASE,
        operator TEXT NOT NULL COLLATE NOCASE,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (provider, operator)
    );",
    // 6: an operator may allow sessions without approval on its machines
    "ALTER TABLE orgs ADD COLUMN allow_no_approval INTEGER NOT NULL DEFAULT 0;",
    // 7: an operator's longest session on its machines
    "ALTER TABLE orgs ADD COLUMN max_session_secs BIGINT;",
    // 8: when a login was last used (idle logins end)
    "ALTER TABLE auth_tokens ADD COLUMN last_used_at BIGINT;",
    // 9: recurring maintenance windows: an operator pre-approves a provider on a machine
    "CREATE TABLE maintenance_windows (
        id INTEGER PRIMARY KEY,
        machine_id BIGINT NOT NULL REFERENCES machines(id),
        provider TEXT NOT NULL COLLATE NOCASE,
        days INTEGER NOT NULL,
        start_min INTEGER NOT NULL,
        end_min INTEGER NOT NULL,
        zone TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX maintenance_windows_machine ON maintenance_windows (machine_id);",
    // 10: the audit chain (each record's place, its hash and its predecessor's; `seq` moves with
    // a record's contents, `id` is where it is stored), what a record concerns (for filters and organizations), the signed checkpoints,
    // and where each SIEM sink has got to
    "ALTER TABLE audit ADD COLUMN seq BIGINT;
    UPDATE audit SET seq = id;
    ALTER TABLE audit ADD COLUMN prev TEXT;
    ALTER TABLE audit ADD COLUMN hash TEXT;
    ALTER TABLE audit ADD COLUMN actor_org TEXT;
    ALTER TABLE audit ADD COLUMN machine TEXT;
    ALTER TABLE audit ADD COLUMN session TEXT;
    ALTER TABLE audit ADD COLUMN machine_org TEXT;
    CREATE INDEX audit_time ON audit (time_ms);
    CREATE TABLE audit_checkpoints (
        seq BIGINT PRIMARY KEY,
        hash TEXT NOT NULL,
        time_ms BIGINT NOT NULL,
        signature TEXT NOT NULL
    );
    CREATE TABLE delivery_cursors (
        sink TEXT PRIMARY KEY,
        seq BIGINT NOT NULL
    );",
    // 11: the agents' own records, collected over their links (each machine's chain as the
    // agent wrote it, from where the server began to hold it)
    "CREATE TABLE agent_audit (
        machine_id BIGINT NOT NULL REFERENCES machines(id),
        seq BIGINT NOT NULL,
        prev TEXT NOT NULL,
        hash TEXT NOT NULL,
        time_ms BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        source TEXT NOT NULL,
        details TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        PRIMARY KEY (machine_id, seq)
    ) WITHOUT ROWID;",
    // 12: a session may be recorded at the agent (set when it is prepared)
    "ALTER TABLE sessions ADD COLUMN record INTEGER NOT NULL DEFAULT 0;",
    // 13: operator-signed approvals: each session's nonce (part of what an approver signs) and
    // the signature it was approved with; what each machine's agent pins; operators that
    // require signed approvals
    "ALTER TABLE sessions ADD COLUMN approval_nonce TEXT;
    UPDATE sessions SET approval_nonce = lower(hex(randomblob(16)));
    ALTER TABLE sessions ADD COLUMN approval_key TEXT;
    ALTER TABLE sessions ADD COLUMN approval_signature TEXT;
    ALTER TABLE machines ADD COLUMN trust TEXT;
    ALTER TABLE machines ADD COLUMN approvers TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE orgs ADD COLUMN require_signed INTEGER NOT NULL DEFAULT 0;",
    // 14: end-to-end encryption: the agent's key (X25519, base64), recorded from its first
    // hello; the keys of the technicians' CLIs that connected to a session (JSON list)
    "ALTER TABLE machines ADD COLUMN e2e_key TEXT;
    ALTER TABLE sessions ADD COLUMN tech_keys TEXT NOT NULL DEFAULT '[]';",
    // 15: WebAuthn security keys of console users (the public key as an approver key,
    // `es256:RP:POINT`; the signature counter, compare-and-set) and the challenges the console
    // handed out, each taken once before it expires
    "CREATE TABLE webauthn_credentials (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        name TEXT NOT NULL,
        credential_id TEXT NOT NULL UNIQUE,
        public_key TEXT NOT NULL,
        sign_count BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        last_used BIGINT
    );
    CREATE INDEX webauthn_credentials_user ON webauthn_credentials(user_id);
    CREATE TABLE webauthn_challenges (
        challenge TEXT PRIMARY KEY,
        purpose TEXT NOT NULL,
        user_id INTEGER,
        expires_at BIGINT NOT NULL
    );",
    // settings an admin changed at run time (over server.toml), by their server.toml name
    "CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        changed_by TEXT NOT NULL,
        changed_at BIGINT NOT NULL
    );",
];

pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: i64 =
        conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::TooNew { found: current, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [i as i64 + 1])?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_idempotent_and_versioned() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 =
            conn.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute("INSERT INTO schema_version (version) VALUES (99)", []).unwrap();
        assert!(matches!(migrate(&mut conn), Err(StoreError::TooNew { found: 99, .. })));
    }
}
