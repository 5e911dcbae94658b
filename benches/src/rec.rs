//! `--recording`: what session recording costs. A second fernwart path whose session is
//! prepared with `--record` (its agent records every connection) is measured in turns with
//! the usual one (recording off), on the same figures: bulk with the usual byte pattern
//! (compresses like polling traffic), bulk with incompressible data (like a firmware image),
//! and the ping-pong. Reported: both sides' figures, the agent's CPU per GiB carried, and how
//! many bytes the recordings take per MiB recorded (both directions counted).

use std::{collections::HashSet, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use fernwart_api::RecordingInfo;
use serde::Serialize;

use crate::{fw::FwPath, load, procs, progress, Sizes};

const MIB: f64 = 1024.0 * 1024.0;

/// One side (recording off or on).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    pub bulk1_mib_s: Option<f64>,
    pub bulk1_random_mib_s: Option<f64>,
    pub rtt_p50_us: Option<f64>,
    pub rtt_p99_us: Option<f64>,
    /// The agent's CPU seconds over this phase, per GiB that crossed it (both directions).
    pub agent_cpu_s_per_gib: Option<f64>,
    pub agent_cpu_s: f64,
    #[serde(skip)]
    bulk1: Vec<f64>,
    #[serde(skip)]
    bulk1_random: Vec<f64>,
    #[serde(skip)]
    rtt: Vec<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RecordingResult {
    pub rounds: usize,
    pub bulk1_mib: u64,
    pub off: Side,
    pub on: Side,
    /// Bytes on disk per MiB recorded (both directions), by kind of data.
    pub stored_per_mib_pattern: Option<f64>,
    pub stored_per_mib_random: Option<f64>,
    pub recordings: usize,
    pub recorded_mib: f64,
    pub stored_mib: f64,
    /// Bytes the recorder missed because its writer fell behind (gaps).
    pub missed_bytes: u64,
}

/// Bytes recorded (both ways), stored and missed, of the recordings not seen before.
#[derive(Default)]
struct Totals {
    recorded: u64,
    stored: u64,
    missed: u64,
}

/// Waits until every recording in `agent_dir` is complete (the connections closed and the
/// writer finished), then adds the new ones to `seen` and returns their totals.
fn settle(agent_dir: &Path, seen: &mut HashSet<String>) -> Result<Totals> {
    let dir = fernwart_agent::recording::dir(agent_dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let list: Vec<RecordingInfo> = loop {
        let list = fernwart_agent::recording::list(&dir, "m1", None, &HashSet::new())
            .with_context(|| format!("listing {}", dir.display()))?;
        if list.iter().all(|r| r.state == "complete") {
            break list;
        }
        if std::time::Instant::now() > deadline {
            bail!("recordings still being written after 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut t = Totals::default();
    for r in list {
        if seen.insert(r.id.clone()) {
            t.recorded += r.bytes_to_target.unwrap_or(0) + r.bytes_from_target.unwrap_or(0);
            t.stored += r.file_bytes;
            t.missed += r.missed_bytes.unwrap_or(0);
        }
    }
    Ok(t)
}

fn agent_cpu(p: &FwPath) -> Vec<procs::Role> {
    p.roles().into_iter().filter(|r| r.role == "machine").collect()
}

pub fn measure(off: &FwPath, on: &FwPath, sizes: &Sizes) -> Result<RecordingResult> {
    let rounds = sizes.rounds.max(1);
    let bytes = sizes.bulk1_mib << 20;
    let mut res = RecordingResult { rounds, bulk1_mib: sizes.bulk1_mib, ..Default::default() };
    let mut seen = HashSet::new();
    // What the setup's readiness check left.
    settle(&on.agent_dir, &mut seen)?;
    let (mut pattern, mut random, mut all) =
        (Totals::default(), Totals::default(), Totals::default());
    let mut carried = [0u64; 2];
    for round in 1..=rounds {
        for (i, path) in [off, on].into_iter().enumerate() {
            let recording = i == 1;
            let word = if recording { "on" } else { "off" };
            let side = if recording { &mut res.on } else { &mut res.off };
            let roles = agent_cpu(path);
            let before = procs::cpu_snapshot(&roles);
            progress(&format!("recording {word}: bulk, pattern (round {round}/{rounds})"));
            side.bulk1.push(load::bulk_of(path.local, 1, bytes, false)?);
            if recording {
                let t = settle(&path.agent_dir, &mut seen)?;
                pattern.recorded += t.recorded;
                pattern.stored += t.stored;
                pattern.missed += t.missed;
            }
            progress(&format!("recording {word}: bulk, random (round {round}/{rounds})"));
            side.bulk1_random.push(load::bulk_of(path.local, 1, bytes, true)?);
            if recording {
                let t = settle(&path.agent_dir, &mut seen)?;
                random.recorded += t.recorded;
                random.stored += t.stored;
                random.missed += t.missed;
            }
            progress(&format!("recording {word}: ping-pong (round {round}/{rounds})"));
            let n = sizes.rtt_count / rounds;
            side.rtt.extend(load::rtt(path.local, n, sizes.rtt_bytes)?);
            if recording {
                let t = settle(&path.agent_dir, &mut seen)?;
                all.missed += t.missed;
                all.recorded += t.recorded;
                all.stored += t.stored;
            }
            let after = procs::cpu_snapshot(&roles);
            side.agent_cpu_s += procs::cpu_delta(&before, &after).iter().sum::<f64>();
            // Each bulk run carries its bytes both ways; each ping-pong its bytes both ways.
            let rtt_bytes = (n + n / 10) as u64 * sizes.rtt_bytes as u64 * 2;
            carried[i] += 2 * (2 * bytes) + rtt_bytes;
        }
    }
    for (side, carried) in [(&mut res.off, carried[0]), (&mut res.on, carried[1])] {
        side.bulk1_mib_s = load::median(&side.bulk1);
        side.bulk1_random_mib_s = load::median(&side.bulk1_random);
        side.rtt_p50_us = load::pct(&side.rtt, 50.0);
        side.rtt_p99_us = load::pct(&side.rtt, 99.0);
        side.agent_cpu_s_per_gib = Some(side.agent_cpu_s / (carried as f64 / (MIB * 1024.0)));
    }
    // Per MiB actually in the recordings (what the recorder missed is not in the files).
    let per_mib = |t: &Totals| {
        let kept = t.recorded.saturating_sub(t.missed);
        (kept > 0).then(|| t.stored as f64 / (kept as f64 / MIB))
    };
    res.stored_per_mib_pattern = per_mib(&pattern);
    res.stored_per_mib_random = per_mib(&random);
    res.recordings = seen.len();
    res.recorded_mib = (pattern.recorded + random.recorded + all.recorded) as f64 / MIB;
    res.stored_mib = (pattern.stored + random.stored + all.stored) as f64 / MIB;
    res.missed_bytes = pattern.missed + random.missed + all.missed;
    Ok(res)
}

impl RecordingResult {
    /// The section printed under the main table.
    pub fn table(&self) -> String {
        let num = |v: Option<f64>| match v {
            None => "-".to_owned(),
            Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
            Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
            Some(v) => format!("{v:.2}"),
        };
        let ratio = |on: Option<f64>, off: Option<f64>| match (on, off) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".to_owned(),
        };
        let mut out = format!(
            "\nsession recording ({} round(s), recording off and on in turns, bulk {} MiB):\n",
            self.rounds, self.bulk1_mib
        );
        out.push_str(&format!(
            "{:<44} {:>6} {:>9} {:>9} {:>9}\n",
            "figure", "unit", "off", "on", "on/off"
        ));
        let rows: [(&str, &str, Option<f64>, Option<f64>); 5] = [
            ("bulk, 1 stream, pattern data", "MiB/s", self.off.bulk1_mib_s, self.on.bulk1_mib_s),
            (
                "bulk, 1 stream, random data",
                "MiB/s",
                self.off.bulk1_random_mib_s,
                self.on.bulk1_random_mib_s,
            ),
            ("RTT p50 (ping-pong)", "us", self.off.rtt_p50_us, self.on.rtt_p50_us),
            ("RTT p99 (ping-pong)", "us", self.off.rtt_p99_us, self.on.rtt_p99_us),
            (
                "agent CPU per GiB carried (both ways)",
                "s",
                self.off.agent_cpu_s_per_gib,
                self.on.agent_cpu_s_per_gib,
            ),
        ];
        for (figure, unit, off, on) in rows {
            out.push_str(&format!(
                "{:<44} {:>6} {:>9} {:>9} {:>9}\n",
                figure,
                unit,
                num(off),
                num(on),
                ratio(on, off)
            ));
        }
        let kib = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.1} KiB", v / 1024.0));
        out.push_str(&format!(
            "recording size per MiB recorded (both directions): pattern data {}, random data {}\n",
            kib(self.stored_per_mib_pattern),
            kib(self.stored_per_mib_random)
        ));
        out.push_str(&format!(
            "{} recordings, {:.0} MiB recorded, {:.1} MiB on disk, {} bytes not recorded (writer behind)\n",
            self.recordings, self.recorded_mib, self.stored_mib, self.missed_bytes
        ));
        out
    }
}
