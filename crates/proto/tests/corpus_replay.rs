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

/// The `webauthn` target's checks on a few hand-made inputs (CBOR heads of every kind, a
/// compact assertion, a key as written, the decode corpus): its corpus starts empty.
#[test]
fn webauthn_checks_run_on_stable() {
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xa3, 0x63, b'f', b'm', b't'],
        vec![0x9f, 0xff],
        vec![0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        b"AAAA.e30.MEUCIQ.AQ".to_vec(),
        b"es256:console.example:BAAA".to_vec(),
        b"{\"type\":\"webauthn.get\",\"challenge\":\"Y2hhbGxlbmdl\",\"origin\":\"x\"}".to_vec(),
    ];
    if let Ok(entries) = std::fs::read_dir(corpus_dir()) {
        inputs.extend(entries.flatten().filter_map(|e| std::fs::read(e.path()).ok()));
    }
    for data in &inputs {
        decode_check::check_webauthn(data);
    }
}
