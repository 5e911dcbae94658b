//! Embedded SQLite state: one file in the data directory, versioned schema, portable SQL.

use std::{path::Path, sync::Mutex};

use rusqlite::{params, Connection, OptionalExtension};

mod migrations;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Sql(#[from] rusqlite::Error),
    #[error("database is at schema version {found}, newer than this build ({known})")]
    TooNew { found: i64, known: i64 },
}

pub const DB_FILE: &str = "fernwart.db";

pub struct Store {
    conn: Mutex<Connection>,
    /// A second, read-only connection, so that reads (a tunnel's checks) never wait behind a
    /// write's fsync. WAL gives it the last committed state. None for in-memory stores.
    reader: Option<Mutex<Connection>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditEvent {
    pub id: i64,
    pub time: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub source: String,
    pub details: serde_json::Value,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DB_FILE);
        let mut store = Self::setup(Connection::open(&path)?)?;
        let reader = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        reader.pragma_update(None, "query_only", "ON")?;
        store.reader = Some(Mutex::new(reader));
        Ok(store)
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Self, StoreError> {
        // WAL + FULL sync: an acknowledged write survives a crash or kill.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::migrate(&mut conn)?;
        Ok(Self { conn: Mutex::new(conn), reader: None })
    }

    /// Runs `f` in one transaction; a poisoned lock is recovered (SQLite keeps its own consistency).
    pub fn tx<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard.transaction().map_err(StoreError::from)?;
        let out = f(&tx)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    pub fn read<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        let conn = self.reader.as_ref().unwrap_or(&self.conn);
        let guard = conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    pub fn audit_list(&self, since_ms: i64) -> Result<Vec<AuditEvent>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, time_ms, actor, action, target, source, details FROM audit \
                 WHERE time_ms >= ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![since_ms], |r| {
                let ms: i64 = r.get(1)?;
                let details: String = r.get(6)?;
                Ok(AuditEvent {
                    id: r.get(0)?,
                    time: crate::util::rfc3339_ms(ms),
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    source: r.get(5)?,
                    details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

/// Appends one audit record inside the caller's transaction, so the change and its record
/// commit together.
pub fn audit(
    tx: &Connection,
    actor: &str,
    action: &str,
    target: &str,
    source: &str,
    details: serde_json::Value,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit (time_ms, actor, action, target, source, details) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![crate::util::now_ms(), actor, action, target, source, details.to_string()],
    )?;
    Ok(())
}

pub fn optional<T>(r: rusqlite::Result<T>) -> Result<Option<T>, StoreError> {
    Ok(r.optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_records_commit_with_their_change() {
        let store = Store::open_in_memory().unwrap();
        store
            .tx(|tx| {
                audit(
                    tx,
                    "admin",
                    "user.add",
                    "tech1",
                    "127.0.0.1",
                    serde_json::json!({"role": "technician"}),
                )
            })
            .unwrap();
        let r: Result<(), StoreError> = store.tx(|tx| {
            audit(tx, "admin", "never", "x", "", serde_json::Value::Null)?;
            Err(StoreError::TooNew { found: 0, known: 0 })
        });
        assert!(r.is_err());
        let events = store.audit_list(0).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].action, "user.add");
    }
}
