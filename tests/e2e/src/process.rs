//! Child processes: one-shot commands with a deadline, and long-running ones that are
//! stopped (SIGTERM, then SIGKILL) when their handle is dropped.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The output as JSON: one value, or several (JSON lines) gathered into an array.
    pub fn json(&self) -> Result<serde_json::Value> {
        let values = json_values(&self.stdout);
        match values.len() {
            0 => bail!("`{}` printed no JSON on stdout: {:?}", self.command, clip(&self.stdout)),
            1 => Ok(values.into_iter().next().unwrap_or_default()),
            _ => Ok(serde_json::Value::Array(values)),
        }
    }

    /// Every JSON value on stdout; a single top-level array is flattened.
    pub fn json_list(&self) -> Vec<serde_json::Value> {
        let values = json_values(&self.stdout);
        if values.len() == 1 {
            if let Some(serde_json::Value::Array(items)) = values.first() {
                return items.clone();
            }
        }
        values
    }

    /// The one-line reason of a failed command (DESIGN.md §6: non-zero exit, one line).
    pub fn reason(&self) -> Result<String> {
        if self.success() {
            bail!(
                "`{}` succeeded, a failure was expected; stdout: {}",
                self.command,
                clip(&self.stdout)
            );
        }
        let lines: Vec<&str> =
            self.stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        match lines.as_slice() {
            [one] => Ok((*one).to_owned()),
            [] => {
                bail!("`{}` failed (exit {:?}) without a reason on stderr", self.command, self.code)
            }
            many => bail!(
                "`{}` failed (exit {:?}) but its reason is not one line: {:?}",
                self.command,
                self.code,
                many
            ),
        }
    }

    /// Fails with the command's stderr unless it exited 0.
    pub fn check(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            bail!(
                "`{}` exited {:?}: {}",
                self.command,
                self.code,
                clip(if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr })
            )
        }
    }
}

/// Parses a stream of JSON values (one document, or JSON lines). Stops at the first non-JSON.
pub fn json_values(text: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>() {
        match value {
            Ok(v) => out.push(v),
            Err(_) => break,
        }
    }
    if out.is_empty() {
        // Fall back to lines that parse on their own, ignoring chatter around them.
        out = text.lines().filter_map(|l| serde_json::from_str(l.trim()).ok()).collect();
    }
    out
}

/// The last 600 characters of `text`, trimmed, for error messages.
pub fn clip(text: &str) -> String {
    let t = text.trim();
    let start = t.char_indices().rev().nth(600).map_or(0, |(i, _)| i);
    t[start..].to_owned()
}

pub fn describe(cmd: &Command) -> String {
    let prog = Path::new(cmd.get_program())
        .file_name()
        .map_or_else(|| cmd.get_program().to_string_lossy(), |n| n.to_string_lossy())
        .into_owned();
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    format!("{prog} {}", args.join(" "))
}

/// Runs `cmd` to completion, writing `stdin` to it; kills it after `timeout`.
pub fn run(mut cmd: Command, stdin: Option<&str>, timeout: Duration) -> Result<Output> {
    let command = describe(&cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot start `{command}`"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A command that exits before reading its stdin is not our error here.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.stdout.take().map(read_all);
    let err = child.stderr.take().map(read_all);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a child")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{command}` did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.map(join_text).unwrap_or_default();
    let stderr = err.map(join_text).unwrap_or_default();
    Ok(Output { command, code: status.code(), stdout, stderr })
}

fn read_all(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn join_text(h: thread::JoinHandle<String>) -> String {
    h.join().unwrap_or_default()
}

/// A long-running child. Its stderr (and stdout unless captured) goes to a log file.
/// Dropping it stops it: SIGTERM, up to 10 s grace, then SIGKILL.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    lines: Option<Receiver<String>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stderr to `log`; with `capture_stdout`, stdout lines arrive on
    /// [`Proc::next_line`], else stdout goes to the log too.
    pub fn spawn(mut cmd: Command, name: &str, log: &Path, capture_stdout: bool) -> Result<Self> {
        let command = describe(&cmd);
        let file =
            File::create(log).with_context(|| format!("cannot create log {}", log.display()))?;
        let stdout: Stdio = if capture_stdout {
            Stdio::piped()
        } else {
            file.try_clone().context("cannot share the log file")?.into()
        };
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(file);
        let mut child = cmd.spawn().with_context(|| format!("cannot start `{command}`"))?;
        let lines = match child.stdout.take() {
            Some(out) => {
                let (tx, rx) = mpsc::channel();
                thread::spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                });
                Some(rx)
            }
            None => None,
        };
        Ok(Self { name: name.to_owned(), log: log.to_owned(), child, lines, status: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, waiting at most `timeout`. `Ok(None)`: stdout closed.
    pub fn next_line(&mut self, timeout: Duration) -> Result<Option<String>> {
        let Some(rx) = &self.lines else { bail!("{}: stdout is not captured", self.name) };
        match rx.recv_timeout(timeout) {
            Ok(line) => Ok(Some(line)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("{}: no output line within {timeout:?}; log: {}", self.name, self.log_tail())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
        }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (a name such as `TERM`) to the process.
    pub fn signal(&mut self, signal: &str) {
        if self.poll_exit().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns the exit status.
    pub fn stop_within(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.poll_exit() {
            return Some(status);
        }
        self.signal("TERM");
        if let Some(status) = self.wait_exit(grace) {
            return Some(status);
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
        self.status
    }

    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_within(Duration::from_secs(10))
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        std::fs::read_to_string(&self.log).map(|t| clip(&t)).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
