//! The recording file (`<id>.rec`): one gzip stream holding
//!
//! ```text
//! magic      8 bytes  "FWREC\0\0\x01" (format 1)
//! meta_len   u32 BE   at most MAX_META
//! meta       JSON     Meta
//! entries, each starting with a tag byte:
//!   1 data   dir u8, t_us u64 BE, len u32 BE (1..=MAX_CHUNK), len bytes
//!   2 gap    dir u8, t_us u64 BE, missed u64 BE   bytes of that direction not recorded
//!   3 end    t_us u64 BE                          the connection closed; nothing follows
//! ```
//!
//! `dir` 0 is technician → target, 1 is target → technician; `t_us` counts microseconds
//! since [`Meta::started_us`]. Integers are big-endian. A file without its end entry was cut
//! short (the agent stopped, or it is still being written): [`Reader`] returns what it could
//! read and says so, since a partial recording is still evidence.

use std::io::{self, Read, Write};

use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use serde::{Deserialize, Serialize};

/// The file's first bytes (inside the gzip stream).
pub const MAGIC: [u8; 8] = *b"FWREC\0\0\x01";
/// The most bytes of metadata.
pub const MAX_META: usize = 64 * 1024;
/// The most bytes of one data entry; longer chunks are split by the writer.
pub const MAX_CHUNK: usize = 1024 * 1024;

const TAG_DATA: u8 = 1;
const TAG_GAP: u8 = 2;
const TAG_END: u8 = 3;

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the technician to the target (requests).
    ToTarget,
    /// From the target back to the technician (answers).
    FromTarget,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::ToTarget, Direction::FromTarget];

    pub fn index(self) -> usize {
        match self {
            Direction::ToTarget => 0,
            Direction::FromTarget => 1,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Direction::ToTarget),
            1 => Some(Direction::FromTarget),
            _ => None,
        }
    }
}

/// What the recording is of, at its start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// `<session>-<unix ms>-<n>`.
    pub id: String,
    pub machine: String,
    pub session: String,
    /// The technicians of the session.
    pub users: Vec<String>,
    /// The target's name and its address (`HOST:PORT`) in the agent's configuration.
    pub target: String,
    pub address: String,
    /// When the connection to the target was made, microseconds since the Unix epoch.
    pub started_us: i64,
}

/// One entry of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Data {
        dir: Direction,
        t_us: u64,
        bytes: Vec<u8>,
    },
    /// `missed` bytes went that way but are not in the recording (the writer fell behind).
    Gap {
        dir: Direction,
        t_us: u64,
        missed: u64,
    },
    End {
        t_us: u64,
    },
}

/// Writes a recording into `W` (a file), compressed.
pub struct Writer<W: Write> {
    gz: GzEncoder<W>,
}

impl<W: Write> Writer<W> {
    /// Starts a recording: the magic and the metadata. `level` 1 (fast) suits the agent.
    pub fn new(out: W, meta: &Meta, level: u32) -> io::Result<Self> {
        let mut gz = GzEncoder::new(out, Compression::new(level.min(9)));
        let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        if json.len() > MAX_META {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "recording metadata too long"));
        }
        gz.write_all(&MAGIC)?;
        gz.write_all(&(json.len() as u32).to_be_bytes())?;
        gz.write_all(&json)?;
        Ok(Self { gz })
    }

    /// Bytes that went `dir` at `t_us`; split into entries of at most [`MAX_CHUNK`].
    pub fn data(&mut self, dir: Direction, t_us: u64, bytes: &[u8]) -> io::Result<()> {
        for part in bytes.chunks(MAX_CHUNK) {
            let mut head = [0u8; 14];
            head[0] = TAG_DATA;
            head[1] = dir.index() as u8;
            head[2..10].copy_from_slice(&t_us.to_be_bytes());
            head[10..14].copy_from_slice(&(part.len() as u32).to_be_bytes());
            self.gz.write_all(&head)?;
            self.gz.write_all(part)?;
        }
        Ok(())
    }

    /// `missed` bytes went `dir` around `t_us` without being recorded.
    pub fn gap(&mut self, dir: Direction, t_us: u64, missed: u64) -> io::Result<()> {
        let mut e = [0u8; 18];
        e[0] = TAG_GAP;
        e[1] = dir.index() as u8;
        e[2..10].copy_from_slice(&t_us.to_be_bytes());
        e[10..18].copy_from_slice(&missed.to_be_bytes());
        self.gz.write_all(&e)
    }

    /// Pushes what is compressed so far to the file (a sync point of the deflate stream), so
    /// that a crash loses at most what came after.
    pub fn flush(&mut self) -> io::Result<()> {
        self.gz.flush()
    }

    /// Writes the end entry and the gzip trailer; returns the file.
    pub fn finish(mut self, t_us: u64) -> io::Result<W> {
        let mut e = [0u8; 9];
        e[0] = TAG_END;
        e[1..9].copy_from_slice(&t_us.to_be_bytes());
        self.gz.write_all(&e)?;
        self.gz.finish()
    }
}

/// Why a recording could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not a fernwart recording (its first bytes are not the format's)")]
    NotARecording,
    #[error("reading the recording")]
    Io(#[source] io::Error),
    #[error("the recording's metadata is {0} bytes, at most {MAX_META} are allowed")]
    MetaTooLong(usize),
    #[error("the recording's metadata is not valid")]
    Meta(#[source] serde_json::Error),
}

/// Reads a recording entry by entry, without holding more than one entry in memory.
pub struct Reader<R: Read> {
    gz: GzDecoder<R>,
    meta: Meta,
    state: State,
}

/// How far a [`Reader`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// More entries may follow.
    Reading,
    /// The end entry was read: the recording is whole.
    Complete,
    /// The recording stops before its end entry, for this reason (the agent stopped or is
    /// still writing; or the file is damaged from here on).
    Cut(String),
}

impl<R: Read> Reader<R> {
    /// Reads the magic and the metadata.
    pub fn new(input: R) -> Result<Self, ReadError> {
        let mut gz = GzDecoder::new(input);
        let mut magic = [0u8; 8];
        gz.read_exact(&mut magic).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput => ReadError::NotARecording,
            _ => ReadError::Io(e),
        })?;
        if magic != MAGIC {
            return Err(ReadError::NotARecording);
        }
        let mut len = [0u8; 4];
        gz.read_exact(&mut len).map_err(ReadError::Io)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_META {
            return Err(ReadError::MetaTooLong(len));
        }
        let mut json = vec![0u8; len];
        gz.read_exact(&mut json).map_err(ReadError::Io)?;
        let meta = serde_json::from_slice(&json).map_err(ReadError::Meta)?;
        Ok(Self { gz, meta, state: State::Reading })
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The next entry; `None` once the end entry was read or the file stops (see
    /// [`Reader::state`]). A damaged or cut file is not an error here: what came before stays
    /// readable.
    pub fn next_entry(&mut self) -> Option<Entry> {
        if self.state != State::Reading {
            return None;
        }
        match self.read_entry() {
            Ok(e) => {
                if matches!(e, Entry::End { .. }) {
                    self.state = State::Complete;
                }
                Some(e)
            }
            Err(why) => {
                self.state = State::Cut(why);
                None
            }
        }
    }

    fn read_entry(&mut self) -> Result<Entry, String> {
        let mut tag = [0u8; 1];
        match self.gz.read(&mut tag) {
            Ok(0) => return Err("it ends without its end entry".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("it is cut or damaged: {e}")),
        }
        let cut = |e: io::Error| format!("it is cut or damaged inside an entry: {e}");
        match tag[0] {
            TAG_DATA => {
                let mut head = [0u8; 13];
                self.gz.read_exact(&mut head).map_err(cut)?;
                let dir = Direction::from_byte(head[0]).ok_or("an entry has no valid direction")?;
                let t_us = u64::from_be_bytes(array8(&head[1..9]));
                let len = u32::from_be_bytes([head[9], head[10], head[11], head[12]]) as usize;
                if len == 0 || len > MAX_CHUNK {
                    return Err(format!("an entry claims {len} bytes (1 to {MAX_CHUNK})"));
                }
                let mut bytes = vec![0u8; len];
                self.gz.read_exact(&mut bytes).map_err(cut)?;
                Ok(Entry::Data { dir, t_us, bytes })
            }
            TAG_GAP => {
                let mut e = [0u8; 17];
                self.gz.read_exact(&mut e).map_err(cut)?;
                let dir = Direction::from_byte(e[0]).ok_or("an entry has no valid direction")?;
                Ok(Entry::Gap {
                    dir,
                    t_us: u64::from_be_bytes(array8(&e[1..9])),
                    missed: u64::from_be_bytes(array8(&e[9..17])),
                })
            }
            TAG_END => {
                let mut e = [0u8; 8];
                self.gz.read_exact(&mut e).map_err(cut)?;
                Ok(Entry::End { t_us: u64::from_be_bytes(e) })
            }
            other => Err(format!("unknown entry type {other}")),
        }
    }
}

fn array8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn meta() -> Meta {
        Meta {
            id: "s1-1700000000000-1".into(),
            machine: "m1".into(),
            session: "s1".into(),
            users: vec!["tech1".into()],
            target: "plc".into(),
            address: "192.168.0.10:502".into(),
            started_us: 1_700_000_000_000_000,
        }
    }

    fn all<R: Read>(mut r: Reader<R>) -> (Vec<Entry>, State) {
        let mut out = Vec::new();
        while let Some(e) = r.next_entry() {
            out.push(e);
        }
        (out, r.state().clone())
    }

    #[test]
    fn entries_come_back_as_written() {
        let mut w = Writer::new(Vec::new(), &meta(), 1).unwrap();
        w.data(Direction::ToTarget, 5, b"request").unwrap();
        w.gap(Direction::FromTarget, 9, 1000).unwrap();
        w.data(Direction::FromTarget, 12, b"answer").unwrap();
        let file = w.finish(20).unwrap();

        let r = Reader::new(&file[..]).unwrap();
        assert_eq!(r.meta(), &meta());
        let (entries, state) = all(r);

        assert_eq!(state, State::Complete);
        assert_eq!(
            entries,
            [
                Entry::Data { dir: Direction::ToTarget, t_us: 5, bytes: b"request".to_vec() },
                Entry::Gap { dir: Direction::FromTarget, t_us: 9, missed: 1000 },
                Entry::Data { dir: Direction::FromTarget, t_us: 12, bytes: b"answer".to_vec() },
                Entry::End { t_us: 20 },
            ]
        );
    }

    #[test]
    fn long_chunks_are_split() {
        let big = vec![7u8; MAX_CHUNK + 10];
        let mut w = Writer::new(Vec::new(), &meta(), 1).unwrap();
        w.data(Direction::FromTarget, 1, &big).unwrap();
        let file = w.finish(2).unwrap();

        let (entries, _) = all(Reader::new(&file[..]).unwrap());

        let lens: Vec<usize> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Data { bytes, .. } => Some(bytes.len()),
                _ => None,
            })
            .collect();
        assert_eq!(lens, [MAX_CHUNK, 10]);
    }

    #[test]
    fn a_cut_file_gives_what_it_holds_and_says_it_is_cut() {
        let mut w = Writer::new(Vec::new(), &meta(), 1).unwrap();
        w.data(Direction::ToTarget, 5, b"request").unwrap();
        w.flush().unwrap();
        // Still being written (or the agent stopped): no end entry, no gzip trailer.
        let partial = w.gz.get_ref().clone();

        let (entries, state) = all(Reader::new(&partial[..]).unwrap());

        assert_eq!(entries.len(), 1);
        assert!(matches!(state, State::Cut(_)), "{state:?}");
    }

    #[test]
    fn other_files_are_refused() {
        assert!(matches!(Reader::new(&b"hello"[..]), Err(ReadError::NotARecording)));
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(b"FWREC\0\0\x02 other format").unwrap();
        let other = gz.finish().unwrap();
        assert!(matches!(Reader::new(&other[..]), Err(ReadError::NotARecording)));
    }

    #[test]
    fn lengths_are_checked_before_allocating() {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&MAGIC).unwrap();
        gz.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let file = gz.finish().unwrap();
        assert!(matches!(Reader::new(&file[..]), Err(ReadError::MetaTooLong(_))));

        let mut w = Writer::new(Vec::new(), &meta(), 1).unwrap();
        let mut bad = vec![TAG_DATA, 0];
        bad.extend_from_slice(&0u64.to_be_bytes());
        bad.extend_from_slice(&u32::MAX.to_be_bytes());
        w.gz.write_all(&bad).unwrap();
        let file = w.gz.finish().unwrap();
        let (entries, state) = all(Reader::new(&file[..]).unwrap());
        assert!(entries.is_empty());
        assert!(matches!(state, State::Cut(why) if why.contains("claims")));
    }
}
