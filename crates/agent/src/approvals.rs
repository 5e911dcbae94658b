//! The operator-signed approvals the agent has held, kept in `DIR/approvals.json` across
//! restarts: an approval serves its own session only, and not again once the session ended
//! (the check itself is `fernwart_proto::approval`).
//!
//! A missing or unreadable file starts empty (logged): what it guards against, a replayed
//! approval of an ended session, needs a server that replays it and a lost file together, and
//! the approval's window still bounds it.

use std::path::Path;

use fernwart_proto::approval::Nonces;

pub const FILE_NAME: &str = "approvals.json";

/// The approvals held before, from `DIR/approvals.json`.
pub fn load(dir: &Path) -> Nonces {
    let path = dir.join(FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Nonces::default(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the approvals held; starting without them");
            return Nonces::default();
        }
    };
    serde_json::from_str(&text).unwrap_or_else(|e| {
        tracing::error!(path = %path.display(), error = %e, "the approvals held are unreadable; starting without them");
        Nonces::default()
    })
}

/// Writes `seen` to `DIR/approvals.json` (a new file renamed over the old one).
pub fn save(dir: &Path, seen: &Nonces) {
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let result = serde_json::to_vec(seen)
        .map_err(std::io::Error::other)
        .and_then(|bytes| write_synced(&tmp, &bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = result {
        tracing::error!(path = %path.display(), error = %e, "cannot write the approvals held");
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approvals_held_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_empty());
        let mut seen = Nonces::default();
        seen.admit("n1", "s1", i64::MAX);
        seen.ended("s1");
        save(dir.path(), &seen);
        assert_eq!(load(dir.path()), seen);
        std::fs::write(dir.path().join(FILE_NAME), "garbage").unwrap();
        assert!(load(dir.path()).is_empty());
    }
}
