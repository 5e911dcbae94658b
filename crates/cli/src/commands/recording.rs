//! `recording list | export`: session recordings, kept at the machines' agents; the server
//! relays them to admins and auditors and keeps no copy.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use fernwart_api::RecordingInfo;

use super::admin::enc;
use crate::{output, Context};

/// The largest recording `export` fetches.
const MAX_RECORDING: u64 = 16 * 1024 * 1024 * 1024;

pub async fn list(
    ctx: &Context,
    machine: Option<&str>,
    session: Option<&str>,
) -> anyhow::Result<()> {
    let list: Vec<RecordingInfo> = ctx.get(&query(machine, session)).await?;
    if ctx.json {
        output::print_json(&list);
    } else {
        for r in &list {
            crate::out!("{}", human_line(r));
        }
    }
    Ok(())
}

fn query(machine: Option<&str>, session: Option<&str>) -> String {
    let mut q: Vec<String> = Vec::new();
    if let Some(m) = machine {
        q.push(format!("machine={}", enc(m)));
    }
    if let Some(s) = session {
        q.push(format!("session={}", enc(s)));
    }
    if q.is_empty() {
        "/v1/recordings".to_owned()
    } else {
        format!("/v1/recordings?{}", q.join("&"))
    }
}

fn human_line(r: &RecordingInfo) -> String {
    let bytes = match (r.bytes_to_target, r.bytes_from_target) {
        (Some(to), Some(from)) => format!(" {to}B up {from}B down"),
        _ => String::new(),
    };
    let missed = match r.missed_bytes {
        Some(m) if m > 0 => format!(" ({m}B not recorded)"),
        _ => String::new(),
    };
    format!(
        "{:<36} {:<9} machine={} session={} target={} started {}{bytes}{missed}",
        r.id, r.state, r.machine, r.session, r.target, r.started
    )
}

/// Fetches recording `id` through the server, checks it against the hash the agent gave, and
/// writes it as pcapng to `pcap` (and as stored to `raw`, if given).
pub async fn export(
    ctx: &Context,
    id: &str,
    pcap: &Path,
    raw: Option<&Path>,
) -> anyhow::Result<()> {
    if !fernwart_recording::valid_id(id) {
        bail!("{id:?} is not a recording id (see `fernwart recording list`)");
    }
    let login = ctx.load_login()?;
    let client = ctx.client()?;
    let tmp = match raw {
        Some(r) => r.to_owned(),
        None => sibling(pcap, ".fwrec.part"),
    };
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    let path = format!("/v1/recordings/{}", enc(id));
    let got = client.download(&path, Some(&login.token), &mut file, MAX_RECORDING).await;
    drop(file);
    let result = async {
        let (_, headers) = got.map_err(|e| {
            if e.status() == Some(401) {
                anyhow::anyhow!("{e} (run `fernwart login`)")
            } else {
                anyhow::Error::new(e)
            }
        })?;
        let (sha256, len) = std::fs::File::open(&tmp)
            .and_then(fernwart_recording::sha256_of)
            .with_context(|| format!("reading {}", tmp.display()))?;
        let expected = headers.get("x-fernwart-sha256").and_then(|v| v.to_str().ok());
        if let Some(e) = expected {
            if !e.eq_ignore_ascii_case(&sha256) {
                bail!("recording {id} arrived damaged: SHA-256 {sha256}, the agent recorded {e}");
            }
        }
        let input =
            std::fs::File::open(&tmp).with_context(|| format!("reading {}", tmp.display()))?;
        let done = fernwart_recording::export_file(input, pcap)
            .with_context(|| format!("exporting recording {id}"))?;
        Ok((done, sha256, len, expected.is_some()))
    }
    .await;
    if raw.is_none() || result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let (done, sha256, len, checked) = result?;
    if ctx.json {
        output::print_json(&serde_json::json!({
            "id": id,
            "pcap": pcap.display().to_string(),
            "packets": done.packets,
            "bytes_to_target": done.bytes_to_target,
            "bytes_from_target": done.bytes_from_target,
            "missed_bytes": done.missed,
            "complete": done.cut.is_none(),
            "file_bytes": len,
            "sha256": sha256,
            "sha256_checked": checked,
        }));
    } else {
        crate::out!("{}", fernwart_recording::describe(&done, pcap));
        crate::out!(
            "recording {id}: {len} bytes, SHA-256 {sha256}{}",
            if checked { " (as the agent's audit trail records it)" } else { "" }
        );
    }
    Ok(())
}

/// `path` with `suffix` added to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "recording".into());
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_what_is_asked_for() {
        assert_eq!(query(None, None), "/v1/recordings");
        assert_eq!(query(Some("m 1"), Some("s1")), "/v1/recordings?machine=m+1&session=s1");
        assert_eq!(sibling(Path::new("/tmp/x.pcapng"), ".part"), Path::new("/tmp/x.pcapng.part"));
    }
}
