//! A real HTTP CONNECT proxy for the proxy scenario: tinyproxy with its own config.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    net::{free_port, wait_port, LOCALHOST},
    process::Proc,
};

/// Where tinyproxy is installed, if it is.
pub fn find() -> Option<PathBuf> {
    let mut candidates =
        vec![PathBuf::from("/usr/bin/tinyproxy"), PathBuf::from("/usr/sbin/tinyproxy")];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("tinyproxy")));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// tinyproxy on a free 127.0.0.1 port, allowing CONNECT to one port only.
pub struct Tinyproxy {
    pub addr: SocketAddr,
    pub url: String,
    pub log: PathBuf,
    pub proc: Proc,
}

impl Tinyproxy {
    /// Writes `DIR/tinyproxy.conf` and runs `tinyproxy -d -c CONF` in the foreground.
    pub fn start(bin: &Path, dir: &Path, connect_port: u16) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port(LOCALHOST)?;
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        let text = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 600\nAllow 127.0.0.1\n\
             ConnectPort {connect_port}\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 200\n",
            log.display()
        );
        std::fs::write(&conf, text).with_context(|| format!("cannot write {}", conf.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-d").arg("-c").arg(&conf);
        let proc = Proc::spawn(cmd, "tinyproxy", &dir.join("tinyproxy.out"), false)?;
        let addr = SocketAddr::new(LOCALHOST, port);
        wait_port(addr, Duration::from_secs(10)).context("tinyproxy did not start")?;
        Ok(Self { addr, url: format!("http://{addr}"), log, proc })
    }

    /// The CONNECT requests tinyproxy logged so far (`Request (file descriptor N): CONNECT
    /// host:port HTTP/1.1`; the level column of every line also says CONNECT).
    pub fn connect_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("): CONNECT "))
            .map(str::to_owned)
            .collect()
    }
}
