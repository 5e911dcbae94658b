//! fernwart session recordings: what the agent writes when a session has recording on (each
//! tunnel connection's bytes both ways, with their times, gzip-compressed: [`format`]) and
//! their export to pcapng with synthetic TCP/IP framing for Wireshark and tshark
//! ([`pcapng`]).
//!
//! Shared by the agent (it writes recordings and exports them on the gateway) and the CLI
//! (it exports a recording fetched through the server, which only relays it). No I/O here
//! beyond the `Read`/`Write` the caller hands in.

pub mod format;
pub mod pcapng;

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

pub use format::{Direction, Entry, Meta, ReadError, Reader, State, Writer};
pub use pcapng::{export, Exported};

/// Why an export to a pcapng file failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading the recording")]
    Read(#[from] ReadError),
    #[error("writing {}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Exports the recording `input` holds to the pcapng file `pcap` (replaced if it exists).
pub fn export_file(input: impl Read, pcap: &std::path::Path) -> Result<Exported, ExportError> {
    let mut reader = Reader::new(io::BufReader::new(input))?;
    let write_err = |source| ExportError::Write { path: pcap.to_owned(), source };
    let file = std::fs::File::create(pcap).map_err(write_err)?;
    let mut out = io::BufWriter::new(file);
    let done = export(&mut reader, &mut out).map_err(write_err)?;
    let file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    Ok(done)
}

/// One line about an export, for people: what it holds and whether it is whole.
pub fn describe(done: &Exported, pcap: &std::path::Path) -> String {
    let mut line = format!(
        "{} packets written to {} ({} bytes to the target, {} back; technician {}:{}, target {}:{})",
        done.packets,
        pcap.display(),
        done.bytes_to_target,
        done.bytes_from_target,
        done.client.0,
        done.client.1,
        done.server.0,
        done.server.1,
    );
    if done.missed > 0 {
        line.push_str(&format!("; {} bytes were not recorded (gaps)", done.missed));
    }
    if let Some(why) = &done.cut {
        line.push_str(&format!("; the recording is not whole: {why}"));
    }
    line
}

/// The file name extension of a recording.
pub const EXTENSION: &str = "rec";

/// The SHA-256 (hex) and length of everything `r` gives.
pub fn sha256_of(mut r: impl Read) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let got = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..got]);
        n += got as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// A writer that hashes and counts what passes through it to `inner`.
pub struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hash: Sha256::new(), len: 0 }
    }

    /// The SHA-256 (hex) and length of what was written, and the inner writer.
    pub fn finish(self) -> (String, u64, W) {
        (hex::encode(self.hash.finalize()), self.len, self.inner)
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Whether `id` can name a recording: what the agent makes (`<session>-<unix ms>-<n>`, the
/// session name's letters, digits, `- _ . @`), never a path.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

/// The session a recording id names: the id without its last two parts (time and number).
pub fn session_of(id: &str) -> Option<&str> {
    let (rest, n) = id.rsplit_once('-')?;
    let (session, ms) = rest.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(n) && digits(ms) && !session.is_empty()).then_some(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_session_and_are_never_paths() {
        assert_eq!(session_of("s-1.a-1700000000000-3"), Some("s-1.a"));
        assert_eq!(session_of("s1-17x-3"), None);
        assert_eq!(session_of("-1-2"), None);
        assert!(valid_id("s-1.a@b-1700000000000-3"));
        for bad in ["", "../x", "a/b", ".hidden", "a b", "a\0"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn hashing_writer_hashes_what_it_passes() {
        let mut w = Hashing::new(Vec::new());
        w.write_all(b"abc").unwrap();
        let (hash, len, inner) = w.finish();
        assert_eq!(inner, b"abc");
        assert_eq!(len, 3);
        assert_eq!(hash, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(sha256_of(&b"abc"[..]).unwrap(), (hash, 3));
    }
}
