//! Replays the seed corpus of the `decode_frame` fuzz target on the stable toolchain.
//!
//! Every file under `fuzz/corpus/decode_frame/` goes through the same checks as the fuzz target
//! (`fuzz/src/lib.rs`, included below), so a crash input saved into the corpus stays a
//! regression test. A missing or empty corpus fails the test rather than passing silently.

#[path = "../../../fuzz/src/lib.rs"]
mod decode_check;

use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode_frame")
}

#[test]
fn replay_decode_frame_corpus() {
    let dir = corpus_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => panic!("fuzz corpus {} cannot be read: {e}", dir.display()),
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| match entry {
            Ok(entry) => entry.path(),
            Err(e) => panic!("listing {}: {e}", dir.display()),
        })
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "fuzz corpus {} holds no file", dir.display());

    for path in &files {
        let data = match std::fs::read(path) {
            Ok(data) => data,
            Err(e) => panic!("reading {}: {e}", path.display()),
        };
        let outcome = std::panic::catch_unwind(|| decode_check::check_decode_frame(&data));
        assert!(outcome.is_ok(), "corpus input {} failed the decode checks", path.display());
    }
    eprintln!("replayed {} corpus inputs from {}", files.len(), dir.display());
}
