//! The fernwart path, set up through the command-line contract only (real release binaries):
//! `fernwart-server` (relay), `fernwart-agent` (machine side), `fernwart connect` (technician).

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use totp_rs::{Algorithm, Secret, TOTP};

use crate::{
    load,
    procs::{free_port, Proc, Role},
};

const ADMIN_PASSWORD: &str = "Bench-Admin-Passw0rd!";
const TECH_PASSWORD: &str = "Bench-Tech-Passw0rd!";

/// Where the three fernwart binaries are.
#[derive(Clone)]
pub struct Bins {
    pub server: PathBuf,
    pub agent: PathBuf,
    pub cli: PathBuf,
}

impl Bins {
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let b = Self {
            server: dir.join("fernwart-server"),
            agent: dir.join("fernwart-agent"),
            cli: dir.join("fernwart"),
        };
        for p in [&b.server, &b.agent, &b.cli] {
            if !p.is_file() {
                bail!(
                    "{} is missing: build it with `cargo build --release --bins` (scripts/bench does)",
                    p.display()
                );
            }
        }
        Ok(b)
    }
}

/// The TOTP code (SHA1, 6 digits, 30 s) for the Unix time `at`.
pub fn totp_code(secret_b32: &str, at: u64) -> Result<String> {
    let bytes = Secret::Encoded(secret_b32.to_owned())
        .to_bytes()
        .map_err(|e| anyhow!("TOTP secret is not base32: {e}"))?;
    let totp = TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, bytes, None, String::new());
    Ok(totp.generate(at))
}

fn now() -> Result<u64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH).context("clock before 1970")?.as_secs())
}

/// A running fernwart-server with a logged-in admin: the base for both measurements.
pub struct Server {
    pub bins: Bins,
    pub url: String,
    pub ca: PathBuf,
    pub admin_home: PathBuf,
    pub proc: Proc,
}

impl Server {
    /// `fernwart-server init` + `run` in `dir`, then logs the admin in with MFA.
    pub fn start(bins: &Bins, dir: &Path) -> Result<Self> {
        let data = dir.join("server");
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let listen = format!("127.0.0.1:{port}");
        run_checked(
            Command::new(&bins.server).arg("init").arg("--data").arg(&data).args([
                "--listen",
                &listen,
                "--public-url",
                &url,
                "--admin",
                "admin",
            ]),
            Some(ADMIN_PASSWORD),
        )
        .context("fernwart-server init")?;
        // Every client of the bench (CLI, 1000 agents) comes from 127.0.0.1: lift the cap on
        // unproven connections per source address, which is there against slow clients.
        let mut run = Command::new(&bins.server);
        run.arg("run")
            .arg("--data")
            .arg(&data)
            .env("FERNWART_SERVER_MAX_CONNECTIONS_PER_SOURCE", "6000")
            // The bench measures the path, not the release: its session needs no approver.
            .env("FERNWART_SESSIONS_ALLOW_NO_APPROVAL", "true");
        let mut proc = Proc::spawn("fernwart-server", no_proxy(&mut run), &dir.join("server.log"))?;
        wait_listening(([127, 0, 0, 1], port).into(), &mut proc)?;
        let server = Self {
            bins: bins.clone(),
            url,
            ca: data.join("ca.pem"),
            admin_home: dir.join("admin-home"),
            proc,
        };
        server.mfa_login(&server.admin_home, "admin", ADMIN_PASSWORD).context("admin login")?;
        Ok(server)
    }

    /// `fernwart ARGS` as the user whose login lives in `home`; returns stdout.
    pub fn cli(&self, home: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
        run_checked(self.cli_cmd(home).args(args), stdin)
            .with_context(|| format!("fernwart {}", args.join(" ")))
    }

    fn cli_cmd(&self, home: &Path) -> Command {
        let mut c = Command::new(&self.bins.cli);
        c.env("FERNWART_HOME", home)
            .env("FERNWART_SERVER", &self.url)
            .env("FERNWART_CA_CERT", &self.ca);
        no_proxy(&mut c);
        c
    }

    /// Password login, TOTP enrolment and confirmation, and the full login with `--otp`.
    pub fn mfa_login(&self, home: &Path, user: &str, password: &str) -> Result<()> {
        fs::create_dir_all(home).context("creating FERNWART_HOME")?;
        self.cli(home, &["login", "--user", user, "--password-stdin"], Some(password))?;
        let enrolled: Value =
            serde_json::from_str(&self.cli(home, &["mfa", "enroll", "--json"], None)?)
                .context("mfa enroll --json output")?;
        let secret = enrolled["secret"].as_str().context("mfa enroll: no \"secret\"")?;
        let t = now()?;
        self.cli(home, &["mfa", "confirm", &totp_code(secret, t)?], None)?;
        // Each code is accepted once: log in with the next step's code.
        let next = totp_code(secret, t + 30)?;
        self.cli(
            home,
            &["login", "--user", user, "--password-stdin", "--otp", &next],
            Some(password),
        )?;
        Ok(())
    }

    /// `fernwart machine add NAME --json` -> the enrolment token.
    pub fn add_machine(&self, name: &str) -> Result<String> {
        let out: Value = serde_json::from_str(&self.cli(
            &self.admin_home,
            &["machine", "add", name, "--json"],
            None,
        )?)
        .context("machine add --json output")?;
        Ok(out["token"].as_str().context("machine add: no \"token\"")?.to_owned())
    }

    /// `fernwart-agent enroll` into `adir` (with an agent.toml naming `targets`).
    pub fn enroll_agent(
        &self,
        name: &str,
        adir: &Path,
        targets: &[(&str, SocketAddr)],
    ) -> Result<()> {
        let token = self.add_machine(name)?;
        write_agent_toml(adir, targets)?;
        run_checked(
            no_proxy(
                Command::new(&self.bins.agent)
                    // `--token=T`: a token may start with '-'.
                    .args(["enroll", "--server", &self.url, &format!("--token={token}"), "--data"])
                    .arg(adir)
                    .arg("--ca-cert")
                    .arg(&self.ca),
            ),
            None,
        )
        .with_context(|| format!("fernwart-agent enroll ({name})"))?;
        Ok(())
    }

    pub fn spawn_agent(&self, name: &str, adir: &Path) -> Result<Proc> {
        Proc::spawn(
            &format!("fernwart-agent ({name})"),
            no_proxy(Command::new(&self.bins.agent).arg("run").arg("--data").arg(adir)),
            &adir.join("agent.log"),
        )
    }

    /// `fernwart machine list --json`: names of machines that are online.
    pub fn online(&self) -> Result<Vec<String>> {
        let list: Value = serde_json::from_str(&self.cli(
            &self.admin_home,
            &["machine", "list", "--json"],
            None,
        )?)
        .context("machine list --json output")?;
        Ok(list
            .as_array()
            .context("machine list --json: not an array")?
            .iter()
            .filter(|m| m["online"].as_bool() == Some(true))
            .filter_map(|m| m["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// Waits until `count` machines whose names pass `pick` are online.
    pub fn wait_online(
        &mut self,
        pick: impl Fn(&str) -> bool,
        count: usize,
        within: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            self.proc.check_running()?;
            let n = self.online()?.iter().filter(|m| pick(m)).count();
            if n >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {n} of {count} machines online after {within:?}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The complete fernwart path to one echo target.
pub struct FwPath {
    /// The technician's local forward (from `fernwart connect --json`): measure against this.
    pub local: SocketAddr,
    // Field order = drop order.
    connect: Proc,
    agent: Proc,
    pub server: Server,
    /// The agent's data directory (its recordings are in `recordings/`).
    pub agent_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl FwPath {
    pub fn roles(&self) -> Vec<Role> {
        vec![
            Role {
                role: "relay",
                label: "fernwart-server".into(),
                pid: self.server.proc.pid(),
                tree: false,
            },
            Role {
                role: "machine",
                label: "fernwart-agent".into(),
                pid: self.agent.pid(),
                tree: false,
            },
            Role {
                role: "technician",
                label: "fernwart connect".into(),
                pid: self.connect.pid(),
                tree: false,
            },
        ]
    }

    pub fn start(bins: &Bins, target: SocketAddr) -> Result<Self> {
        Self::start_with(bins, target, false)
    }

    /// [`FwPath::start`]; with `record` the session is prepared with `--record` (the agent
    /// records each connection) and the agent keeps up to 16 GiB of recordings.
    pub fn start_with(bins: &Bins, target: SocketAddr, record: bool) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("fernwart-bench-fw").tempdir()?;
        let d = dir.path();
        let mut server = Server::start(bins, d)?;

        let tech_home = d.join("tech-home");
        server.cli(
            &server.admin_home,
            &["user", "add", "tech1", "--role", "technician", "--password-stdin"],
            Some(TECH_PASSWORD),
        )?;
        server.mfa_login(&tech_home, "tech1", TECH_PASSWORD).context("tech1 login")?;

        let adir = d.join("agent");
        server.enroll_agent("m1", &adir, &[("echo", target)])?;
        if record {
            let mut toml = fs::read_to_string(adir.join("agent.toml"))?;
            toml.push_str("\n[recording]\nmax_total_bytes = 17179869184\n");
            fs::write(adir.join("agent.toml"), toml).context("writing agent.toml")?;
        }
        let mut agent = server.spawn_agent("m1", &adir)?;
        server.wait_online(|m| m == "m1", 1, Duration::from_secs(20)).map_err(|e| {
            match agent.check_running() {
                Err(dead) => dead,
                Ok(()) => e,
            }
        })?;
        run_checked(Command::new(&bins.agent).args(["switch", "on", "--data"]).arg(&adir), None)
            .context("fernwart-agent switch on")?;
        let mut create = vec![
            "session",
            "create",
            "s1",
            "--machine",
            "m1",
            "--target",
            "echo",
            "--user",
            "tech1",
            "--duration",
            "1h",
            "--reason",
            "bench",
            "--no-approval",
        ];
        if record {
            create.push("--record");
        }
        server.cli(&server.admin_home, &create, None)?;

        let mut cmd = server.cli_cmd(&tech_home);
        let log = d.join("connect.log");
        cmd.args(["connect", "s1", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).context("connect log")?);
        let mut connect = Proc::spawn_configured("fernwart connect", &mut cmd, Some(log))?;
        let stdout = connect.child_mut().stdout.take().context("connect stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(first) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so that the process never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line.context("reading fernwart connect output")?,
            Err(_) => {
                connect.check_running()?;
                bail!("fernwart connect printed nothing within 30 s{}", connect.log_tail());
            }
        };
        let out: Value = serde_json::from_str(&line)
            .with_context(|| format!("fernwart connect --json printed {line:?}"))?;
        let local: SocketAddr = out["forwards"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["target"] == "echo"))
            .and_then(|f| f["local"].as_str())
            .with_context(|| format!("no forward for target echo in {line}"))?
            .parse()
            .context("forward address")?;
        load::wait_echo(local, Duration::from_secs(20), || {
            connect.check_running()?;
            agent.check_running()
        })
        .context("the fernwart forward does not carry bytes")?;
        Ok(Self { local, connect, agent, server, agent_dir: adir, _dir: dir })
    }
}

/// Writes the operator's `agent.toml` (local key switch, TCP targets) into `adir`.
pub fn write_agent_toml(adir: &Path, targets: &[(&str, SocketAddr)]) -> Result<()> {
    fs::create_dir_all(adir).context("creating agent dir")?;
    let mut toml = String::from("switch = \"local\"\n");
    for (t, addr) in targets {
        toml.push_str(&format!(
            "\n[[target]]\nname = \"{t}\"\naddress = \"{addr}\"\nprotocol = \"tcp\"\n"
        ));
    }
    fs::write(adir.join("agent.toml"), toml).context("writing agent.toml")
}

/// Clears the proxy variables: the bench only ever talks to loopback directly.
fn no_proxy(c: &mut Command) -> &mut Command {
    for v in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        c.env_remove(v);
    }
    c
}

/// Runs a command to completion (at most 60 s), with `stdin` as its input; fails with its stderr.
pub fn run_checked(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    no_proxy(cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("stdin pipe")?;
        writeln!(pipe, "{input}").context("writing stdin")?;
    }
    let mut stdout = child.stdout.take().context("stdout pipe")?;
    let mut stderr = child.stderr.take().context("stderr pipe")?;
    let out_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for command")? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after 60 s");
        }
        thread::sleep(Duration::from_millis(2));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        let lines: Vec<&str> = err.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        bail!("{status}: {}", lines[lines.len().saturating_sub(3)..].join(" | "));
    }
    Ok(out)
}

fn wait_listening(addr: SocketAddr, proc: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        proc.check_running()?;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("{} does not listen on {addr}{}", proc.name, proc.log_tail())
}
