//! A recording as pcapng, for Wireshark and tshark: the recorded connection with synthetic
//! Ethernet, IPv4 and TCP framing around the bytes as they went.
//!
//! The technician's side is `10.0.0.1` on an ephemeral port taken from the recording's id;
//! the target is its real IPv4 address and port from the agent's configuration (a host name
//! or an IPv6 address becomes `10.0.0.2`), so Wireshark dissects Modbus/TCP on 502 and S7comm
//! on 102 by itself. The file holds a three-way handshake at the start, each recorded chunk as
//! TCP segments of at most [`MAX_SEGMENT`] bytes with consistent sequence and acknowledgement
//! numbers and valid IPv4 and TCP checksums, and FIN both ways when the recording is whole. A
//! gap (bytes the recorder missed) advances the sequence numbers by what was missed, so that
//! Wireshark shows "previous segment not captured" there, and the next packet that way carries
//! a comment saying so. Timestamps are the recording's, in microseconds.
//!
//! pcapng (draft-ietf-opsawg-pcapng): a Section Header Block, one Interface Description Block
//! (LINKTYPE_ETHERNET), then one Enhanced Packet Block per segment; little-endian.

use std::{
    io::{self, Read, Write},
    net::Ipv4Addr,
};

use crate::format::{Direction, Entry, Reader, State};

/// The most payload bytes in one synthetic TCP segment.
pub const MAX_SEGMENT: usize = 1400;

/// The technician's synthetic address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The target's address when the configuration names no IPv4 address.
pub const FALLBACK_TARGET_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

const LINKTYPE_ETHERNET: u16 = 1;
const SNAPLEN: u32 = 262_144;
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_ISN: u32 = 0x1000_0000;
const SERVER_ISN: u32 = 0x5000_0000;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub packets: u64,
    pub bytes_to_target: u64,
    pub bytes_from_target: u64,
    /// Bytes the recorder missed (gaps), both ways.
    pub missed: u64,
    /// The recording had its end entry; else why it stops.
    pub cut: Option<String>,
    /// The synthetic endpoints: technician, target.
    pub client: (Ipv4Addr, u16),
    pub server: (Ipv4Addr, u16),
}

/// Writes the recording `reader` reads to `out` as pcapng.
pub fn export<R: Read, W: Write>(reader: &mut Reader<R>, out: W) -> io::Result<Exported> {
    let meta = reader.meta().clone();
    let server = target_endpoint(&meta.address);
    let client_ip = if server.0 == CLIENT_IP { Ipv4Addr::new(10, 0, 0, 3) } else { CLIENT_IP };
    let client = (client_ip, ephemeral_port(&meta.id));
    let mut w = PcapWriter::new(out);
    let comment = format!(
        "fernwart recording {} of session {} on machine {}: target {} ({}), technicians {}; \
         synthetic TCP/IP framing, the payload bytes as recorded",
        meta.id,
        meta.session,
        meta.machine,
        meta.target,
        meta.address,
        meta.users.join(",")
    );
    let appl = format!("fernwart {}", env!("CARGO_PKG_VERSION"));
    w.section(&appl, &comment)?;
    w.interface("fernwart-recording", &format!("{} -> {}", meta.id, meta.address))?;
    let mut flow = Flow::new(client, server);
    let mut done = Exported {
        packets: 0,
        bytes_to_target: 0,
        bytes_from_target: 0,
        missed: 0,
        cut: None,
        client,
        server,
    };
    let at = |t_us: u64| meta.started_us.saturating_add(i64::try_from(t_us).unwrap_or(i64::MAX));
    flow.packet(&mut w, at(0), Direction::ToTarget, SYN, &[])?;
    flow.packet(&mut w, at(0), Direction::FromTarget, SYN | ACK, &[])?;
    flow.packet(&mut w, at(0), Direction::ToTarget, ACK, &[])?;
    let mut last = 0;
    while let Some(entry) = reader.next_entry() {
        match entry {
            Entry::Data { dir, t_us, bytes } => {
                last = last.max(t_us);
                let segments = bytes.chunks(MAX_SEGMENT);
                let n = segments.len();
                for (i, part) in segments.enumerate() {
                    let flags = if i + 1 == n { PSH | ACK } else { ACK };
                    flow.packet(&mut w, at(t_us), dir, flags, part)?;
                }
                match dir {
                    Direction::ToTarget => done.bytes_to_target += bytes.len() as u64,
                    Direction::FromTarget => done.bytes_from_target += bytes.len() as u64,
                }
            }
            Entry::Gap { dir, t_us, missed } => {
                last = last.max(t_us);
                flow.skip(dir, missed);
                done.missed += missed;
            }
            Entry::End { t_us } => {
                last = last.max(t_us);
                flow.packet(&mut w, at(last), Direction::ToTarget, FIN | ACK, &[])?;
                flow.packet(&mut w, at(last), Direction::FromTarget, FIN | ACK, &[])?;
                flow.packet(&mut w, at(last), Direction::ToTarget, ACK, &[])?;
            }
        }
    }
    done.cut = match reader.state() {
        State::Cut(why) => Some(why.clone()),
        _ => None,
    };
    done.packets = w.packets;
    w.out.flush()?;
    Ok(done)
}

/// The target's IPv4 address and port from its configured `HOST:PORT`.
fn target_endpoint(address: &str) -> (Ipv4Addr, u16) {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
    let ip = host.parse::<Ipv4Addr>().unwrap_or(FALLBACK_TARGET_IP);
    (ip, port.parse().unwrap_or(0))
}

/// An ephemeral port (49152-65535) that stays the same for one recording.
fn ephemeral_port(id: &str) -> u16 {
    // FNV-1a: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    49152 + (h % 16384) as u16
}

/// The TCP connection being made up: the next sequence number and IP id each way.
struct Flow {
    ends: [((Ipv4Addr, u16), [u8; 6]); 2],
    next_seq: [u32; 2],
    ip_id: [u16; 2],
    /// Bytes missed each way since the last packet that way (a comment on the next one).
    missed: [u64; 2],
}

impl Flow {
    fn new(client: (Ipv4Addr, u16), server: (Ipv4Addr, u16)) -> Self {
        Self {
            ends: [(client, CLIENT_MAC), (server, SERVER_MAC)],
            next_seq: [CLIENT_ISN, SERVER_ISN],
            ip_id: [1, 1],
            missed: [0, 0],
        }
    }

    fn skip(&mut self, dir: Direction, missed: u64) {
        let d = dir.index();
        // Sequence numbers count modulo 2^32.
        self.next_seq[d] = self.next_seq[d].wrapping_add(missed as u32);
        self.missed[d] = self.missed[d].saturating_add(missed);
    }

    fn packet<W: Write>(
        &mut self,
        w: &mut PcapWriter<W>,
        ts_us: i64,
        dir: Direction,
        flags: u8,
        payload: &[u8],
    ) -> io::Result<()> {
        let d = dir.index();
        let ((src, sport), src_mac) = self.ends[d];
        let ((dst, dport), dst_mac) = self.ends[1 - d];
        let seq = self.next_seq[d];
        let ack = if flags & ACK != 0 { self.next_seq[1 - d] } else { 0 };
        let frame = frame(
            (src_mac, dst_mac),
            (src, sport),
            (dst, dport),
            Tcp { seq, ack, flags, ip_id: self.ip_id[d] },
            payload,
        );
        self.ip_id[d] = self.ip_id[d].wrapping_add(1);
        let grow = payload.len() as u32 + u32::from(flags & (SYN | FIN) != 0);
        self.next_seq[d] = seq.wrapping_add(grow);
        let note = match std::mem::take(&mut self.missed[d]) {
            0 => None,
            missed => {
                let way = match dir {
                    Direction::ToTarget => "to the target",
                    Direction::FromTarget => "from the target",
                };
                Some(format!(
                    "fernwart: {missed} bytes {way} before this packet are not in the recording \
                     (the agent's recorder fell behind)"
                ))
            }
        };
        w.packet(ts_us, &frame, note.as_deref())
    }
}

struct Tcp {
    seq: u32,
    ack: u32,
    flags: u8,
    ip_id: u16,
}

/// Ethernet + IPv4 + TCP around `payload`, checksums filled in.
fn frame(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
    tcp: Tcp,
    payload: &[u8],
) -> Vec<u8> {
    let tcp_len = 20 + payload.len();
    let ip_len = 20 + tcp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = f.len();
    f.push(0x45); // version 4, header of 5 words
    f.push(0);
    f.extend_from_slice(&(ip_len as u16).to_be_bytes());
    f.extend_from_slice(&tcp.ip_id.to_be_bytes());
    f.extend_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    f.push(64); // TTL
    f.push(6); // TCP
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let ip_sum = checksum(&[&f[ip_start..]]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp_start = f.len();
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&tcp.seq.to_be_bytes());
    f.extend_from_slice(&tcp.ack.to_be_bytes());
    f.push(5 << 4); // header of 5 words
    f.push(tcp.flags);
    f.extend_from_slice(&65535u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    f.extend_from_slice(payload);
    let pseudo = pseudo_header(src, dst, tcp_len);
    let tcp_sum = checksum(&[&pseudo, &f[tcp_start..]]);
    f[tcp_start + 16..tcp_start + 18].copy_from_slice(&tcp_sum.to_be_bytes());
    f
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, tcp_len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&src.octets());
    p[4..8].copy_from_slice(&dst.octets());
    p[9] = 6;
    p[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts` (each of even length
/// but the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for w in &mut words {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
        sum = (sum & 0xffff) + (sum >> 16);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// pcapng blocks onto `out`.
struct PcapWriter<W: Write> {
    out: W,
    packets: u64,
}

impl<W: Write> PcapWriter<W> {
    fn new(out: W) -> Self {
        Self { out, packets: 0 }
    }

    fn section(&mut self, appl: &str, comment: &str) -> io::Result<()> {
        let mut body = Vec::new();
        body.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&(-1i64).to_le_bytes()); // section length not given
        options(&mut body, &[(OPT_COMMENT, comment.as_bytes()), (SHB_USERAPPL, appl.as_bytes())]);
        self.block(0x0A0D_0D0A, &body)
    }

    fn interface(&mut self, name: &str, description: &str) -> io::Result<()> {
        let mut body = Vec::new();
        body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&SNAPLEN.to_le_bytes());
        options(&mut body, &[(IF_NAME, name.as_bytes()), (IF_DESCRIPTION, description.as_bytes())]);
        self.block(1, &body)
    }

    fn packet(&mut self, ts_us: i64, data: &[u8], comment: Option<&str>) -> io::Result<()> {
        let ts = u64::try_from(ts_us).unwrap_or(0);
        let mut body = Vec::with_capacity(20 + data.len() + 4);
        body.extend_from_slice(&0u32.to_le_bytes()); // interface 0
        body.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(ts as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        pad(&mut body);
        if let Some(c) = comment {
            options(&mut body, &[(OPT_COMMENT, c.as_bytes())]);
        }
        self.packets += 1;
        self.block(6, &body)
    }

    /// type, total length, body (a multiple of 4 bytes), total length again.
    fn block(&mut self, kind: u32, body: &[u8]) -> io::Result<()> {
        let total = (12 + body.len()) as u32;
        self.out.write_all(&kind.to_le_bytes())?;
        self.out.write_all(&total.to_le_bytes())?;
        self.out.write_all(body)?;
        self.out.write_all(&total.to_le_bytes())
    }
}

/// Appends options (code, length, value padded to 4) and the end of options.
fn options(body: &mut Vec<u8>, opts: &[(u16, &[u8])]) {
    for (code, value) in opts {
        // An option's length is 16 bits: longer text is cut (comments are ours, short).
        let value = &value[..value.len().min(60_000)];
        body.extend_from_slice(&code.to_le_bytes());
        body.extend_from_slice(&(value.len() as u16).to_le_bytes());
        body.extend_from_slice(value);
        pad(body);
    }
    body.extend_from_slice(&[0, 0, 0, 0]);
}

fn pad(body: &mut Vec<u8>) {
    let fill = (4 - body.len() % 4) % 4;
    body.resize(body.len() + fill, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Meta, Writer};
    use proptest::prelude::*;

    fn meta(address: &str) -> Meta {
        Meta {
            id: "s1-1700000000000-1".into(),
            machine: "m1".into(),
            session: "s1".into(),
            users: vec!["tech1".into()],
            target: "plc".into(),
            address: address.into(),
            started_us: 1_700_000_000_000_000,
        }
    }

    /// A packet as read back: its time, the TCP fields and payload, its comment.
    #[derive(Debug, Clone)]
    struct Packet {
        ts_us: u64,
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        seq: u32,
        ack: u32,
        flags: u8,
        payload: Vec<u8>,
        comment: Option<String>,
    }

    fn u32le(b: &[u8]) -> u32 {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn u16be(b: &[u8]) -> u16 {
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Options of a block body from `at`: (code, value).
    fn read_options(body: &[u8], mut at: usize) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        if at == body.len() {
            return out;
        }
        while at + 4 <= body.len() {
            let code = u16::from_le_bytes([body[at], body[at + 1]]);
            let len = u16::from_le_bytes([body[at + 2], body[at + 3]]) as usize;
            if code == 0 {
                assert_eq!(at + 4, body.len(), "bytes after the end of options");
                return out;
            }
            out.push((code, body[at + 4..at + 4 + len].to_vec()));
            at += 4 + len.div_ceil(4) * 4;
        }
        panic!("options without their end");
    }

    /// Parses our own pcapng: the block structure, then each packet's Ethernet, IPv4 and TCP
    /// headers, checking both checksums.
    fn parse(file: &[u8]) -> (Vec<(u16, Vec<u8>)>, Vec<Packet>) {
        let mut at = 0;
        let mut kinds = Vec::new();
        let mut shb_opts = Vec::new();
        let mut packets = Vec::new();
        while at < file.len() {
            let kind = u32le(&file[at..]);
            let len = u32le(&file[at + 4..]) as usize;
            assert_eq!(len % 4, 0, "block length {len} is not a multiple of 4");
            assert_eq!(u32le(&file[at + len - 4..]), len as u32, "trailing length differs");
            let body = &file[at + 8..at + len - 4];
            kinds.push(kind);
            match kind {
                0x0A0D_0D0A => {
                    assert_eq!(u32le(body), 0x1A2B_3C4D);
                    assert_eq!(&body[4..8], &[1, 0, 0, 0]);
                    shb_opts = read_options(body, 16);
                }
                1 => {
                    assert_eq!(u16::from_le_bytes([body[0], body[1]]), LINKTYPE_ETHERNET);
                    read_options(body, 8);
                }
                6 => {
                    assert_eq!(u32le(body), 0);
                    let ts = (u64::from(u32le(&body[4..])) << 32) | u64::from(u32le(&body[8..]));
                    let cap = u32le(&body[12..]) as usize;
                    assert_eq!(cap, u32le(&body[16..]) as usize);
                    let data = &body[20..20 + cap];
                    let opts = read_options(body, 20 + cap.div_ceil(4) * 4);
                    let comment = opts
                        .iter()
                        .find(|(c, _)| *c == OPT_COMMENT)
                        .map(|(_, v)| String::from_utf8(v.clone()).unwrap());
                    packets.push(packet(ts, data, comment));
                }
                other => panic!("unexpected block type {other:#x}"),
            }
            at += len;
        }
        assert_eq!(kinds[..2], [0x0A0D_0D0A, 1]);
        (shb_opts, packets)
    }

    fn packet(ts_us: u64, data: &[u8], comment: Option<String>) -> Packet {
        assert_eq!(u16be(&data[12..]), 0x0800, "not IPv4");
        let ip = &data[14..];
        assert_eq!(ip[0], 0x45);
        let ip_len = u16be(&ip[2..]) as usize;
        assert_eq!(ip_len, ip.len());
        assert_eq!(checksum(&[&ip[..20]]), 0, "IPv4 header checksum");
        assert_eq!(ip[9], 6);
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let tcp = &ip[20..];
        assert_eq!(checksum(&[&pseudo_header(src, dst, tcp.len()), tcp]), 0, "TCP checksum");
        assert_eq!(tcp[12] >> 4, 5);
        Packet {
            ts_us,
            src: (src, u16be(tcp)),
            dst: (dst, u16be(&tcp[2..])),
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
            flags: tcp[13],
            payload: tcp[20..].to_vec(),
            comment,
        }
    }

    fn export_of(meta: &Meta, entries: &[Entry]) -> (Exported, Vec<u8>) {
        let mut w = Writer::new(Vec::new(), meta, 1).unwrap();
        let mut end = None;
        for e in entries {
            match e {
                Entry::Data { dir, t_us, bytes } => w.data(*dir, *t_us, bytes).unwrap(),
                Entry::Gap { dir, t_us, missed } => w.gap(*dir, *t_us, *missed).unwrap(),
                Entry::End { t_us } => end = Some(*t_us),
            }
        }
        let file = w.finish(end.unwrap_or(0)).unwrap();
        let mut r = Reader::new(&file[..]).unwrap();
        let mut out = Vec::new();
        let done = export(&mut r, &mut out).unwrap();
        (done, out)
    }

    #[test]
    fn a_modbus_request_and_answer_make_a_whole_tcp_connection() {
        let req = [0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x00, 0x00, 0x00, 0x02];
        let ans = [0x00, 0x01, 0x00, 0x00, 0x00, 0x07, 0x01, 0x03, 0x04, 0, 1, 0, 2];
        let m = meta("192.168.0.10:502");
        let (done, file) = export_of(
            &m,
            &[
                Entry::Data { dir: Direction::ToTarget, t_us: 1000, bytes: req.to_vec() },
                Entry::Data { dir: Direction::FromTarget, t_us: 3000, bytes: ans.to_vec() },
                Entry::End { t_us: 5000 },
            ],
        );

        let (shb, p) = parse(&file);
        assert!(done.cut.is_none());
        assert_eq!(done.packets, 8);
        assert!(String::from_utf8_lossy(&shb[0].1).contains("session s1"));
        let flags: Vec<u8> = p.iter().map(|p| p.flags).collect();
        assert_eq!(flags, [SYN, SYN | ACK, ACK, PSH | ACK, PSH | ACK, FIN | ACK, FIN | ACK, ACK]);
        let target = (Ipv4Addr::new(192, 168, 0, 10), 502);
        assert_eq!(p[0].dst, target);
        assert_eq!(p[0].src.0, CLIENT_IP);
        assert!(p[0].src.1 >= 49152);
        assert_eq!(p[3].payload, req);
        assert_eq!(p[4].payload, ans);
        // Handshake and data numbers line up: each side acknowledges all the other sent.
        assert_eq!(p[1].ack, p[0].seq + 1);
        assert_eq!(p[3].seq, p[0].seq + 1);
        assert_eq!(p[4].ack, p[3].seq + req.len() as u32);
        assert_eq!(p[5].seq, p[3].seq + req.len() as u32);
        assert_eq!(p[7].ack, p[6].seq + 1);
        assert_eq!(p[3].ts_us, m.started_us as u64 + 1000);
        assert_eq!(p[4].ts_us, m.started_us as u64 + 3000);
    }

    #[test]
    fn a_gap_moves_the_sequence_on_and_is_commented() {
        let (done, file) = export_of(
            &meta("plc.local:102"),
            &[
                Entry::Data { dir: Direction::FromTarget, t_us: 1, bytes: b"abc".to_vec() },
                Entry::Gap { dir: Direction::FromTarget, t_us: 2, missed: 5000 },
                Entry::Data { dir: Direction::FromTarget, t_us: 3, bytes: b"def".to_vec() },
                Entry::End { t_us: 4 },
            ],
        );

        let (_, p) = parse(&file);
        assert_eq!(done.missed, 5000);
        assert_eq!(p[0].dst.0, FALLBACK_TARGET_IP);
        assert_eq!((p[1].src.0, p[1].src.1), (FALLBACK_TARGET_IP, 102));
        assert_eq!(p[4].seq, p[3].seq + 3 + 5000);
        assert!(p[4].comment.as_deref().unwrap_or("").contains("5000 bytes from the target"));
        assert!(p[3].comment.is_none());
    }

    #[test]
    fn checksums_match_a_known_packet() {
        // RFC 1071's example words.
        assert_eq!(checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]), !0xddf2);
        // An odd length pads with zero.
        assert_eq!(checksum(&[&[0xab]]), !0xab00);
    }

    fn chunks() -> impl Strategy<Value = Vec<(bool, Vec<u8>, u16, u16)>> {
        // (to target?, bytes, time step, missed before it)
        proptest::collection::vec(
            (
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 1..4000),
                0u16..5000,
                prop_oneof![9 => Just(0u16), 1 => 1u16..3000],
            ),
            0..12,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_chunks_round_trip_through_the_recording_and_pcapng(chunks in chunks()) {
            let mut entries = Vec::new();
            let mut t = 0u64;
            let mut sent: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
            let mut missed = [0u64; 2];
            for (to, bytes, step, gap) in &chunks {
                let dir = if *to { Direction::ToTarget } else { Direction::FromTarget };
                t += u64::from(*step);
                if *gap > 0 {
                    entries.push(Entry::Gap { dir, t_us: t, missed: u64::from(*gap) });
                    missed[dir.index()] += u64::from(*gap);
                }
                entries.push(Entry::Data { dir, t_us: t, bytes: bytes.clone() });
                sent[dir.index()].extend_from_slice(bytes);
            }
            entries.push(Entry::End { t_us: t + 1 });

            let m = meta("10.1.2.3:502");
            let (done, file) = export_of(&m, &entries);
            let (_, packets) = parse(&file);

            prop_assert!(done.cut.is_none());
            prop_assert_eq!(done.bytes_to_target, sent[0].len() as u64);
            prop_assert_eq!(done.bytes_from_target, sent[1].len() as u64);
            let client = packets[0].src;
            let mut got: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
            let mut next = [packets[0].seq.wrapping_add(1), packets[1].seq.wrapping_add(1)];
            let mut skipped = [0u64; 2];
            let mut last_ts = 0;
            for p in &packets[3..packets.len() - 3] {
                let d = if p.src == client { 0 } else { 1 };
                prop_assert!(p.payload.len() <= MAX_SEGMENT && !p.payload.is_empty());
                prop_assert!(p.ts_us >= last_ts);
                last_ts = p.ts_us;
                // Every byte sits where its sequence number says; gaps are the only jumps.
                skipped[d] += u64::from(p.seq.wrapping_sub(next[d]));
                got[d].extend_from_slice(&p.payload);
                next[d] = p.seq.wrapping_add(p.payload.len() as u32);
                prop_assert_eq!(p.ack, next[1 - d]);
            }
            prop_assert_eq!(&got, &sent);
            prop_assert_eq!(skipped, missed);
            let fin = &packets[packets.len() - 3];
            prop_assert_eq!(fin.flags, FIN | ACK);
            prop_assert_eq!(fin.seq, next[0].wrapping_add(missed_after_last(&entries, 0)));
        }
    }

    /// Bytes missed that way after its last data entry (no packet shows those).
    fn missed_after_last(entries: &[Entry], d: usize) -> u32 {
        let mut after = 0u64;
        for e in entries {
            match e {
                Entry::Data { dir, .. } if dir.index() == d => after = 0,
                Entry::Gap { dir, missed, .. } if dir.index() == d => after += missed,
                _ => {}
            }
        }
        after as u32
    }
}
