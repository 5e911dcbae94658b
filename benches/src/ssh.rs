//! The OpenSSH path: a private sshd on 127.0.0.1 as the jump host, `ssh -R` from the machine
//! side, `ssh -L` from the technician side, default ciphers.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    load,
    procs::{free_port, Proc, Role},
};

pub struct SshPath {
    /// The technician's local forward: measure against this.
    pub local: SocketAddr,
    pub version: String,
    // Field order = drop order: clients first, then the jump host, then the files.
    ssh_l: Proc,
    ssh_r: Proc,
    sshd: Proc,
    _dir: tempfile::TempDir,
}

fn find(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(extra.iter().copied())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .context("running ssh-keygen")?;
    if !out.status.success() {
        bail!("ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn user() -> Result<String> {
    let out = Command::new("id").arg("-un").output().context("running id -un")?;
    Ok(String::from_utf8(out.stdout).context("id -un output")?.trim().to_owned())
}

impl SshPath {
    /// The processes whose CPU and memory the bench reports.
    pub fn roles(&self) -> Vec<Role> {
        vec![
            Role {
                role: "relay",
                label: "sshd (jump host)".into(),
                pid: self.sshd.pid(),
                tree: true,
            },
            Role { role: "machine", label: "ssh -R".into(), pid: self.ssh_r.pid(), tree: false },
            Role { role: "technician", label: "ssh -L".into(), pid: self.ssh_l.pid(), tree: false },
        ]
    }

    pub fn start(target: SocketAddr) -> Result<Self> {
        let sshd_bin = find("sshd", &["/usr/sbin", "/usr/local/sbin", "/sbin"]).context(
            "sshd not found: install openssh-server (scripts/bench does), or pass --skip-ssh",
        )?;
        let ssh_bin = find("ssh", &[]).context("ssh not found: install openssh-client")?;
        let version = Command::new(&ssh_bin)
            .arg("-V")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default();
        // sshd refuses to start without its privilege separation directory.
        let _ = fs::create_dir_all("/run/sshd");

        let dir = tempfile::Builder::new().prefix("fernwart-bench-ssh").tempdir()?;
        let d = dir.path();
        keygen(&d.join("host_key"))?;
        keygen(&d.join("id"))?;
        fs::copy(d.join("id.pub"), d.join("authorized_keys")).context("authorized_keys")?;
        let port = free_port()?;
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
             AuthorizedKeysFile {ak}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin yes\n\
             AllowTcpForwarding yes\nGatewayPorts no\nLogLevel ERROR\n",
            hk = d.join("host_key").display(),
            pid = d.join("sshd.pid").display(),
            ak = d.join("authorized_keys").display(),
        );
        fs::write(d.join("sshd_config"), config).context("writing sshd_config")?;
        let mut sshd = Proc::spawn(
            "sshd",
            Command::new(&sshd_bin).arg("-D").arg("-e").arg("-f").arg(d.join("sshd_config")),
            &d.join("sshd.log"),
        )?;
        wait_listening(port, &mut sshd)?;

        let user = user()?;
        let ssh = |forward: &str, spec: String| {
            let mut c = Command::new(&ssh_bin);
            c.args(["-N", "-F", "/dev/null", "-i"]).arg(d.join("id")).args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "LogLevel=ERROR",
                "-p",
                &port.to_string(),
                "-l",
                &user,
                forward,
                &spec,
                "127.0.0.1",
            ]);
            c
        };

        // Machine side: reverse forward from the jump host's loopback to the target.
        let jump_port = free_port()?;
        let mut ssh_r = Proc::spawn(
            "ssh -R",
            &mut ssh("-R", format!("{jump_port}:{target}")),
            &d.join("ssh-r.log"),
        )?;
        let jump: SocketAddr = ([127, 0, 0, 1], jump_port).into();
        load::wait_echo(jump, Duration::from_secs(20), || ssh_r.check_running())
            .context("the ssh -R forward does not carry bytes")?;

        // Technician side: local forward to the jump host's port.
        let local_port = free_port()?;
        let mut ssh_l = Proc::spawn(
            "ssh -L",
            &mut ssh("-L", format!("127.0.0.1:{local_port}:127.0.0.1:{jump_port}")),
            &d.join("ssh-l.log"),
        )?;
        let local: SocketAddr = ([127, 0, 0, 1], local_port).into();
        load::wait_echo(local, Duration::from_secs(20), || ssh_l.check_running())
            .context("the ssh -L forward does not carry bytes")?;

        Ok(Self { local, version, ssh_l, ssh_r, sshd, _dir: dir })
    }
}

fn wait_listening(port: u16, proc: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while Instant::now() < deadline {
        proc.check_running()?;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} does not listen on {addr}{}", proc.name, proc.log_tail())
}
