//! Arbitrary bytes through the session recording reader of `fernwart-recording` and its pcapng
//! export: as a file (mostly refused at the gzip header) and as the inside of a gzip stream
//! (which reaches the entry decoder). Neither may panic, allocate beyond the format's limits,
//! or export anything but whole blocks.

#![no_main]

use std::io::Write;

use fernwart_recording::{export, Reader};
use libfuzzer_sys::fuzz_target;

fn read_and_export(file: &[u8]) {
    let Ok(mut reader) = Reader::new(file) else { return };
    let mut out = Vec::new();
    if let Ok(done) = export(&mut reader, &mut out) {
        // Every block's length is a multiple of 4 and the file holds whole blocks.
        assert_eq!(out.len() % 4, 0, "pcapng output of {} bytes", out.len());
        // The handshake is always there.
        assert!(done.packets >= 3, "{done:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    read_and_export(data);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if gz.write_all(data).is_ok() {
        if let Ok(file) = gz.finish() {
            read_and_export(&file);
        }
    }
});
