//! A local fernwart demo: server, agent and a simulated PLC on loopback, users with TOTP,
//! the key switch on and a prepared session; prints what to try next and runs until Ctrl-C.
//!
//! `scripts/demo` builds the release binaries and runs this one from `target/release`, next
//! to the product binaries it drives.
//!
//! ```text
//! fernwart-demo [--data DIR] [--port PORT] [--self-test]
//! fernwart-demo totp USER [--data DIR]      # the user's current TOTP code
//! ```

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use fernwart_e2e::{
    net::read_greeting, totp, world::default_password, Echo, Options, World, LOCALHOST,
};

const MARKER: &str = ".fernwart-demo";
const MACHINE: &str = "press-01";
const SESSION: &str = "demo";
const GREETING: &[u8] =
    b"fernwart demo PLC (simulated S7-1500): every line you send comes back\r\n";
const USERS: &[(&str, &str)] =
    &[("tech", "technician"), ("approver", "approver"), ("auditor", "auditor")];

struct Args {
    data: PathBuf,
    port: Option<u16>,
    self_test: bool,
    totp_user: Option<String>,
}

fn main() {
    if let Err(e) = try_main() {
        eprintln!("fernwart-demo: {e:#}");
        std::process::exit(1);
    }
}

fn try_main() -> Result<()> {
    let args = parse_args()?;
    if let Some(user) = &args.totp_user {
        let path = args.data.join("totp").join(format!("{user}.secret"));
        let secret = std::fs::read_to_string(&path)
            .with_context(|| format!("no TOTP secret for {user:?} at {}", path.display()))?;
        println!("{}", totp::current_code(&secret)?);
        return Ok(());
    }
    run_demo(&args)
}

fn parse_args() -> Result<Args> {
    let mut args =
        Args { data: PathBuf::from("demo-data"), port: None, self_test: false, totp_user: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data" => args.data = it.next().map(PathBuf::from).context("--data needs a DIR")?,
            "--port" => {
                let p = it.next().context("--port needs a PORT")?;
                args.port = Some(p.parse().with_context(|| format!("--port {p:?}"))?);
            }
            "--self-test" => args.self_test = true,
            "totp" => args.totp_user = Some(it.next().context("totp needs a USER")?),
            "-h" | "--help" => {
                println!(
                    "usage: fernwart-demo [--data DIR] [--port PORT] [--self-test]\n       \
                     fernwart-demo totp USER [--data DIR]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

/// An empty (or earlier demo's) data directory, marked as the demo's own.
fn fresh_data_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        let ours = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !ours && !empty {
            bail!(
                "{} exists and is not a demo directory; choose another with --data",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "data of scripts/demo; removed by its next run\n")?;
    // Keep the demo's data out of git wherever it lives.
    std::fs::write(dir.join(".gitignore"), "*\n")?;
    dir.canonicalize().context("demo data directory")
}

fn preferred_port(port: Option<u16>) -> Option<u16> {
    if port.is_some() {
        return port;
    }
    let free = TcpListener::bind(SocketAddr::new(LOCALHOST, 8443)).is_ok();
    free.then_some(8443)
}

fn run_demo(args: &Args) -> Result<()> {
    let exe = std::env::current_exe().context("where am I")?;
    let bin_dir = exe.parent().ok_or_else(|| anyhow!("no directory for {}", exe.display()))?;
    let data = fresh_data_dir(&args.data)?;

    println!(
        "fernwart demo: starting server, agent and a simulated PLC (data in {})",
        data.display()
    );
    let plc = Echo::start_on(LOCALHOST, Some(GREETING.to_vec()))?;
    let opts = Options {
        bin_dir: Some(bin_dir.to_owned()),
        root: Some(data.clone()),
        port: preferred_port(args.port),
        ..Options::default()
    };
    let mut w = World::with(opts)?;
    w.init_server().context("fernwart-server init")?;
    w.start_server().context("fernwart-server run")?;
    let admin = w.admin.clone();
    w.login(&admin).context("admin login")?;
    for (name, role) in USERS {
        w.add_user(name, role).with_context(|| format!("user add {name}"))?;
        w.login(name).with_context(|| format!("login {name}"))?;
    }
    w.start_agent(MACHINE, &[("plc", plc.addr)]).context("agent enrolment")?;
    w.switch(MACHINE, true)?;
    w.create_session(SESSION, MACHINE, &["plc"], &["tech"]).context("session create")?;
    write_files(&w, &data, bin_dir)?;

    if args.self_test {
        self_test(&mut w)?;
        println!("self-test passed: connect, approve, PLC greeting and echo through the tunnel");
        return Ok(());
    }
    print_guide(&w, &data, bin_dir, plc.addr);
    wait_for_signal()?;
    println!("\nfernwart demo: stopping server and agent");
    drop(w);
    drop(plc);
    println!("stopped; data kept in {} (removed by the next run)", data.display());
    Ok(())
}

fn write_files(w: &World, data: &Path, bin_dir: &Path) -> Result<()> {
    let totp_dir = data.join("totp");
    std::fs::create_dir_all(&totp_dir)?;
    let mut users =
        format!("# user role password (demo only)\nadmin admin {}\n", default_password("admin"));
    for name in std::iter::once("admin").chain(USERS.iter().map(|(n, _)| *n)) {
        let secret = w.totp_secret(name).ok_or_else(|| anyhow!("{name} has no TOTP secret"))?;
        std::fs::write(totp_dir.join(format!("{name}.secret")), format!("{secret}\n"))?;
    }
    for (name, role) in USERS {
        users.push_str(&format!("{name} {role} {}\n", default_password(name)));
    }
    std::fs::write(data.join("users.txt"), users)?;
    let env = format!(
        "# source me: the demo's server, its CA and the binaries on PATH\n\
         export FW_DEMO={data}\n\
         export FERNWART_SERVER={url}\n\
         export FERNWART_CA_CERT={ca}\n\
         export FERNWART_HOME=$FW_DEMO/home-admin\n\
         export PATH={bin}:$PATH\n",
        data = data.display(),
        url = w.url,
        ca = w.ca.display(),
        bin = bin_dir.display(),
    );
    std::fs::write(data.join("env.sh"), env)?;
    Ok(())
}

fn print_guide(w: &World, data: &Path, bin_dir: &Path, plc: SocketAddr) {
    let d = data.display();
    let b = bin_dir.display();
    println!(
        r#"
fernwart demo is running. Ctrl-C stops it.

  server    {url}   (CA {ca})
  machine   {MACHINE}: agent online, key switch ON, target "plc" -> {plc} (simulated PLC)
  users     admin, tech (technician), approver, auditor: all logged in, TOTP enrolled
            passwords in {d}/users.txt; a current TOTP code: {b}/fernwart-demo totp USER
  session   "{SESSION}": machine {MACHINE}, target plc, technician tech, needs approval
  logs      {d}/*.log

Try next, in another terminal (from any directory):

  # FERNWART_SERVER, FERNWART_CA_CERT, FERNWART_HOME (admin) and the binaries on PATH
  source {d}/env.sh

  # 1. the technician opens the session; it waits for the operator's approval
  FERNWART_HOME=$FW_DEMO/home-tech fernwart connect {SESSION}

  # 2. in a third terminal (source env.sh again), the operator approves
  FERNWART_HOME=$FW_DEMO/home-approver fernwart session approve {SESSION}
  #    or in the web console: {url}/ (trust the CA above, or accept the warning),
  #    user "approver", password from users.txt, code: {b}/fernwart-demo totp approver --data $FW_DEMO

  # 3. connect prints the local forward, e.g. "plc 127.0.0.1:40123"; talk to the PLC,
  #    it greets you and echoes every line
  nc 127.0.0.1 40123
  #    (without nc: exec 3<>/dev/tcp/127.0.0.1/40123; head -1 <&3; echo hi >&3; head -1 <&3)

  # 4. see and control it
  fernwart session show {SESSION} --json
  fernwart machine list --json
  fernwart-agent switch off --data $FW_DEMO/agent-{MACHINE}
  fernwart-agent switch on --data $FW_DEMO/agent-{MACHINE}
  FERNWART_HOME=$FW_DEMO/home-auditor fernwart audit list
  fernwart session end {SESSION}

  # log in again later (each TOTP code works once; if refused, wait for the next one)
  fernwart-demo totp tech --data $FW_DEMO
  echo '{tech_pw}' | FERNWART_HOME=$FW_DEMO/home-tech \
      fernwart login --user tech --password-stdin --otp CODE
"#,
        url = w.url,
        ca = w.ca.display(),
        tech_pw = default_password("tech"),
    );
}

fn self_test(w: &mut World) -> Result<()> {
    let conn = w.connect_approved(SESSION, "tech", "approver")?;
    let fwd = conn.forward("plc")?;
    let s = std::net::TcpStream::connect_timeout(&fwd, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let greeting = read_greeting(&s, GREETING.len(), Duration::from_secs(5))?;
    if greeting != GREETING {
        bail!("the PLC greeted with {:?}", String::from_utf8_lossy(&greeting));
    }
    drop(s);
    roundtrip_after_greeting(fwd)?;
    w.fw(&w.admin, &["session", "end", SESSION])?;
    Ok(())
}

/// Reads the greeting, then checks an echo.
fn roundtrip_after_greeting(fwd: SocketAddr) -> Result<()> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&fwd, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    read_greeting(&s, GREETING.len(), Duration::from_secs(5))?;
    s.write_all(b"hello PLC\r\n")?;
    let back = read_greeting(&s, 11, Duration::from_secs(5))?;
    if back != b"hello PLC\r\n" {
        bail!("the PLC echoed {:?}", String::from_utf8_lossy(&back));
    }
    Ok(())
}

fn wait_for_signal() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        Ok::<(), anyhow::Error>(())
    })
}
