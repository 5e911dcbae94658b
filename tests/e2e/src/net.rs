//! Loopback networking for the tests: free ports, an echo target, probes through tunnels.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rand::RngCore;

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A port that was free a moment ago on `ip` (bind to port 0, read it, release it).
pub fn free_port(ip: IpAddr) -> Result<u16> {
    let l = TcpListener::bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("cannot bind {ip} port 0"))?;
    Ok(l.local_addr()?.port())
}

/// Polls `f` every `every` until it returns `Some`, or fails after `timeout` with `what`.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return match last_err {
                Some(e) => Err(e.context(format!("{what}: not within {timeout:?}"))),
                None => bail!("{what}: not within {timeout:?}"),
            };
        }
        thread::sleep(every);
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    poll(&format!("a listener on {addr}"), timeout, Duration::from_millis(50), || {
        Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok().map(|_| ()))
    })
}

/// A TCP target inside the "machine network": echoes what it gets, after an optional greeting.
/// One thread per connection, TCP_NODELAY. Stops accepting when dropped.
pub struct Echo {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Echo {
    /// An echo target on 127.0.0.1.
    pub fn start() -> Result<Self> {
        Self::start_on(LOCALHOST, None)
    }

    /// An echo target on `ip` that first sends `greeting`, if any.
    pub fn start_on(ip: IpAddr, greeting: Option<Vec<u8>>) -> Result<Self> {
        Self::bind(SocketAddr::new(ip, 0), greeting)
    }

    pub fn bind(addr: SocketAddr, greeting: Option<Vec<u8>>) -> Result<Self> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("echo target cannot bind {addr}"))?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, act, st) = (accepted.clone(), active.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                acc.fetch_add(1, Ordering::SeqCst);
                act.fetch_add(1, Ordering::SeqCst);
                let act = act.clone();
                let greeting = greeting.clone();
                thread::spawn(move || {
                    echo(conn, greeting.as_deref());
                    act.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self { addr, accepted, active, stop })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn echo(mut conn: TcpStream, greeting: Option<&[u8]>) {
    let _ = conn.set_nodelay(true);
    if let Some(g) = greeting {
        if conn.write_all(g).is_err() {
            return;
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// Sends `payload` to the echo behind `addr` and checks that the same bytes come back,
/// writing and reading at once so that large payloads cannot deadlock.
pub fn roundtrip(addr: SocketAddr, payload: &[u8], timeout: Duration) -> Result<()> {
    let s = connect(addr, timeout)?;
    let mut writer = s.try_clone()?;
    let data = payload.to_vec();
    let send = thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&data)?;
        writer.flush()
    });
    let got = read_exact_len(&s, payload.len(), timeout);
    let sent = send.join();
    let got = got?;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("writing {} bytes to {addr}: {e}", payload.len()),
        Err(_) => bail!("writer thread for {addr} panicked"),
    }
    if got != payload {
        let first = got.iter().zip(payload).position(|(a, b)| a != b).unwrap_or(got.len());
        bail!("echo via {addr} came back changed (first difference at byte {first})");
    }
    Ok(())
}

/// Reads exactly `len` bytes or fails with how many came before EOF or the deadline.
fn read_exact_len(mut s: &TcpStream, len: usize, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::with_capacity(len);
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < len {
        if Instant::now() >= deadline {
            bail!("only {} of {len} bytes came back within {timeout:?}", got.len());
        }
        let want = (len - got.len()).min(buf.len());
        match s.read(&mut buf[..want]) {
            Ok(0) => bail!("connection closed after {} of {len} bytes", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => bail!("reading after {} of {len} bytes: {e}", got.len()),
        }
    }
    Ok(got)
}

/// Reads the greeting of a target that sends one first.
pub fn read_greeting(s: &TcpStream, len: usize, timeout: Duration) -> Result<Vec<u8>> {
    read_exact_len(s, len, timeout)
}

/// An open connection through a forward that has carried one byte each way.
pub fn open_tunnel(addr: SocketAddr) -> Result<TcpStream> {
    let mut s = connect(addr, Duration::from_secs(5))?;
    s.write_all(b"x").context("writing the first byte")?;
    let mut one = [0u8; 1];
    s.read_exact(&mut one).with_context(|| format!("no echo of the first byte via {addr}"))?;
    if one != *b"x" {
        bail!("echo via {addr} returned {one:?} instead of b\"x\"");
    }
    Ok(s)
}

/// Waits until the peer closes `s` (EOF or error); returns how long that took, or `None`
/// if it was still open after `timeout`. Writes a byte now and then so that a reset shows.
pub fn wait_closed(s: &mut TcpStream, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 1024];
    let mut last_write: Option<Instant> = None;
    while start.elapsed() < timeout {
        let due = match last_write {
            Some(t) => t.elapsed() >= Duration::from_millis(100),
            None => true,
        };
        if due {
            last_write = Some(Instant::now());
            if s.write_all(b"y").is_err() {
                return Some(start.elapsed());
            }
        }
        if peer_closed(s.read(&mut buf)) {
            return Some(start.elapsed());
        }
    }
    None
}

/// Whether a read says the connection is over (EOF or a hard error), not merely quiet.
fn peer_closed(r: std::io::Result<usize>) -> bool {
    match r {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
        ),
    }
}

/// Waits, only reading, until the peer closes `s`; returns how long that took, or `None`.
pub fn wait_eof(s: &mut TcpStream, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 4096];
    while start.elapsed() < timeout {
        if peer_closed(s.read(&mut buf)) {
            return Some(start.elapsed());
        }
    }
    None
}

/// Whether a fresh connection through `addr` fails to carry an echo (refused, closed or silent).
pub fn tunnel_refuses(addr: SocketAddr, timeout: Duration) -> bool {
    roundtrip(addr, b"probe", timeout).is_err()
}
