//! Arbitrary bytes through every decoder entry point of `fernwart-proto`, for every message type.
//! The checks live in `src/lib.rs`, which `crates/proto/tests/corpus_replay.rs` also uses.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fernwart_fuzz::check_decode_frame(data);
});
