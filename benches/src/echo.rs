//! The target: a TCP echo server (tokio, TCP_NODELAY) running inside the bench.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts the echo server on 127.0.0.1 (free port) in a background thread with its own runtime.
pub fn start() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding echo server")?;
    listener.set_nonblocking(true).context("set_nonblocking")?;
    let addr = listener.local_addr().context("echo local_addr")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("echo")
        .enable_io()
        .enable_time()
        .build()
        .context("building echo runtime")?;
    std::thread::Builder::new()
        .name("echo-accept".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("echo server: {e}");
                        return;
                    }
                };
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            tokio::spawn(serve(stream));
                        }
                        Err(e) => {
                            eprintln!("echo server accept: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                    }
                }
            });
        })
        .context("spawning echo thread")?;
    Ok(addr)
}

async fn serve(mut stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = stream.shutdown().await;
}
