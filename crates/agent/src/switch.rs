//! The key switch: off when delivered; off stops all session traffic at once.
//!
//! Sources: `local` (state file in DIR, changed through the agent's Unix socket by
//! `fernwart-agent switch on|off`), `file:PATH` (content 1/0) and `gpio:CHIP:LINE`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use crate::config::SwitchSource;

pub const STATE_FILE: &str = "switch.state";
pub const SOCKET_FILE: &str = "agent.sock";
const POLL: Duration = Duration::from_millis(100);

pub fn read_local(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(STATE_FILE)).map(|s| s.trim() == "on").unwrap_or(false)
}

pub fn write_local(dir: &Path, on: bool) -> Result<(), String> {
    crate::identity::write(&dir.join(STATE_FILE), if on { b"on\n" } else { b"off\n" }, 0o600)
}

fn read_file_source(path: &Path) -> bool {
    std::fs::read_to_string(path).map(|s| matches!(s.trim(), "1" | "on" | "true")).unwrap_or(false)
}

fn read_gpio(chip: &Path, line: u32, active_low: bool) -> Result<bool, String> {
    let mut builder = gpiocdev::Request::builder();
    builder.on_chip(chip).with_consumer("fernwart-agent").with_line(line).as_input();
    if active_low {
        builder.as_active_low();
    }
    let req = builder.request().map_err(|e| format!("GPIO {}:{line}: {e}", chip.display()))?;
    let v = req.value(line).map_err(|e| format!("GPIO {}:{line}: {e}", chip.display()))?;
    Ok(v == gpiocdev::line::Value::Active)
}

/// The current position of the switch, read from its source.
pub fn read(dir: &Path, source: &SwitchSource) -> bool {
    match source {
        SwitchSource::Local => read_local(dir),
        SwitchSource::File(p) => read_file_source(p),
        SwitchSource::Gpio { chip, line, active_low } => read_gpio(chip, *line, *active_low)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read the key switch; treating it as off");
                false
            }),
    }
}

/// Keeps `tx` in step with the switch source until `tx` has no receivers.
pub async fn watch_source(dir: PathBuf, source: SwitchSource, tx: watch::Sender<bool>) {
    match source {
        SwitchSource::Local => serve_socket(dir, tx).await,
        other => loop {
            let d = dir.clone();
            let s = other.clone();
            let on = tokio::task::spawn_blocking(move || read(&d, &s)).await.unwrap_or(false);
            tx.send_if_modified(|cur| std::mem::replace(cur, on) != on);
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(POLL).await;
        },
    }
}

/// The control socket for the local switch: one line in (`on`, `off`, `status`), one line out.
async fn serve_socket(dir: PathBuf, tx: watch::Sender<bool>) {
    let path = dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "cannot open the switch control socket");
            return;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let dir = dir.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let mut rd = BufReader::new(rd.take(64));
            let answer =
                match tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line)).await {
                    Ok(Ok(_)) => match line.trim() {
                        "on" | "off" => {
                            let on = line.trim() == "on";
                            match write_local(&dir, on) {
                                Ok(()) => {
                                    tx.send_if_modified(|cur| std::mem::replace(cur, on) != on);
                                    line.trim().to_owned()
                                }
                                Err(e) => format!("error {e}"),
                            }
                        }
                        "status" => {
                            if *tx.borrow() {
                                "on".into()
                            } else {
                                "off".into()
                            }
                        }
                        other => format!("error unknown command {other:?}"),
                    },
                    _ => "error no command".into(),
                };
            let _ = wr.write_all(format!("{answer}\n").as_bytes()).await;
        });
    }
}

use tokio::io::AsyncReadExt as _;

/// `fernwart-agent switch on|off|status`: asks the running agent; with none running, the local
/// state file is changed and applies at its next start.
pub async fn command(dir: &Path, source: &SwitchSource, cmd: &str) -> Result<(bool, bool), String> {
    if cmd != "status" && *source != SwitchSource::Local {
        return Err(format!(
            "the key switch source is {source:?}; change it there, not with this command"
        ));
    }
    match UnixStream::connect(dir.join(SOCKET_FILE)).await {
        Ok(mut s) => {
            s.write_all(format!("{cmd}\n").as_bytes())
                .await
                .map_err(|e| format!("agent socket: {e}"))?;
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(5), BufReader::new(s).read_line(&mut answer))
                .await
                .map_err(|_| "the agent did not answer".to_string())?
                .map_err(|e| format!("agent socket: {e}"))?;
            match answer.trim() {
                "on" => Ok((true, true)),
                "off" => Ok((false, true)),
                other => Err(other.trim_start_matches("error ").to_owned()),
            }
        }
        Err(_) => {
            if cmd == "status" {
                return Ok((read(dir, source), false));
            }
            let on = cmd == "on";
            write_local(dir, on)?;
            Ok((on, false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_switch_is_off_when_delivered_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!read_local(dir.path()));
        write_local(dir.path(), true).unwrap();
        assert!(read_local(dir.path()));
        write_local(dir.path(), false).unwrap();
        assert!(!read_local(dir.path()));
    }

    #[test]
    fn file_source_reads_one_and_zero() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ks");
        assert!(!read_file_source(&f));
        std::fs::write(&f, "1\n").unwrap();
        assert!(read_file_source(&f));
        std::fs::write(&f, "0").unwrap();
        assert!(!read_file_source(&f));
    }

    #[tokio::test]
    async fn socket_switches_the_running_agent() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = watch::channel(false);
        tokio::spawn(watch_source(dir.path().to_owned(), SwitchSource::Local, tx));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !dir.path().join(SOCKET_FILE).exists() {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(command(dir.path(), &SwitchSource::Local, "on").await.unwrap(), (true, true));
        rx.changed().await.unwrap();
        assert!(*rx.borrow());
        assert!(read_local(dir.path()));
        assert_eq!(
            command(dir.path(), &SwitchSource::Local, "status").await.unwrap(),
            (true, true)
        );
    }

    #[test]
    fn an_unreadable_gpio_line_counts_as_off() {
        // No GPIO hardware or gpio-sim here: a chip that cannot be opened (or a line it does
        // not have) must read as "off", with the reason, never as "on".
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gpiochip-none");
        let err = read_gpio(&missing, 17, false).unwrap_err();
        assert!(err.contains("gpiochip-none:17"), "{err}");
        let not_a_chip = dir.path().join("plain-file");
        std::fs::write(&not_a_chip, "1").unwrap();
        assert!(read_gpio(&not_a_chip, 0, true).is_err());
        let source = SwitchSource::Gpio { chip: missing, line: 17, active_low: false };
        assert!(!read(dir.path(), &source));
    }

    #[tokio::test]
    async fn file_sources_cannot_be_switched_by_command() {
        let dir = tempfile::tempdir().unwrap();
        let err = command(dir.path(), &SwitchSource::File("/x".into()), "on").await.unwrap_err();
        assert!(err.contains("change it there"));
    }
}
