//! The floor: the same chain of three processes as the tunnels (technician side → relay →
//! machine side → target), each one a plain TCP relay (tokio `copy_bidirectional`,
//! TCP_NODELAY, current-thread runtime), without TLS, multiplexing, authentication or checks.
//! Its latency shows what the process hops alone cost on this machine: no relay chain of three
//! processes is much faster, whatever its protocol. (Its bulk figure is that of tokio's 8 KiB
//! copy buffers, not a limit.)

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context, Result};

use crate::{
    load,
    procs::{free_port, Proc, Role},
};

/// `fernwart-bench --plain-relay LISTEN TARGET` runs one relay of the chain.
pub const RELAY_ARG: &str = "--plain-relay";

/// Runs one plain relay until killed: every connection accepted on `listen` is copied both
/// ways to a fresh connection to `target`.
pub fn run_relay(listen: &str, target: &str) -> Result<()> {
    let listen: SocketAddr = listen.parse().context("relay listen address")?;
    let target: SocketAddr = target.parse().context("relay target address")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the relay runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        loop {
            let (mut inbound, _) = listener.accept().await.context("accept")?;
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                if inbound.set_nodelay(true).is_err() || outbound.set_nodelay(true).is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    })
}

pub struct FloorPath {
    /// The first relay (the technician's side): measure against this.
    pub local: SocketAddr,
    // Field order = drop order: from the technician's side to the machine's.
    technician: Proc,
    relay: Proc,
    machine: Proc,
    _dir: tempfile::TempDir,
}

impl FloorPath {
    pub fn start(target: SocketAddr) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let dir = tempfile::tempdir().context("temp dir")?;
        let spawn = |name: &str, to: SocketAddr| -> Result<(Proc, SocketAddr)> {
            let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let mut cmd = Command::new(&exe);
            cmd.arg(RELAY_ARG).arg(listen.to_string()).arg(to.to_string());
            let p = Proc::spawn(name, &mut cmd, &dir.path().join(format!("{name}.log")))?;
            Ok((p, listen))
        };
        let (mut machine, m_addr) = spawn("plain relay (machine side)", target)?;
        let (mut relay, r_addr) = spawn("plain relay (relay)", m_addr)?;
        let (mut technician, local) = spawn("plain relay (technician side)", r_addr)?;
        load::wait_echo(local, Duration::from_secs(10), || {
            machine.check_running()?;
            relay.check_running()?;
            technician.check_running()
        })
        .context("the plain relay chain does not carry bytes")?;
        Ok(Self { local, technician, relay, machine, _dir: dir })
    }

    pub fn roles(&self) -> Vec<Role> {
        let role = |role, p: &Proc| Role { role, label: p.name.clone(), pid: p.pid(), tree: false };
        vec![
            role("relay", &self.relay),
            role("machine", &self.machine),
            role("technician", &self.technician),
        ]
    }
}
