//! `fernwart-bench`: throughput, latency, connect time, CPU and memory of three paths to the
//! same TCP echo target on loopback: direct, OpenSSH port forwarding through a jump host, and
//! fernwart (real release binaries). See docs/bench.md.

mod echo;
mod floor;
mod fw;
mod idle;
mod load;
mod procs;
mod rec;
mod report;
mod ssh;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::procs::Role;

/// Sizes of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    pub bulk1_mib: u64,
    pub bulk4_mib_per_stream: u64,
    pub rtt_count: usize,
    pub rtt_bytes: usize,
    pub connect_count: usize,
    pub idle_agents: usize,
    /// Every figure is measured in this many rounds, the paths taking turns.
    pub rounds: usize,
}

impl Sizes {
    fn full() -> Self {
        Self {
            bulk1_mib: 128,
            bulk4_mib_per_stream: 32,
            rtt_count: 10_000,
            rtt_bytes: 64,
            connect_count: 1_000,
            idle_agents: 1_000,
            rounds: 3,
        }
    }

    fn quick() -> Self {
        Self {
            bulk1_mib: 32,
            bulk4_mib_per_stream: 8,
            rtt_count: 1_000,
            rtt_bytes: 64,
            connect_count: 100,
            idle_agents: 50,
            rounds: 1,
        }
    }
}

struct Args {
    quick: bool,
    json: bool,
    skip_ssh: bool,
    skip_fernwart: bool,
    skip_idle: bool,
    skip_floor: bool,
    idle_processes: bool,
    check: bool,
    recording: bool,
    agents: Option<usize>,
    rtt_count: Option<usize>,
    /// Only these figures (`bulk1`, `bulk4`, `rtt`, `connect`); all when empty.
    only: Vec<String>,
    bin_dir: Option<PathBuf>,
}

/// The figures `--only` can pick, in the order they are measured.
const FIGURES: [&str; 4] = ["bulk1", "bulk4", "rtt", "connect"];

const USAGE: &str =
    "usage: fernwart-bench [--quick] [--json] [--check] [--skip-ssh] [--skip-fernwart]
                      [--skip-idle] [--skip-floor] [--idle-processes] [--agents N] [--bin-dir DIR]
                      [--only bulk1,bulk4,rtt,connect] [--rtt-count N] [--recording]
  --quick          small sizes for a fast smoke run
  --json           print the results as one JSON object instead of a table
  --check          exit 2 when a target is missed
  --skip-ssh       do not measure the OpenSSH path
  --skip-fernwart  do not measure the fernwart path
  --skip-idle      do not measure server memory per idle agent connection
  --skip-floor     do not measure the floor (three plain TCP relays in place of fernwart's
                   three processes: what the process hops alone cost)
  --agents N       idle agent connections for the memory figure (default 1000, quick 50)
  --idle-processes run one real fernwart-agent process per idle agent instead of in-process
                   agents (fernwart_agent library); heavy, use with a small --agents
  --only LIST      measure only these figures (comma-separated: bulk1, bulk4, rtt,
                   connect); the idle-agent figure follows --skip-idle
  --rtt-count N    round trips for the RTT figure (default 10000, quick 1000)
  --recording      also measure session recording: a second fernwart path whose session
                   is recorded, in turns with the usual one (bulk with pattern and random
                   data, RTT, agent CPU, recording size per MiB)
  --bin-dir DIR    where fernwart-server, fernwart-agent and fernwart are
                   (default: next to this binary, i.e. target/release)";

fn parse_args() -> Result<Args> {
    let mut a = Args {
        quick: false,
        json: false,
        skip_ssh: false,
        skip_fernwart: false,
        skip_idle: false,
        skip_floor: false,
        idle_processes: false,
        check: false,
        recording: false,
        agents: None,
        rtt_count: None,
        only: Vec::new(),
        bin_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--json" => a.json = true,
            "--check" => a.check = true,
            "--skip-ssh" => a.skip_ssh = true,
            "--skip-fernwart" => a.skip_fernwart = true,
            "--skip-idle" => a.skip_idle = true,
            "--skip-floor" => a.skip_floor = true,
            "--idle-processes" => a.idle_processes = true,
            "--recording" => a.recording = true,
            "--agents" => {
                a.agents = Some(it.next().context("--agents needs a number")?.parse()?);
            }
            "--rtt-count" => {
                a.rtt_count = Some(it.next().context("--rtt-count needs a number")?.parse()?);
            }
            "--only" => {
                for f in it.next().context("--only needs a list of figures")?.split(',') {
                    if !FIGURES.contains(&f) {
                        bail!("--only: unknown figure {f:?} (known: {})", FIGURES.join(", "));
                    }
                    a.only.push(f.to_string());
                }
            }
            "--bin-dir" => a.bin_dir = Some(it.next().context("--bin-dir needs a path")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(a)
}

/// Per role (relay, machine side, technician side): CPU seconds over the whole workload and
/// peak RSS.
#[derive(Debug, Clone, Serialize)]
pub struct RoleFigures {
    pub role: &'static str,
    pub label: String,
    pub cpu_s: f64,
    pub peak_rss_kib: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct PathResult {
    pub path: &'static str,
    pub detail: String,
    pub bulk1_mib_s: Option<f64>,
    pub bulk4_mib_s: Option<f64>,
    pub rtt_p50_us: Option<f64>,
    pub rtt_p99_us: Option<f64>,
    pub connect_p50_us: Option<f64>,
    pub connect_p99_us: Option<f64>,
    pub roles: Vec<RoleFigures>,
    pub idle: Option<idle::IdleResult>,
    /// Every run of the bulk figures (the table shows their median).
    pub bulk1_runs: Vec<f64>,
    pub bulk4_runs: Vec<f64>,
    pub error: Option<String>,
}

fn progress(msg: &str) {
    eprintln!("fernwart-bench: {msg}");
}

/// A path under measurement: where to connect, whose CPU to count, what was measured so far.
struct Live {
    result: PathResult,
    addr: SocketAddr,
    roles: Vec<Role>,
    cpu: Vec<f64>,
    bulk1: Vec<f64>,
    bulk4: Vec<f64>,
    rtt: Vec<f64>,
    connect: Vec<f64>,
}

impl Live {
    fn new(result: PathResult, addr: SocketAddr, roles: Vec<Role>) -> Self {
        let cpu = vec![0.0; roles.len()];
        Self {
            result,
            addr,
            roles,
            cpu,
            bulk1: Vec::new(),
            bulk4: Vec::new(),
            rtt: Vec::new(),
            connect: Vec::new(),
        }
    }

    /// Runs one measurement, adding the CPU its roles used meanwhile.
    fn run<T>(&mut self, f: impl FnOnce(SocketAddr) -> Result<T>) -> Result<T> {
        let before = procs::cpu_snapshot(&self.roles);
        let out = f(self.addr);
        let after = procs::cpu_snapshot(&self.roles);
        for (acc, d) in self.cpu.iter_mut().zip(procs::cpu_delta(&before, &after)) {
            *acc += d;
        }
        out
    }

    fn finish(mut self) -> PathResult {
        let r = &mut self.result;
        r.bulk1_mib_s = load::median(&self.bulk1);
        r.bulk4_mib_s = load::median(&self.bulk4);
        r.rtt_p50_us = load::pct(&self.rtt, 50.0);
        r.rtt_p99_us = load::pct(&self.rtt, 99.0);
        r.connect_p50_us = load::pct(&self.connect, 50.0);
        r.connect_p99_us = load::pct(&self.connect, 99.0);
        r.bulk1_runs = self.bulk1;
        r.bulk4_runs = self.bulk4;
        if r.error.is_none() {
            let rss = procs::peak_rss(&self.roles);
            r.roles = self
                .roles
                .iter()
                .zip(self.cpu.iter().zip(rss))
                .map(|(role, (cpu_s, peak_rss_kib))| RoleFigures {
                    role: role.role,
                    label: role.label.clone(),
                    cpu_s: *cpu_s,
                    peak_rss_kib,
                })
                .collect();
        }
        self.result
    }
}

/// Runs every figure `rounds` times, the paths taking turns within each round so that a change
/// in background load hits all of them alike.
fn measure_all(paths: &mut [Live], sizes: &Sizes, only: &[String]) {
    let rounds = sizes.rounds.max(1);
    type Step = dyn Fn(&mut Live, &Sizes, usize) -> Result<()>;
    let steps: [(&str, &Step); 4] = [
        ("bulk, 1 stream", &|p, s, _| {
            let v = p.run(|a| load::bulk(a, 1, s.bulk1_mib << 20))?;
            p.bulk1.push(v);
            Ok(())
        }),
        ("bulk, 4 streams", &|p, s, _| {
            let v = p.run(|a| load::bulk(a, 4, s.bulk4_mib_per_stream << 20))?;
            p.bulk4.push(v);
            Ok(())
        }),
        ("ping-pong", &|p, s, n| {
            let v = p.run(|a| load::rtt(a, s.rtt_count / n, s.rtt_bytes))?;
            p.rtt.extend(v);
            Ok(())
        }),
        ("fresh connections", &|p, s, n| {
            let v = p.run(|a| load::connect_first_byte(a, s.connect_count / n))?;
            p.connect.extend(v);
            Ok(())
        }),
    ];
    for ((what, step), figure) in steps.into_iter().zip(FIGURES) {
        if !only.is_empty() && !only.iter().any(|o| o == figure) {
            continue;
        }
        for round in 1..=rounds {
            for p in paths.iter_mut().filter(|p| p.result.error.is_none()) {
                progress(&format!("{}: {what} (round {round}/{rounds})", p.result.path));
                if let Err(e) = step(p, sizes, rounds) {
                    p.result.error = Some(format!("{what}: {e:#}"));
                }
            }
        }
    }
}

fn bin_dir(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(d) = explicit {
        return d;
    }
    if let Some(d) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        if d.join("fernwart-server").is_file() {
            return d;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release")
}

fn idle_agents(args: &Args, sizes: &Sizes, echo: SocketAddr) -> Result<idle::IdleResult> {
    let bins = fw::Bins::in_dir(&bin_dir(args.bin_dir.clone()))?;
    progress(&format!("fernwart: {} idle agent connections", sizes.idle_agents));
    if args.idle_processes {
        idle::with_processes(&bins, sizes.idle_agents, echo)
    } else {
        idle::with_library(&bins, sizes.idle_agents, echo)
    }
}

/// `--recording`: a second fernwart path with recording on, measured in turns with `off`.
fn recording_phase(
    args: &Args,
    sizes: &Sizes,
    off: &fw::FwPath,
    echo: SocketAddr,
) -> Result<rec::RecordingResult> {
    progress("fernwart (recording on): server init/run, MFA logins, agent enroll/run, connect");
    let dir = bin_dir(args.bin_dir.clone());
    let on = fw::Bins::in_dir(&dir).and_then(|bins| fw::FwPath::start_with(&bins, echo, true))?;
    rec::measure(off, &on, sizes)
}

fn failed(path: &'static str, e: &anyhow::Error) -> PathResult {
    PathResult { path, error: Some(format!("{e:#}")), ..Default::default() }
}

/// A started path: where the client connects, and whose CPU and memory count.
trait Started {
    fn local(&self) -> SocketAddr;
    fn roles(&self) -> Vec<Role>;
}

macro_rules! started {
    ($($t:ty),*) => {$(
        impl Started for $t {
            fn local(&self) -> SocketAddr {
                self.local
            }
            fn roles(&self) -> Vec<Role> {
                <$t>::roles(self)
            }
        }
    )*};
}
started!(ssh::SshPath, floor::FloorPath, fw::FwPath);

/// Starts one path unless it is skipped. A started path joins `live` (to be measured) and is
/// returned, to keep its processes running; a skipped or failed one leaves its result in `done`.
fn start_path<P: Started>(
    path: &'static str,
    skip: bool,
    what: &str,
    start: impl FnOnce() -> Result<(String, P)>,
    live: &mut Vec<Live>,
    done: &mut Vec<PathResult>,
) -> Option<P> {
    if skip {
        done.push(PathResult { path, error: Some("skipped".into()), ..Default::default() });
        return None;
    }
    progress(&format!("{path}: {what}"));
    match start() {
        Ok((detail, p)) => {
            let result = PathResult { path, detail, ..Default::default() };
            live.push(Live::new(result, p.local(), p.roles()));
            Some(p)
        }
        Err(e) => {
            done.push(failed(path, &e));
            None
        }
    }
}

fn main() -> Result<()> {
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some(floor::RELAY_ARG) {
        let (Some(listen), Some(target)) = (raw.get(2), raw.get(3)) else {
            bail!("usage: fernwart-bench {} LISTEN TARGET", floor::RELAY_ARG);
        };
        return floor::run_relay(listen, target);
    }
    let args = parse_args()?;
    let mut sizes = if args.quick { Sizes::quick() } else { Sizes::full() };
    if let Some(n) = args.agents {
        sizes.idle_agents = n.max(1);
    }
    if let Some(n) = args.rtt_count {
        sizes.rtt_count = n.max(sizes.rounds.max(1) * 10);
    }
    let echo = echo::start()?;
    let started = Instant::now();
    let busy0 = procs::machine_busy_seconds();
    let own0 = procs::own_and_children_seconds();

    let direct = PathResult {
        path: "direct",
        detail: format!("echo server at {echo}"),
        ..Default::default()
    };
    let mut live = vec![Live::new(direct, echo, Vec::new())];
    let mut done = Vec::new();
    let ssh_path = start_path(
        "openssh",
        args.skip_ssh,
        "starting sshd, ssh -R and ssh -L",
        || ssh::SshPath::start(echo).map(|p| (p.version.clone(), p)),
        &mut live,
        &mut done,
    );
    let floor_path = start_path(
        "floor",
        args.skip_floor,
        "three plain TCP relays",
        || {
            let detail = "three plain TCP relay processes (tokio copy_bidirectional, no TLS, no \
                          multiplexing) in place of connect, server and agent";
            floor::FloorPath::start(echo).map(|p| (detail.to_owned(), p))
        },
        &mut live,
        &mut done,
    );
    let fw_path = start_path(
        "fernwart",
        args.skip_fernwart,
        "server init/run, MFA logins, agent enroll/run, connect",
        || {
            let dir = bin_dir(args.bin_dir.clone());
            let p = fw::Bins::in_dir(&dir).and_then(|bins| fw::FwPath::start(&bins, echo))?;
            Ok((format!("release binaries in {}", dir.display()), p))
        },
        &mut live,
        &mut done,
    );

    measure_all(&mut live, &sizes, &args.only);
    let mut results: Vec<PathResult> = live.into_iter().map(Live::finish).collect();
    // After the main figures are taken (peak RSS included): its traffic is extra.
    let recording = match (&fw_path, args.recording) {
        (Some(off), true) => Some(recording_phase(&args, &sizes, off, echo)),
        _ => None,
    };
    drop(ssh_path);
    drop(fw_path);
    drop(floor_path);
    results.extend(done);
    let take = |name: &str, results: &mut Vec<PathResult>| {
        let i = results.iter().position(|r| r.path == name);
        i.map(|i| results.remove(i)).unwrap_or_default()
    };
    let direct = take("direct", &mut results);
    let ssh = take("openssh", &mut results);
    let floor = take("floor", &mut results);
    let mut fernwart = take("fernwart", &mut results);
    if !args.skip_fernwart && !args.skip_idle && fernwart.error.is_none() {
        match idle_agents(&args, &sizes, echo) {
            Ok(i) => fernwart.idle = Some(i),
            Err(e) => fernwart.error = Some(format!("idle agents: {e:#}")),
        }
    }

    let results = [direct, ssh, floor, fernwart];
    let elapsed = started.elapsed().as_secs_f64();
    // CPU that other processes on this machine used meanwhile: a noise indicator.
    let background =
        match (busy0, procs::machine_busy_seconds(), own0, procs::own_and_children_seconds()) {
            (Some(b0), Some(b1), Some(o0), Some(o1)) => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                Some(((b1 - b0) - (o1 - o0)).max(0.0) / (elapsed * cores) * 100.0)
            }
            _ => None,
        };
    let mut rep = report::Report::new(&sizes, &results, elapsed, background);
    let recording_failed = matches!(recording, Some(Err(_)));
    match recording {
        Some(Ok(r)) => rep.recording = Some(r),
        Some(Err(e)) => rep.recording_error = Some(format!("{e:#}")),
        None => {}
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print!("{}", rep.table());
        if let Some(r) = &rep.recording {
            print!("{}", r.table());
        }
        if let Some(e) = &rep.recording_error {
            println!("\nsession recording: not measured: {e}");
        }
    }
    if recording_failed {
        std::process::exit(1);
    }
    let failed_path = results.iter().any(|r| r.error.as_deref().is_some_and(|e| e != "skipped"));
    if failed_path {
        std::process::exit(1);
    }
    if args.check && rep.any_target_failed() {
        std::process::exit(2);
    }
    Ok(())
}
