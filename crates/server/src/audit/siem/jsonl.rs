//! Appending to the JSON lines copy of the trail (blocking; run it off the async workers).
//!
//! The file is opened for each batch, so a rotation (rename, new file) needs no signal. A line
//! a crash cut short is the last one and was not counted as delivered: it is cut off before
//! the next batch, which writes it again whole.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    path::Path,
};

/// How many bytes of the end are read at a time when looking for the last whole line.
const CHUNK: u64 = 8 * 1024;

/// Appends `lines` (whole lines, each ending in `\n`) to `path` and syncs them to disk.
/// Returns the number of bytes of a cut-short line it removed first.
pub fn append(path: &Path, lines: &[u8]) -> std::io::Result<u64> {
    let mut file = crate::config::open_jsonl(path)?;
    let cut = cut_partial_line(&mut file)?;
    let len = file.metadata()?.len();
    if let Err(e) = file.write_all(lines).and_then(|()| file.sync_data()) {
        // Leave no half batch behind (the batch is written again); best effort.
        let _ = file.set_len(len);
        return Err(e);
    }
    Ok(cut)
}

/// Cuts the file back to its last `\n` when it does not end with one.
fn cut_partial_line(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let part = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(i) = part.iter().rposition(|b| *b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        file.set_len(end)?;
        file.sync_data()?;
    }
    Ok(len - end)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn appends_whole_lines_and_cuts_a_partial_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        assert_eq!(append(&path, b"{\"seq\":1}\n").unwrap(), 0);
        assert_eq!(append(&path, b"{\"seq\":2}\n").unwrap(), 0);
        // A crash in the middle of the next line.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"se").unwrap();
        assert_eq!(append(&path, b"{\"seq\":3}\n").unwrap(), 4);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n"
        );
    }

    #[test]
    fn a_file_without_any_newline_is_cut_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, "x".repeat(20_000)).unwrap();
        assert_eq!(append(&path, b"1\n").unwrap(), 20_000);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
    }

    #[test]
    fn a_long_last_line_is_found_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let whole = format!("{}\n", "y".repeat(10_000));
        std::fs::write(&path, format!("{whole}{}", "z".repeat(17_000))).unwrap();
        assert_eq!(append(&path, b"2\n").unwrap(), 17_000);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{whole}2\n"));
    }
}
