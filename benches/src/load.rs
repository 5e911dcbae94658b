//! The client side of the measurements: blocking std sockets, one thread per direction.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

const IO_TIMEOUT: Duration = Duration::from_secs(30);
const CHUNK: usize = 64 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true).context("TCP_NODELAY")?;
    s.set_read_timeout(Some(IO_TIMEOUT)).context("read timeout")?;
    s.set_write_timeout(Some(IO_TIMEOUT)).context("write timeout")?;
    Ok(s)
}

/// Sends `data` and reads it back; true when the echo matches.
fn echo_once(addr: SocketAddr, data: &[u8], timeout: Duration) -> Result<bool> {
    let mut s = connect(addr)?;
    s.set_read_timeout(Some(timeout)).context("read timeout")?;
    s.write_all(data).context("write")?;
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).context("read")?;
    Ok(back == data)
}

/// Waits until a connection to `addr` carries bytes to the echo target and back.
pub fn wait_echo(
    addr: SocketAddr,
    within: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + within;
    let mut last = anyhow!("no attempt");
    while Instant::now() < deadline {
        alive()?;
        match echo_once(addr, b"fernwart-bench ready?", Duration::from_secs(2)) {
            Ok(true) => return Ok(()),
            Ok(false) => bail!("{addr} answered with other bytes than were sent"),
            Err(e) => last = e,
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(last.context(format!("{addr} did not echo within {within:?}")))
}

/// Bulk throughput through the echo target: each of `streams` connections sends
/// `bytes_per_stream` while a second thread reads them back (full duplex). Returns MiB/s of
/// payload (counted once, in the sending direction) summed over all streams.
pub fn bulk(addr: SocketAddr, streams: usize, bytes_per_stream: u64) -> Result<f64> {
    bulk_of(addr, streams, bytes_per_stream, false)
}

/// [`bulk`] with the payload a repeating 64 KiB of pseudo-random bytes when `random` (no
/// compressor finds it again within its window: incompressible, like a firmware image), else
/// the usual repeating byte pattern (compresses like polling traffic).
pub fn bulk_of(
    addr: SocketAddr,
    streams: usize,
    bytes_per_stream: u64,
    random: bool,
) -> Result<f64> {
    let barrier = Arc::new(Barrier::new(streams));
    let mut handles = Vec::new();
    for _ in 0..streams {
        let stream = connect(addr)?;
        let barrier = barrier.clone();
        handles.push(thread::spawn(move || -> Result<(Instant, Instant)> {
            let mut writer = stream.try_clone().context("try_clone")?;
            let mut reader = stream;
            barrier.wait();
            let start = Instant::now();
            let w = thread::spawn(move || -> Result<()> {
                let buf: Vec<u8> = if random {
                    // xorshift64: reproducible, no dependency.
                    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
                    (0..CHUNK)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect()
                } else {
                    (0..CHUNK).map(|i| (i % 251) as u8).collect()
                };
                let mut left = bytes_per_stream;
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    writer.write_all(&buf[..n]).context("bulk write")?;
                    left -= n as u64;
                }
                Ok(())
            });
            let mut buf = vec![0u8; CHUNK];
            let mut got = 0u64;
            while got < bytes_per_stream {
                let n = reader.read(&mut buf).context("bulk read")?;
                if n == 0 {
                    bail!("connection closed after {got} of {bytes_per_stream} bytes");
                }
                got += n as u64;
            }
            let end = Instant::now();
            w.join().map_err(|_| anyhow!("writer thread panicked"))??;
            Ok((start, end))
        }));
    }
    let mut times = Vec::new();
    for h in handles {
        times.push(h.join().map_err(|_| anyhow!("bulk thread panicked"))??);
    }
    let start = times.iter().map(|t| t.0).min().context("no streams")?;
    let end = times.iter().map(|t| t.1).max().context("no streams")?;
    let secs = (end - start).as_secs_f64();
    Ok((bytes_per_stream * streams as u64) as f64 / MIB / secs)
}

/// The `p`-th percentile (nearest rank) of latency samples.
pub fn pct(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// The median of a few runs.
pub fn median(values: &[f64]) -> Option<f64> {
    pct(values, 50.0)
}

/// `count` ping-pongs of `size` bytes on one connection (after `count / 10` warm-up rounds).
/// Returns microseconds per round trip.
pub fn rtt(addr: SocketAddr, count: usize, size: usize) -> Result<Vec<f64>> {
    let mut s = connect(addr)?;
    let ping: Vec<u8> = (0..size).map(|i| (i * 7 % 256) as u8).collect();
    let mut pong = vec![0u8; size];
    let mut out = Vec::with_capacity(count);
    for i in 0..(count + count / 10) {
        let t = Instant::now();
        s.write_all(&ping).context("ping write")?;
        s.read_exact(&mut pong).context("pong read")?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        if pong != ping {
            bail!("echo returned other bytes");
        }
        if i >= count / 10 {
            out.push(us);
        }
    }
    Ok(out)
}

/// `count` fresh connections: time from starting the TCP connect to the first echoed byte.
/// Returns microseconds per connection.
pub fn connect_first_byte(addr: SocketAddr, count: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..(count + count / 20) {
        let t = Instant::now();
        let mut s = connect(addr)?;
        s.write_all(b"x").context("first byte write")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).context("first byte read")?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
        if b[0] != b'x' {
            bail!("echo returned another byte");
        }
    }
    // The first connections warm up caches and the tunnel; drop them.
    let warm = count / 20;
    Ok(out.split_off(warm))
}
