//! A syslog receiver for the tests: octet-counted frames (RFC 6587 3.4.1, RFC 5425 4.3) over
//! TCP or TLS, each message checked byte for byte against RFC 5424's grammar (PRI range,
//! version 1, timestamp, header field lengths and characters, structured data syntax and
//! escaping, a BOM followed by valid UTF-8). A frame or message that breaks a rule is recorded
//! as an error and closes its connection, as a strict receiver would.
//!
//! It can be stopped (listener and every connection closed) and started again on the same
//! port, to play a receiver that goes away while records keep coming.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::net::LOCALHOST;

/// Longest frame accepted (RFC 5425 asks receivers for at least 2048, advises 8192).
pub const MAX_FRAME: usize = 64 * 1024;
/// How often blocked threads look at the stop flag.
const TICK: Duration = Duration::from_millis(20);

/// One message as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The SYSLOG-MSG bytes exactly as framed.
    pub raw: Vec<u8>,
    pub facility: u8,
    pub severity: u8,
    pub timestamp: Option<String>,
    pub hostname: Option<String>,
    pub app_name: Option<String>,
    pub procid: Option<String>,
    pub msgid: Option<String>,
    pub sd: Vec<SdElement>,
    /// MSG without its BOM, if any.
    pub msg: Vec<u8>,
    pub bom: bool,
    /// Which connection (1, 2, ...) brought it.
    pub connection: usize,
}

/// `[ID name="value" ...]`, values unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdElement {
    pub id: String,
    pub params: Vec<(String, String)>,
}

impl Message {
    /// The first parameter `name` of element `id`.
    pub fn param(&self, id: &str, name: &str) -> Option<&str> {
        self.sd
            .iter()
            .filter(|e| e.id == id)
            .flat_map(|e| e.params.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// MSG as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.msg).into_owned()
    }
}

/// What every connection shares with the test.
#[derive(Default)]
struct Shared {
    messages: Mutex<Vec<Message>>,
    errors: Mutex<Vec<String>>,
    connections: AtomicUsize,
}

struct Running {
    stop: Arc<AtomicBool>,
    acceptor: JoinHandle<()>,
    handlers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// The receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    shared: Arc<Shared>,
    running: Option<Running>,
}

impl Receiver {
    /// Plain TCP on 127.0.0.1, a free port.
    pub fn start_tcp() -> Result<Self> {
        Self::start(None)
    }

    /// TLS on 127.0.0.1 with this certificate chain and key (TLS 1.2 and 1.3).
    pub fn start_tls(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the receiver's certificate")?;
        Self::start(Some(Arc::new(config)))
    }

    fn start(tls: Option<Arc<ServerConfig>>) -> Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
            .context("the syslog receiver cannot bind 127.0.0.1:0")?;
        let mut r = Self {
            addr: listener.local_addr()?,
            tls,
            shared: Arc::new(Shared::default()),
            running: None,
        };
        r.serve(listener)?;
        Ok(r)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `tcp://127.0.0.1:PORT` or `tls://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "tcp" };
        format!("{scheme}://{}", self.addr)
    }

    /// Closes the listener and every connection (what arrived before stays recorded).
    pub fn stop(&mut self) {
        let Some(running) = self.running.take() else { return };
        running.stop.store(true, Ordering::SeqCst);
        let _ = running.acceptor.join();
        let handlers = match running.handlers.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for h in handlers {
            let _ = h.join();
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        if self.running.is_some() {
            bail!("the receiver runs already");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e).with_context(|| format!("binding {} again", self.addr)),
            }
        };
        self.serve(listener)
    }

    pub fn running(&self) -> bool {
        self.running.is_some()
    }

    /// Every message received so far, in order of arrival.
    pub fn messages(&self) -> Vec<Message> {
        lock(&self.shared.messages).clone()
    }

    /// Every violation seen so far.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared.errors).clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    fn serve(&mut self, listener: TcpListener) -> Result<()> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let handlers = Arc::new(Mutex::new(Vec::new()));
        let (st, hs, shared, tls) =
            (stop.clone(), handlers.clone(), self.shared.clone(), self.tls.clone());
        let acceptor = thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let id = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                        let (st, shared, tls) = (st.clone(), shared.clone(), tls.clone());
                        let h = thread::spawn(move || handle(conn, id, tls, &st, &shared));
                        lock(&hs).push(h);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(TICK),
                    Err(_) => thread::sleep(TICK),
                }
            }
            // The listener closes here.
        });
        self.running = Some(Running { stop, acceptor, handlers });
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// One connection: frames until the sender closes, a violation, or the stop.
fn handle(
    conn: TcpStream,
    id: usize,
    tls: Option<Arc<ServerConfig>>,
    stop: &AtomicBool,
    shared: &Shared,
) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(TICK));
    let result = match tls {
        None => read_frames(&mut &conn, id, stop, shared),
        Some(config) => match ServerConnection::new(config) {
            Ok(server) => {
                let mut stream = StreamOwned::new(server, &conn);
                let r = read_frames(&mut stream, id, stop, shared);
                stream.conn.send_close_notify();
                let _ = stream.flush();
                r
            }
            Err(e) => Err(format!("TLS setup: {e}")),
        },
    };
    if let Err(e) = result {
        lock(&shared.errors).push(format!("connection {id}: {e}"));
    }
    let _ = conn.shutdown(Shutdown::Both);
}

/// Reads frames off `r`: `Ok` at the sender's end of stream or the stop.
fn read_frames(
    r: &mut impl Read,
    id: usize,
    stop: &AtomicBool,
    shared: &Shared,
) -> Result<(), String> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Every whole frame in the buffer.
        loop {
            match split_frame(&buf)? {
                None => break,
                Some((len_digits, len)) => {
                    let start = len_digits + 1;
                    let raw = buf[start..start + len].to_vec();
                    buf.drain(..start + len);
                    let mut m = parse(&raw)?;
                    m.connection = id;
                    lock(&shared.messages).push(m);
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match r.read(&mut chunk) {
            Ok(0) => {
                if buf.is_empty() {
                    return Ok(());
                }
                return Err(format!(
                    "the sender closed inside a frame ({} bytes pending)",
                    buf.len()
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            // A reset or a TLS close without close_notify: the sender went away.
            Err(e)
                if buf.is_empty()
                    && matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
                    ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
}

/// A whole frame at the start of `buf`: (digits of MSG-LEN, MSG-LEN); `None` while incomplete.
/// `MSG-LEN = NONZERO-DIGIT 0*8DIGIT`, then one space.
pub fn split_frame(buf: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == buf.len() {
        if digits > 9 {
            return Err("MSG-LEN has more than 9 digits".into());
        }
        return Ok(None);
    }
    if digits == 0 {
        return Err(format!("a frame starts with {:?}, not MSG-LEN", char::from(buf[0])));
    }
    if buf[0] == b'0' {
        return Err("MSG-LEN starts with 0".into());
    }
    if digits > 9 {
        return Err("MSG-LEN has more than 9 digits".into());
    }
    if buf[digits] != b' ' {
        return Err(format!("MSG-LEN is followed by {:?}, not a space", char::from(buf[digits])));
    }
    let len: usize = std::str::from_utf8(&buf[..digits])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("MSG-LEN is not a number")?;
    if len > MAX_FRAME {
        return Err(format!("MSG-LEN {len} above {MAX_FRAME}"));
    }
    if buf.len() < digits + 1 + len {
        return Ok(None);
    }
    Ok(Some((digits, len)))
}

/// Parses one SYSLOG-MSG strictly (RFC 5424 section 6).
pub fn parse(raw: &[u8]) -> Result<Message, String> {
    let mut p = Parser { b: raw, i: 0 };
    let what = |e: String| format!("{e} in {:?}", String::from_utf8_lossy(raw));
    p.header_and_rest().map_err(what)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl Parser<'_> {
    fn header_and_rest(&mut self) -> Result<Message, String> {
        self.expect(b'<')?;
        let pri_digits = self.digits(1, 3)?;
        if pri_digits.len() > 1 && pri_digits.starts_with('0') {
            return Err(format!("PRI {pri_digits} has a leading zero"));
        }
        let prival: u16 = pri_digits.parse().map_err(|_| "PRI")?;
        if prival > 191 {
            return Err(format!("PRI {prival} above 191"));
        }
        self.expect(b'>')?;
        self.expect(b'1').map_err(|e| format!("VERSION is not 1: {e}"))?;
        self.sp()?;
        let timestamp = self.timestamp()?;
        self.sp()?;
        let hostname = self.header_field("HOSTNAME", 255)?;
        self.sp()?;
        let app_name = self.header_field("APP-NAME", 48)?;
        self.sp()?;
        let procid = self.header_field("PROCID", 128)?;
        self.sp()?;
        let msgid = self.header_field("MSGID", 32)?;
        self.sp()?;
        let sd = self.structured_data()?;
        let (msg, bom) = if self.i == self.b.len() {
            (Vec::new(), false)
        } else {
            self.sp().map_err(|e| format!("after STRUCTURED-DATA: {e}"))?;
            let rest = &self.b[self.i..];
            match rest.strip_prefix(BOM) {
                Some(text) => {
                    std::str::from_utf8(text)
                        .map_err(|e| format!("MSG after the BOM is not UTF-8: {e}"))?;
                    (text.to_vec(), true)
                }
                None => (rest.to_vec(), false),
            }
        };
        Ok(Message {
            raw: self.b.to_vec(),
            facility: (prival / 8) as u8,
            severity: (prival % 8) as u8,
            timestamp,
            hostname,
            app_name,
            procid,
            msgid,
            sd,
            msg,
            bom,
            connection: 0,
        })
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        match self.peek() {
            Some(x) if x == c => {
                self.i += 1;
                Ok(())
            }
            Some(x) => Err(format!(
                "{:?} at byte {} where {:?} belongs",
                char::from(x),
                self.i,
                char::from(c)
            )),
            None => Err(format!("the message ends where {:?} belongs", char::from(c))),
        }
    }

    fn sp(&mut self) -> Result<(), String> {
        self.expect(b' ')
    }

    fn digits(&mut self, min: usize, max: usize) -> Result<String, String> {
        let start = self.i;
        while self.i - start < max && self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        if self.i - start < min {
            return Err(format!("{min} to {max} digits expected at byte {start}"));
        }
        Ok(String::from_utf8_lossy(&self.b[start..self.i]).into_owned())
    }

    /// Exactly `n` digits as a number.
    fn number(
        &mut self,
        n: usize,
        what: &str,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<u32, String> {
        let d = self.digits(n, n).map_err(|e| format!("{what}: {e}"))?;
        let v: u32 = d.parse().map_err(|_| what.to_string())?;
        if !range.contains(&v) {
            return Err(format!("{what} {d} out of range"));
        }
        Ok(v)
    }

    /// `NILVALUE / FULL-DATE "T" FULL-TIME`.
    fn timestamp(&mut self) -> Result<Option<String>, String> {
        if self.nil() {
            return Ok(None);
        }
        let start = self.i;
        let year = self.number(4, "DATE-FULLYEAR", 0..=9999)?;
        self.expect(b'-')?;
        let month = self.number(2, "DATE-MONTH", 1..=12)?;
        self.expect(b'-')?;
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        self.number(2, "DATE-MDAY", 1..=days)?;
        self.expect(b'T')?;
        self.number(2, "TIME-HOUR", 0..=23)?;
        self.expect(b':')?;
        self.number(2, "TIME-MINUTE", 0..=59)?;
        self.expect(b':')?;
        // Leap seconds MUST NOT be used (6.2.3).
        self.number(2, "TIME-SECOND", 0..=59)?;
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits(1, 6).map_err(|e| format!("TIME-SECFRAC: {e}"))?;
        }
        match self.peek() {
            Some(b'Z') => self.i += 1,
            Some(b'+' | b'-') => {
                self.i += 1;
                self.number(2, "TIME-HOUR (offset)", 0..=23)?;
                self.expect(b':')?;
                self.number(2, "TIME-MINUTE (offset)", 0..=59)?;
            }
            _ => return Err(format!("TIME-OFFSET missing at byte {}", self.i)),
        }
        Ok(Some(String::from_utf8_lossy(&self.b[start..self.i]).into_owned()))
    }

    /// A NILVALUE (`-` followed by a space or the end).
    fn nil(&mut self) -> bool {
        if self.peek() == Some(b'-') && matches!(self.b.get(self.i + 1), None | Some(b' ')) {
            self.i += 1;
            return true;
        }
        false
    }

    /// `NILVALUE / 1*max PRINTUSASCII`.
    fn header_field(&mut self, what: &str, max: usize) -> Result<Option<String>, String> {
        if self.nil() {
            return Ok(None);
        }
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_graphic()) {
            self.i += 1;
        }
        let n = self.i - start;
        if n == 0 {
            return Err(format!("{what} is empty or not printable ASCII at byte {start}"));
        }
        if n > max {
            return Err(format!("{what} has {n} characters, more than {max}"));
        }
        Ok(Some(String::from_utf8_lossy(&self.b[start..self.i]).into_owned()))
    }

    /// `NILVALUE / 1*SD-ELEMENT`; an SD-ID appears once.
    fn structured_data(&mut self) -> Result<Vec<SdElement>, String> {
        if self.nil() {
            return Ok(Vec::new());
        }
        let mut elements: Vec<SdElement> = Vec::new();
        while self.peek() == Some(b'[') {
            self.i += 1;
            let id = self.sd_name("SD-ID")?;
            check_sd_id(&id)?;
            if elements.iter().any(|e| e.id == id) {
                return Err(format!("SD-ID {id} twice"));
            }
            let mut params = Vec::new();
            loop {
                match self.peek() {
                    Some(b']') => {
                        self.i += 1;
                        break;
                    }
                    Some(b' ') => {
                        self.i += 1;
                        let name = self.sd_name("PARAM-NAME")?;
                        self.expect(b'=')?;
                        self.expect(b'"')?;
                        params.push((name, self.param_value()?));
                    }
                    Some(c) => {
                        return Err(format!(
                            "{:?} inside an SD-ELEMENT at byte {}",
                            char::from(c),
                            self.i
                        ))
                    }
                    None => return Err("the message ends inside an SD-ELEMENT".into()),
                }
            }
            elements.push(SdElement { id, params });
        }
        if elements.is_empty() {
            return Err(format!("STRUCTURED-DATA is neither - nor [...] at byte {}", self.i));
        }
        Ok(elements)
    }

    /// `1*32 PRINTUSASCII` except `=`, space, `]` and `"`.
    fn sd_name(&mut self, what: &str) -> Result<String, String> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_graphic() && !matches!(c, b'=' | b']' | b'"'))
        {
            self.i += 1;
        }
        let n = self.i - start;
        if n == 0 || n > 32 {
            return Err(format!("{what} of {n} characters at byte {start}"));
        }
        Ok(String::from_utf8_lossy(&self.b[start..self.i]).into_owned())
    }

    /// UTF-8 up to the closing `"`; `"`, `\` and `]` must come escaped (and this receiver
    /// wants nothing else escaped: a lone backslash means the sender forgot one).
    fn param_value(&mut self) -> Result<String, String> {
        let mut value = Vec::new();
        loop {
            match self.peek() {
                None => return Err("the message ends inside a PARAM-VALUE".into()),
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b']') => {
                    return Err(format!("an unescaped ] inside a PARAM-VALUE at byte {}", self.i))
                }
                Some(b'\\') => {
                    match self.b.get(self.i + 1) {
                        Some(c @ (b'"' | b'\\' | b']')) => value.push(*c),
                        _ => return Err(format!("a backslash escapes nothing at byte {}", self.i)),
                    }
                    self.i += 2;
                }
                Some(c) => {
                    value.push(c);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(value).map_err(|e| format!("a PARAM-VALUE is not UTF-8: {e}"))
    }
}

/// `name@enterprise-number` (digits and dots), or one of the IANA names (RFC 5424 7).
fn check_sd_id(id: &str) -> Result<(), String> {
    match id.split_once('@') {
        Some((name, pen)) => {
            let pen_ok = !pen.is_empty()
                && pen.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if name.is_empty() || name.contains('@') || !pen_ok {
                return Err(format!("SD-ID {id:?} is not NAME@ENTERPRISE-NUMBER"));
            }
            Ok(())
        }
        None if matches!(id, "timeQuality" | "origin" | "meta") => Ok(()),
        None => Err(format!("SD-ID {id:?} is neither registered nor NAME@NUMBER")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const GOOD: &str = "<109>1 2026-01-01T00:00:00.123Z fw fernwart 42 org.add \
                        [fernwart@32473 seq=\"1\" actor=\"a\\\"b\\\\c\\]d\"] {\"a\":1}";

    #[test]
    fn a_good_message_parses() {
        let m = parse(GOOD.as_bytes()).unwrap();
        assert_eq!((m.facility, m.severity), (13, 5));
        assert_eq!(m.msgid.as_deref(), Some("org.add"));
        assert_eq!(m.param("fernwart@32473", "actor"), Some("a\"b\\c]d"));
        assert_eq!(m.text(), "{\"a\":1}");
        let m = parse("<0>1 - - - - - -".as_bytes()).unwrap();
        assert!(m.sd.is_empty() && m.msg.is_empty());
        let m =
            parse("<13>1 2026-02-28T23:59:59+01:00 h a p m [x@1.2] \u{feff}ü".as_bytes()).unwrap();
        assert!(m.bom);
        assert_eq!(m.text(), "ü");
    }

    #[test]
    fn broken_messages_are_refused() {
        for bad in [
            "<192>1 - - - - - -",
            "<013>1 - - - - - -",
            "<13>2 - - - - - -",
            "<13>1  - - - - -",
            "<13>1 2026-02-29T00:00:00Z - - - - -",
            "<13>1 2026-01-01T24:00:00Z - - - - -",
            "<13>1 2026-01-01T00:00:60Z - - - - -",
            "<13>1 2026-01-01T00:00:00 - - - - -",
            "<13>1 2026-01-01T00:00:00.1234567Z - - - - -",
            "<13>1 - - - - - [x@1 a=\"b]\"]",
            "<13>1 - - - - - [x@1 a=\"b\\c\"]",
            "<13>1 - - - - - [x@1 a=\"b\"",
            "<13>1 - - - - - [x@1][x@1]",
            "<13>1 - - - - - [x a=\"b\"]",
            "<13>1 - - - - - [x@1 a=b]",
            "<13>1 - - - - - -x",
            "<13>1 - - - - 012345678901234567890123456789012 -",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let mut bad_utf8 = b"<13>1 - - - - - - ".to_vec();
        bad_utf8.extend_from_slice(BOM);
        bad_utf8.push(0xff);
        assert!(parse(&bad_utf8).is_err());
    }

    #[test]
    fn frames_are_split_by_their_length() {
        assert_eq!(split_frame(b"12").unwrap(), None);
        assert_eq!(split_frame(b"3 ab").unwrap(), None);
        assert_eq!(split_frame(b"3 abc4 ").unwrap(), Some((1, 3)));
        for bad in [&b"03 abc"[..], b"x", b"3\nabc", b"1234567890 x", b"99999999 x"] {
            assert!(split_frame(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
