//! A `World`: one server, its agents and users, in a directory of its own, driven only
//! through the command line of DESIGN.md §6 (like `shared/acceptance/path.py`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::{
    net::{free_port, poll, wait_port, LOCALHOST},
    process::{clip, run, Output, Proc},
    totp,
};

/// How long a one-shot CLI command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long processes get to come up (listen, connect, report online).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables of the test process that must not leak into the products.
const SCRUBBED_ENV: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "FERNWART_HOME",
    "FERNWART_SERVER",
    "FERNWART_CA_CERT",
    "FERNWART_ENROLL_TOKEN",
];

/// The three product binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    pub server: PathBuf,
    pub agent: PathBuf,
    pub cli: PathBuf,
}

impl Bins {
    /// The binaries of this workspace: `target/debug` by default; env `FERNWART_BIN_DIR`
    /// names a profile (`release`, `debug`) or a directory. `CARGO_TARGET_DIR` is honoured.
    pub fn locate() -> Result<Self> {
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        };
        let dir = match std::env::var("FERNWART_BIN_DIR") {
            Ok(v) if v == "release" || v == "debug" => target.join(v),
            Ok(v) if !v.trim().is_empty() => PathBuf::from(v),
            _ => target.join("debug"),
        };
        Self::in_dir(&dir)
    }

    /// The binaries in `dir`; a clear error when one is missing.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        let bins = Self {
            server: dir.join("fernwart-server"),
            agent: dir.join("fernwart-agent"),
            cli: dir.join("fernwart"),
        };
        for b in [&bins.server, &bins.agent, &bins.cli] {
            if !b.is_file() {
                bail!(
                    "binary {} is missing: build the binaries first with \
                     `cargo build --workspace --bins` (or set FERNWART_BIN_DIR)",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

/// How a process is told to use an HTTP CONNECT proxy.
#[derive(Debug, Clone)]
pub enum Proxy {
    /// `HTTPS_PROXY=URL` in its environment.
    Env(String),
    /// `--proxy URL` on its command line.
    Flag(String),
}

/// Choices made before a world starts.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Server on `[::1]` with public URL `https://[::1]:PORT`.
    pub ipv6: bool,
    /// Proxy for `fernwart-agent`.
    pub agent_proxy: Option<Proxy>,
    /// Proxy for `fernwart`.
    pub cli_proxy: Option<Proxy>,
    /// Where the binaries are; default [`Bins::locate`].
    pub bin_dir: Option<PathBuf>,
    /// A directory to use (and keep) instead of a fresh temp dir.
    pub root: Option<PathBuf>,
    /// Extra environment for `fernwart-server run` (`FERNWART_<SECTION>_<KEY>` settings).
    pub server_env: Vec<(String, String)>,
    /// Server port; default a free one.
    pub port: Option<u16>,
    /// The host name in the public URL (`https://HOST:PORT`, e.g. `localhost`, which WebAuthn
    /// takes as a relying party and an IP address is not); default the listening address.
    pub host: Option<String>,
}

struct User {
    password: String,
    secret: Option<String>,
    last_step: Option<u64>,
}

/// One enrolled (or enrolling) agent.
pub struct Agent {
    pub dir: PathBuf,
    proc: Option<Proc>,
}

/// One server with its agents, users and processes. Dropping it stops every process it
/// started and removes its directory (unless env `FW_KEEP` is set or `Options::root` given).
pub struct World {
    pub root: PathBuf,
    pub bins: Bins,
    pub opts: Options,
    pub listen: SocketAddr,
    pub url: String,
    pub srv_dir: PathBuf,
    pub ca: PathBuf,
    pub admin: String,
    server: Option<Proc>,
    agents: BTreeMap<String, Agent>,
    users: BTreeMap<String, User>,
    seq: usize,
    // Last, so that it is removed after the processes are gone.
    _tmp: Option<tempfile::TempDir>,
}

impl World {
    /// A world with default options: nothing started yet.
    pub fn new() -> Result<Self> {
        Self::with(Options::default())
    }

    pub fn with(opts: Options) -> Result<Self> {
        let bins = match &opts.bin_dir {
            Some(dir) => Bins::in_dir(dir)?,
            None => Bins::locate()?,
        };
        let (root, tmp) = match &opts.root {
            Some(root) => {
                std::fs::create_dir_all(root)
                    .with_context(|| format!("cannot create {}", root.display()))?;
                (root.canonicalize()?, None)
            }
            None => {
                let mut tmp = tempfile::Builder::new()
                    .prefix("fw-e2e-")
                    .tempdir()
                    .context("cannot create a temp dir")?;
                if std::env::var_os("FW_KEEP").is_some() {
                    tmp.disable_cleanup(true);
                    eprintln!("FW_KEEP: keeping {}", tmp.path().display());
                }
                (tmp.path().to_owned(), Some(tmp))
            }
        };
        let ip = if opts.ipv6 { IpAddr::V6(Ipv6Addr::LOCALHOST) } else { LOCALHOST };
        let port = match opts.port {
            Some(p) => p,
            None => free_port(ip)?,
        };
        let listen = SocketAddr::new(ip, port);
        let url = match &opts.host {
            Some(host) => format!("https://{host}:{port}"),
            None => format!("https://{listen}"),
        };
        let srv_dir = root.join("srv");
        Ok(Self {
            ca: srv_dir.join("ca.pem"),
            srv_dir,
            root,
            bins,
            opts,
            listen,
            url,
            admin: "admin".into(),
            server: None,
            agents: BTreeMap::new(),
            users: BTreeMap::new(),
            seq: 0,
            _tmp: tmp,
        })
    }

    /// Server initialised and running, admin logged in with a second factor.
    pub fn boot() -> Result<Self> {
        Self::boot_with(Options::default())
    }

    pub fn boot_with(opts: Options) -> Result<Self> {
        let mut w = Self::with(opts)?;
        w.init_server()?;
        w.start_server()?;
        let admin = w.admin.clone();
        w.login(&admin)?;
        Ok(w)
    }

    /// [`World::boot`] plus the usual cast: technicians `tech1`, `tech2`, approver `op1`,
    /// auditor `aud1`, all logged in with TOTP.
    pub fn standard() -> Result<Self> {
        Self::standard_with(Options::default())
    }

    pub fn standard_with(opts: Options) -> Result<Self> {
        let mut w = Self::boot_with(opts)?;
        for (name, role) in [
            ("tech1", "technician"),
            ("tech2", "technician"),
            ("op1", "approver"),
            ("aud1", "auditor"),
        ] {
            w.add_user(name, role)?;
            w.login(name)?;
        }
        Ok(w)
    }

    // ---------------------------------------------------------------- files and logs

    /// A fresh log file path under the world's directory.
    pub fn log_path(&mut self, what: &str) -> PathBuf {
        self.seq += 1;
        self.root.join(format!("{:02}-{what}.log", self.seq))
    }

    fn home(&self, who: &str) -> PathBuf {
        self.root.join(format!("home-{who}"))
    }

    /// The password a user of this world has (policy-conformant).
    pub fn password(&self, who: &str) -> String {
        self.users.get(who).map_or_else(|| default_password(who), |u| u.password.clone())
    }

    /// The user's base32 TOTP secret, once enrolled.
    pub fn totp_secret(&self, who: &str) -> Option<String> {
        self.users.get(who).and_then(|u| u.secret.clone())
    }

    // ---------------------------------------------------------------- commands

    fn scrubbed(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        for name in SCRUBBED_ENV {
            cmd.env_remove(name);
        }
        cmd.env_remove("RUST_LOG");
        cmd.current_dir(&self.root);
        cmd
    }

    /// `fernwart` as `who`: its own FERNWART_HOME, the world's server and CA, the proxy.
    pub fn cli(&self, who: &str) -> Command {
        let mut cmd = self.scrubbed(&self.bins.cli);
        cmd.env("FERNWART_HOME", self.home(who))
            .env("FERNWART_SERVER", &self.url)
            .env("FERNWART_CA_CERT", &self.ca);
        match &self.opts.cli_proxy {
            Some(Proxy::Env(url)) => {
                cmd.env("HTTPS_PROXY", url);
            }
            Some(Proxy::Flag(url)) => {
                cmd.arg("--proxy").arg(url);
            }
            None => {}
        }
        cmd
    }

    /// `fernwart-agent SUBCOMMAND ...` with the agent proxy applied.
    pub fn agent_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.scrubbed(&self.bins.agent);
        cmd.args(args);
        let uses_network = matches!(args.first(), Some(&"enroll") | Some(&"run"));
        match &self.opts.agent_proxy {
            Some(Proxy::Env(url)) => {
                cmd.env("HTTPS_PROXY", url);
            }
            Some(Proxy::Flag(url)) if uses_network => {
                cmd.arg("--proxy").arg(url);
            }
            _ => {}
        }
        cmd
    }

    /// `fernwart-server SUBCOMMAND ...`.
    pub fn server_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.scrubbed(&self.bins.server);
        cmd.args(args);
        cmd
    }

    /// Runs `fernwart ARGS` as `who`, whatever the outcome.
    pub fn fw_raw(&self, who: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = self.cli(who);
        cmd.args(args);
        run(cmd, stdin, COMMAND_TIMEOUT)
    }

    /// Runs `fernwart ARGS` as `who`; fails unless it exits 0.
    pub fn fw(&self, who: &str, args: &[&str]) -> Result<Output> {
        self.fw_raw(who, args, None)?.check()
    }

    /// Runs `fernwart ARGS` as `who` with `stdin`; fails unless it exits 0.
    pub fn fw_in(&self, who: &str, args: &[&str], stdin: &str) -> Result<Output> {
        self.fw_raw(who, args, Some(stdin))?.check()
    }

    /// Runs `fernwart ARGS --json` as `who` and parses its output.
    pub fn fw_json(&self, who: &str, args: &[&str]) -> Result<Value> {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        self.fw(who, &all)?.json()
    }

    /// Runs `fernwart-agent ARGS`, whatever the outcome.
    pub fn agent_raw(&self, args: &[&str]) -> Result<Output> {
        run(self.agent_cmd(args), None, COMMAND_TIMEOUT)
    }

    // ---------------------------------------------------------------- server

    /// `fernwart-server init` with the admin password on stdin; checks that `ca.pem` exists.
    pub fn init_server(&mut self) -> Result<()> {
        let listen = self.listen.to_string();
        let args = [
            "init",
            "--data",
            path_str(&self.srv_dir)?,
            "--listen",
            &listen,
            "--public-url",
            &self.url,
            "--admin",
            &self.admin,
        ];
        let stdin = format!("{}\n", self.password(&self.admin));
        run(self.server_cmd(&args), Some(&stdin), COMMAND_TIMEOUT)?.check()?;
        if !self.ca.is_file() {
            bail!("`fernwart-server init` wrote no {}", self.ca.display());
        }
        Ok(())
    }

    /// `fernwart-server run` in the background; waits until its port accepts connections.
    pub fn start_server(&mut self) -> Result<()> {
        if self.server.is_some() {
            bail!("the server already runs");
        }
        let mut cmd = self.server_cmd(&["run", "--data", path_str(&self.srv_dir)?]);
        for (k, v) in &self.opts.server_env {
            cmd.env(k, v);
        }
        let log = self.log_path("server");
        let mut proc = Proc::spawn(cmd, "fernwart-server", &log, false)?;
        let listen = self.listen;
        poll("the server to listen", START_TIMEOUT, Duration::from_millis(50), || {
            if !proc.running() {
                bail!("fernwart-server run exited early: {}", proc.log_tail());
            }
            Ok(wait_port(listen, Duration::from_millis(10)).ok())
        })?;
        self.server = Some(proc);
        Ok(())
    }

    /// Stops the server (SIGTERM) and returns its exit status.
    pub fn stop_server(&mut self) -> Result<ExitStatus> {
        let mut proc = self.server.take().ok_or_else(|| anyhow!("no server runs"))?;
        proc.stop().ok_or_else(|| anyhow!("the server did not stop"))
    }

    /// Kills the server at once (SIGKILL, as a power cut would) and waits for it to go.
    pub fn kill_server(&mut self) -> Result<()> {
        let mut proc = self.server.take().ok_or_else(|| anyhow!("no server runs"))?;
        proc.signal("KILL");
        proc.wait_exit(Duration::from_secs(10)).ok_or_else(|| anyhow!("the server did not die"))?;
        Ok(())
    }

    /// The server process, while it runs.
    pub fn server(&mut self) -> Option<&mut Proc> {
        self.server.as_mut()
    }

    // ---------------------------------------------------------------- users

    /// Password login, TOTP enrolment on first use, then a login with a fresh code.
    pub fn login(&mut self, who: &str) -> Result<()> {
        let pw = format!("{}\n", self.password(who));
        self.users.entry(who.to_owned()).or_insert_with(|| User {
            password: default_password(who),
            secret: None,
            last_step: None,
        });
        if self.totp_secret(who).is_none() {
            self.fw_in(who, &["login", "--user", who, "--password-stdin"], &pw)
                .with_context(|| format!("first login of {who}"))?;
            let js = self.fw_json(who, &["mfa", "enroll"])?;
            let secret = js
                .get("secret")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("`mfa enroll --json` gave no secret: {js}"))?
                .to_owned();
            if !js.get("uri").and_then(Value::as_str).is_some_and(|u| u.starts_with("otpauth://")) {
                bail!("`mfa enroll --json` gave no otpauth:// uri: {js}");
            }
            if let Some(u) = self.users.get_mut(who) {
                u.secret = Some(secret);
            }
            let code = self.next_code(who)?;
            self.fw(who, &["mfa", "confirm", &code])
                .with_context(|| format!("mfa confirm of {who}"))?;
        }
        let mut last = None;
        for _ in 0..3 {
            let code = self.next_code(who)?;
            let out = self.fw_raw(
                who,
                &["login", "--user", who, "--password-stdin", "--otp", &code],
                Some(&pw),
            )?;
            if out.success() {
                return Ok(());
            }
            last = Some(out);
        }
        match last {
            Some(out) => out.check().map(|_| ()).with_context(|| format!("TOTP login of {who}")),
            None => bail!("TOTP login of {who} was not attempted"),
        }
    }

    /// A TOTP code for `who` that the server has not seen yet.
    pub fn next_code(&mut self, who: &str) -> Result<String> {
        let user = self.users.get_mut(who).ok_or_else(|| anyhow!("unknown user {who}"))?;
        let secret = user.secret.clone().ok_or_else(|| anyhow!("{who} has no TOTP secret"))?;
        let step = totp::next_usable_step(user.last_step);
        user.last_step = Some(step);
        totp::code(&secret, step)
    }

    /// `fernwart user add NAME --role ROLE --password-stdin` as the admin.
    pub fn add_user(&mut self, name: &str, role: &str) -> Result<()> {
        self.add_user_in(name, role, None)
    }

    /// `user add NAME --role ROLE [--org ORG]` as the admin.
    pub fn add_user_in(&mut self, name: &str, role: &str, org: Option<&str>) -> Result<()> {
        let pw = default_password(name);
        let admin = self.admin.clone();
        let mut args = vec!["user", "add", name, "--role", role, "--password-stdin"];
        if let Some(org) = org {
            args.extend(["--org", org]);
        }
        self.fw_in(&admin, &args, &format!("{pw}\n"))?;
        self.users.insert(name.to_owned(), User { password: pw, secret: None, last_step: None });
        Ok(())
    }

    // ---------------------------------------------------------------- machines

    /// `fernwart machine add NAME --json` as the admin; returns the enrolment token.
    pub fn add_machine(&self, name: &str) -> Result<String> {
        self.add_machine_in(name, None)
    }

    /// `fernwart machine add NAME [--org ORG] --json`; returns the enrolment token.
    pub fn add_machine_in(&self, name: &str, org: Option<&str>) -> Result<String> {
        let mut args = vec!["machine", "add", name];
        if let Some(org) = org {
            args.extend(["--org", org]);
        }
        let js = self.fw_json(&self.admin, &args)?;
        js.get("token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("`machine add --json` gave no token: {js}"))
    }

    /// The agent directory of machine `name`.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.root.join(format!("agent-{name}"))
    }

    /// Writes `DIR/agent.toml` with a local key switch and `targets` (name, address).
    pub fn write_agent_toml(&self, name: &str, targets: &[(&str, SocketAddr)]) -> Result<PathBuf> {
        let dir = self.agent_dir(name);
        std::fs::create_dir_all(&dir)?;
        let mut text = String::from("switch = \"local\"\n");
        for (t, addr) in targets {
            text.push_str(&format!(
                "\n[[target]]\nname = \"{t}\"\naddress = \"{addr}\"\nprotocol = \"tcp\"\n"
            ));
        }
        let path = dir.join("agent.toml");
        std::fs::write(&path, text)?;
        Ok(dir)
    }

    /// `fernwart-agent enroll` for machine `name` into its directory, trusting `ca`.
    pub fn enroll_raw(&self, dir: &Path, token: &str, ca: &Path) -> Result<Output> {
        self.agent_raw(&[
            "enroll",
            "--server",
            &self.url,
            "--token",
            token,
            "--data",
            path_str(dir)?,
            "--ca-cert",
            path_str(ca)?,
        ])
    }

    /// `fernwart-agent run` for machine `name` in the background.
    pub fn run_agent(&mut self, name: &str) -> Result<()> {
        let dir = self.agent_dir(name);
        let cmd = self.agent_cmd(&["run", "--data", path_str(&dir)?]);
        let log = self.log_path(&format!("agent-{name}"));
        let proc = Proc::spawn(cmd, &format!("fernwart-agent {name}"), &log, false)?;
        let agent = self.agents.entry(name.to_owned()).or_insert(Agent { dir, proc: None });
        agent.proc = Some(proc);
        Ok(())
    }

    /// Stops the agent of machine `name`.
    pub fn stop_agent(&mut self, name: &str) -> Option<ExitStatus> {
        self.agents.get_mut(name).and_then(|a| a.proc.take()).and_then(|mut p| p.stop())
    }

    /// The running agent process of machine `name`.
    pub fn agent(&mut self, name: &str) -> Option<&mut Proc> {
        self.agents.get_mut(name).and_then(|a| a.proc.as_mut())
    }

    /// Machine added, agent.toml written, enrolled, running and reported online.
    pub fn start_agent(&mut self, name: &str, targets: &[(&str, SocketAddr)]) -> Result<()> {
        self.start_agent_in(name, None, targets)
    }

    /// [`World::start_agent`] for a machine of organization `org`.
    pub fn start_agent_in(
        &mut self,
        name: &str,
        org: Option<&str>,
        targets: &[(&str, SocketAddr)],
    ) -> Result<()> {
        let token = self.add_machine_in(name, org)?;
        let dir = self.write_agent_toml(name, targets)?;
        self.enroll_raw(&dir, &token, &self.ca.clone())?.check()?;
        self.run_agent(name)?;
        self.wait_machine(name, true, START_TIMEOUT)?;
        Ok(())
    }

    /// `fernwart-agent switch on|off --data DIR`.
    pub fn switch(&self, name: &str, on: bool) -> Result<()> {
        let dir = self.agent_dir(name);
        self.agent_raw(&["switch", if on { "on" } else { "off" }, "--data", path_str(&dir)?])?
            .check()?;
        Ok(())
    }

    /// `fernwart machine list --json` rows.
    pub fn machines(&self) -> Result<Vec<Value>> {
        let out = self.fw(&self.admin, &["machine", "list", "--json"])?;
        Ok(out.json_list())
    }

    pub fn machine(&self, name: &str) -> Result<Option<Value>> {
        Ok(self
            .machines()?
            .into_iter()
            .find(|m| m.get("name").and_then(Value::as_str) == Some(name)))
    }

    /// Waits until `machine list` shows `name` with `online`.
    pub fn wait_machine(&mut self, name: &str, online: bool, timeout: Duration) -> Result<Value> {
        let what = format!("machine {name} online={online}");
        let res = poll(&what, timeout, Duration::from_millis(250), || {
            let m = self.machine(name)?;
            Ok(m.filter(|m| m.get("online").and_then(Value::as_bool) == Some(online)))
        });
        res.with_context(|| {
            let log = self.agents.get(name).and_then(|a| a.proc.as_ref()).map(Proc::log_tail);
            format!("agent log: {}", log.unwrap_or_default())
        })
    }

    /// Waits until `machine list` reports the key switch of `name` as `on`/`off`.
    pub fn wait_switch(&mut self, name: &str, on: bool, timeout: Duration) -> Result<()> {
        let want = if on { "on" } else { "off" };
        poll(&format!("machine {name} switch={want}"), timeout, Duration::from_millis(100), || {
            let m = self.machine(name)?;
            Ok(m.filter(|m| m.get("switch").and_then(Value::as_str) == Some(want)).map(|_| ()))
        })
    }

    // ---------------------------------------------------------------- sessions

    /// `fernwart session create` as the admin, one hour, needing approval.
    pub fn create_session(
        &self,
        name: &str,
        machine: &str,
        targets: &[&str],
        users: &[&str],
    ) -> Result<()> {
        let out = self.create_session_raw(name, machine, targets, users, &[])?;
        out.check().map(|_| ())
    }

    pub fn create_session_raw(
        &self,
        name: &str,
        machine: &str,
        targets: &[&str],
        users: &[&str],
        extra: &[&str],
    ) -> Result<Output> {
        let mut args = vec!["session", "create", name, "--machine", machine];
        for t in targets {
            args.extend(["--target", t]);
        }
        for u in users {
            args.extend(["--user", u]);
        }
        args.extend(["--duration", "1h", "--reason", "TICKET-4711 spindle drive fault"]);
        args.extend(extra);
        self.fw_raw(&self.admin, &args, None)
    }

    /// `fernwart session show NAME --json`.
    pub fn session(&self, name: &str) -> Result<Value> {
        self.fw_json(&self.admin, &["session", "show", name])
    }

    pub fn session_state(&self, name: &str) -> Result<String> {
        let js = self.session(name)?;
        js.get("state")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("`session show --json` has no state: {js}"))
    }

    pub fn wait_session_state(&self, name: &str, state: &str, timeout: Duration) -> Result<()> {
        poll(&format!("session {name} state {state}"), timeout, Duration::from_millis(100), || {
            Ok((self.session_state(name)? == state).then_some(()))
        })
    }

    /// Starts `fernwart connect NAME --json` as `who` in the background.
    pub fn spawn_connect(&mut self, session: &str, who: &str) -> Result<Connect> {
        let mut cmd = self.cli(who);
        cmd.args(["connect", session, "--json"]);
        let log = self.log_path(&format!("connect-{who}-{session}"));
        let proc = Proc::spawn(cmd, &format!("fernwart connect {session} ({who})"), &log, true)?;
        Ok(Connect { proc, forwards: BTreeMap::new() })
    }

    /// Connects as `who`, waits for the session to be requested, approves it as `approver`,
    /// and waits for the forwards.
    pub fn connect_approved(
        &mut self,
        session: &str,
        who: &str,
        approver: &str,
    ) -> Result<Connect> {
        let mut conn = self.spawn_connect(session, who)?;
        let res =
            poll("the session to be requested", START_TIMEOUT, Duration::from_millis(100), || {
                if !conn.proc.running() {
                    bail!("connect exited while waiting for approval: {}", conn.proc.log_tail());
                }
                Ok((self.session_state(session)? == "requested").then_some(()))
            });
        res?;
        self.fw(approver, &["session", "approve", session])?;
        conn.wait_forwards(START_TIMEOUT)?;
        Ok(conn)
    }

    /// `fernwart audit list --json` as `who`: one object per event.
    pub fn audit(&self, who: &str) -> Result<Vec<Value>> {
        Ok(self.fw(who, &["audit", "list", "--json"])?.json_list())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for agent in self.agents.values_mut() {
            if let Some(mut p) = agent.proc.take() {
                p.stop_within(Duration::from_secs(5));
            }
        }
        if let Some(mut p) = self.server.take() {
            p.stop_within(Duration::from_secs(5));
        }
    }
}

/// A running `fernwart connect --json`.
pub struct Connect {
    pub proc: Proc,
    pub forwards: BTreeMap<String, SocketAddr>,
}

impl Connect {
    /// Reads stdout until the one JSON line with the forwards arrives.
    pub fn wait_forwards(&mut self, timeout: Duration) -> Result<BTreeMap<String, SocketAddr>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = match self.proc.next_line(left) {
                Ok(Some(line)) => line,
                Ok(None) => {
                    let status = self.proc.wait_exit(Duration::from_secs(2));
                    bail!(
                        "{} printed no forwards and ended (exit {:?}): {}",
                        self.proc.name,
                        status.and_then(|s| s.code()),
                        self.proc.log_tail()
                    );
                }
                Err(e) => return Err(e),
            };
            let Ok(js) = serde_json::from_str::<Value>(line.trim()) else { continue };
            let Some(list) = js.get("forwards").and_then(Value::as_array) else { continue };
            let mut fwd = BTreeMap::new();
            for f in list {
                let target = f.get("target").and_then(Value::as_str);
                let local = f.get("local").and_then(Value::as_str);
                let (Some(target), Some(local)) = (target, local) else {
                    bail!("forward without target/local: {f}");
                };
                let addr: SocketAddr =
                    local.parse().with_context(|| format!("forward address {local:?}"))?;
                fwd.insert(target.to_owned(), addr);
            }
            self.forwards = fwd.clone();
            return Ok(fwd);
        }
    }

    /// The local address of the forward to `target`.
    pub fn forward(&self, target: &str) -> Result<SocketAddr> {
        self.forwards
            .get(target)
            .copied()
            .ok_or_else(|| anyhow!("no forward for {target:?}; forwards: {:?}", self.forwards))
    }

    /// Waits for connect to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout)
    }

    /// The end of its stderr.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }
}

/// A password that meets the default policy (12+ characters, all four classes).
pub fn default_password(who: &str) -> String {
    format!("Pw-{who}-Secr3t#2026")
}

pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
}

/// Whether some audit event's action mentions every word in `words` (case-insensitive,
/// `.`/`_`/`-` read as spaces), e.g. `["session", "create"]` matches `session.create`.
pub fn audit_has(events: &[Value], words: &[&str]) -> bool {
    events.iter().any(|e| {
        let action = e.get("action").and_then(Value::as_str).unwrap_or_default();
        let norm = action.to_ascii_lowercase().replace(['.', '_', '-', '/', ':'], " ");
        words.iter().all(|w| norm.contains(w))
    })
}

/// The actions of `events`, for messages.
pub fn audit_actions(events: &[Value]) -> String {
    let names: Vec<&str> =
        events.iter().filter_map(|e| e.get("action").and_then(Value::as_str)).collect();
    clip(&names.join(", "))
}
