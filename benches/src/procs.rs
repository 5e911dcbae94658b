//! Child processes the bench starts, and what `/proc` says about them.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// A child process that is terminated (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    /// Where its stderr goes, for error messages.
    pub log: Option<PathBuf>,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stderr (and stdout, unless piped by the caller) into `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let out = file.try_clone().context("duplicating log file handle")?;
        cmd.stdin(Stdio::null()).stderr(file).stdout(out);
        Self::spawn_configured(name, cmd, Some(log.to_path_buf()))
    }

    /// Starts `cmd` as configured by the caller (stdio already set).
    pub fn spawn_configured(name: &str, cmd: &mut Command, log: Option<PathBuf>) -> Result<Self> {
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self { name: name.to_owned(), child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Fails with the tail of the log when the process has already exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("waiting for child")? {
            bail!("{} exited ({status}){}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The last lines of the process's log, prefixed for an error message.
    pub fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n    ");
        if tail.is_empty() {
            String::new()
        } else {
            format!(":\n    {tail}")
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn terminate(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

/// Terminates many processes at once: SIGTERM to all, then waits (SIGKILL for stragglers).
pub fn terminate_all(mut procs: Vec<Proc>, grace: Duration) {
    for chunk in procs.chunks(500) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .args(chunk.iter().map(|p| p.pid().to_string()))
            .stderr(Stdio::null())
            .status();
    }
    let deadline = Instant::now() + grace;
    for p in &mut procs {
        while Instant::now() < deadline && !matches!(p.child.try_wait(), Ok(Some(_))) {
            thread::sleep(Duration::from_millis(10));
        }
    }
    // Drop kills whatever is still running.
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Fields of /proc/PID/stat after the command name: (ppid, utime+stime in ticks).
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// CPU seconds (user + system) the process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat(pid).map(|(_, ticks)| ticks as f64 / clock_ticks())
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Peak resident set size (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Current resident set size (VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// `root` and all its living descendants.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parent_of = BTreeMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some((ppid, _)) = stat(pid) {
                    parent_of.insert(pid, ppid);
                }
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent_of.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// A group of processes playing one role (e.g. "relay": the sshd tree, or fernwart-server).
#[derive(Clone)]
pub struct Role {
    pub role: &'static str,
    pub label: String,
    /// The root process; with `tree`, all its descendants count too.
    pub pid: u32,
    pub tree: bool,
}

impl Role {
    fn pids(&self) -> Vec<u32> {
        if self.tree {
            process_tree(self.pid)
        } else {
            vec![self.pid]
        }
    }
}

/// CPU time of each role at one moment, per process, to take differences later.
pub struct CpuSnapshot(Vec<BTreeMap<u32, f64>>);

pub fn cpu_snapshot(roles: &[Role]) -> CpuSnapshot {
    CpuSnapshot(
        roles
            .iter()
            .map(|r| r.pids().into_iter().filter_map(|p| Some((p, cpu_seconds(p)?))).collect())
            .collect(),
    )
}

/// Per role: CPU seconds used between the snapshots (processes born in between count in full).
pub fn cpu_delta(before: &CpuSnapshot, after: &CpuSnapshot) -> Vec<f64> {
    before
        .0
        .iter()
        .zip(&after.0)
        .map(|(b, a)| a.iter().map(|(pid, t)| t - b.get(pid).copied().unwrap_or(0.0)).sum())
        .collect()
}

/// Per role: the sum of the peak RSS (VmHWM) of its processes, in KiB.
pub fn peak_rss(roles: &[Role]) -> Vec<u64> {
    roles.iter().map(|r| r.pids().into_iter().filter_map(peak_rss_kib).sum()).collect()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr().context("local_addr")?.port())
}

/// CPU seconds the whole machine spent busy so far (all cores, from /proc/stat).
pub fn machine_busy_seconds() -> Option<f64> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?;
    Some(busy as f64 / clock_ticks())
}

/// CPU seconds of this process and all its children that have been waited for.
pub fn own_and_children_seconds() -> Option<f64> {
    let text = fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14..=17 (rest[11..=14]).
    let ticks: u64 = f.get(11..15)?.iter().filter_map(|x| x.parse::<u64>().ok()).sum();
    Some(ticks as f64 / clock_ticks())
}

/// VmRSS once it has settled (allocators such as mimalloc give memory back with a delay): the
/// value when four samples over 1.5 s agree within 1 % (at most 30 s of waiting).
pub fn settled_rss_kib(pid: u32) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut window: Vec<u64> = Vec::new();
    loop {
        let now = rss_kib(pid)?;
        window.push(now);
        if window.len() > 4 {
            window.remove(0);
        }
        let (lo, hi) = (window.iter().min()?, window.iter().max()?);
        if (window.len() == 4 && (hi - lo) * 100 <= *hi) || Instant::now() > deadline {
            return Some(now);
        }
        thread::sleep(Duration::from_millis(500));
    }
}
