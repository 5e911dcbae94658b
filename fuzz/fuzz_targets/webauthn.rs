//! Arbitrary bytes through the WebAuthn registration and assertion checks of `fernwart-proto`.
//! The checks live in `src/lib.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fernwart_fuzz::check_webauthn(data);
});
