//! The side-by-side table (and its JSON form), ratios and targets.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{PathResult, Sizes};

/// A target the fernwart figure should meet.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// fernwart ≥ factor × OpenSSH.
    AtLeastTimesSsh(f64),
    /// fernwart ≤ factor × the floor (three plain relays: the hop count is the
    /// architecture's, the bar is on what fernwart adds).
    AtMostTimesFloor(f64),
    /// fernwart < limit (in the row's unit).
    Below(f64),
}

impl Target {
    fn describe(self, unit: &str) -> String {
        match self {
            Target::AtLeastTimesSsh(f) => format!(">= {f}x ssh"),
            Target::AtMostTimesFloor(f) => format!("<= {f}x floor"),
            Target::Below(l) => format!("< {l} {unit}"),
        }
    }

    fn check(self, fw: Option<f64>, ssh: Option<f64>, floor: Option<f64>) -> Option<bool> {
        let fw = fw?;
        match self {
            Target::AtLeastTimesSsh(f) => Some(fw >= f * ssh?),
            Target::AtMostTimesFloor(f) => Some(fw <= f * floor?),
            Target::Below(l) => Some(fw < l),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub key: &'static str,
    pub figure: String,
    pub unit: &'static str,
    pub direct: Option<f64>,
    pub openssh: Option<f64>,
    /// Three plain TCP relays in place of fernwart's three processes (see floor.rs).
    pub floor: Option<f64>,
    pub fernwart: Option<f64>,
    /// fernwart / direct.
    pub ratio_direct: Option<f64>,
    /// fernwart / OpenSSH.
    pub ratio_ssh: Option<f64>,
    /// fernwart / floor.
    pub ratio_floor: Option<f64>,
    pub target: Option<String>,
    pub pass: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub sizes: Sizes,
    pub elapsed_s: f64,
    /// Share of the machine's CPU capacity that other processes used during the run (noise).
    pub background_cpu_pct: Option<f64>,
    pub rows: Vec<Row>,
    pub paths: Vec<PathResult>,
    /// `--recording`: what session recording costs (see rec.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<crate::rec::RecordingResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording_error: Option<String>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl Report {
    pub fn new(
        sizes: &Sizes,
        paths: &[PathResult; 4],
        elapsed_s: f64,
        background_cpu_pct: Option<f64>,
    ) -> Self {
        let [direct, ssh, floor, fw] = paths;
        let mut rows = Vec::new();
        let mut row = |key,
                       figure: String,
                       unit,
                       get: &dyn Fn(&PathResult) -> Option<f64>,
                       target: Option<Target>| {
            let (d, s, fl, f) = (get(direct), get(ssh), get(floor), get(fw));
            rows.push(Row {
                key,
                figure,
                unit,
                direct: d,
                openssh: s,
                floor: fl,
                fernwart: f,
                ratio_direct: ratio(f, d),
                ratio_ssh: ratio(f, s),
                ratio_floor: ratio(f, fl),
                target: target.map(|t| t.describe(unit)),
                pass: target.and_then(|t| t.check(f, s, fl)),
            });
        };
        row(
            "bulk1",
            "bulk, 1 stream (echo, full duplex)".into(),
            "MiB/s",
            &|r| r.bulk1_mib_s,
            Some(Target::AtLeastTimesSsh(2.0)),
        );
        row(
            "bulk4",
            "bulk, 4 streams (echo, full duplex)".into(),
            "MiB/s",
            &|r| r.bulk4_mib_s,
            Some(Target::AtLeastTimesSsh(2.0)),
        );
        row(
            "rtt_p50",
            format!("RTT p50 ({} B ping-pong)", sizes.rtt_bytes),
            "us",
            &|r| r.rtt_p50_us,
            Some(Target::AtMostTimesFloor(1.2)),
        );
        row(
            "rtt_p99",
            format!("RTT p99 ({} B ping-pong)", sizes.rtt_bytes),
            "us",
            &|r| r.rtt_p99_us,
            None,
        );
        row(
            "connect_p50",
            "connect -> first byte p50".into(),
            "us",
            &|r| r.connect_p50_us,
            Some(Target::Below(1000.0)),
        );
        row("connect_p99", "connect -> first byte p99".into(), "us", &|r| r.connect_p99_us, None);
        let roles = [
            ("relay", "relay (sshd | server)"),
            ("machine", "machine (ssh -R | agent)"),
            ("technician", "technician (ssh -L | connect)"),
        ];
        for (role, label) in roles {
            let key = match role {
                "relay" => "cpu_relay",
                "machine" => "cpu_machine",
                _ => "cpu_technician",
            };
            row(
                key,
                format!("CPU, {label}"),
                "s",
                &|r| r.roles.iter().find(|x| x.role == role).map(|x| x.cpu_s),
                None,
            );
        }
        for (role, label) in roles {
            let (key, target) = match role {
                "relay" => ("rss_relay", None),
                "machine" => ("rss_machine", Some(Target::Below(20.0))),
                _ => ("rss_technician", None),
            };
            row(
                key,
                format!("peak RSS, {label}"),
                "MiB",
                &|r| {
                    r.roles.iter().find(|x| x.role == role).map(|x| x.peak_rss_kib as f64 / 1024.0)
                },
                target,
            );
        }
        let agents = fw.idle.as_ref().map_or(sizes.idle_agents, |i| i.agents);
        row(
            "server_kib_per_idle_agent",
            format!("server memory per idle agent ({agents})"),
            "KiB",
            &|r| r.idle.as_ref().map(|i| i.per_agent_kib),
            Some(Target::Below(64.0)),
        );
        Self {
            sizes: sizes.clone(),
            elapsed_s,
            background_cpu_pct,
            rows,
            paths: paths.to_vec(),
            recording: None,
            recording_error: None,
        }
    }

    pub fn any_target_failed(&self) -> bool {
        self.rows.iter().any(|r| r.pass == Some(false))
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let num = |v: Option<f64>| match v {
            None => "-".to_owned(),
            Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
            Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
            Some(v) => format!("{v:.2}"),
        };
        let rat = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}x"));
        let line = |out: &mut String, c: [&str; 11]| {
            let text = format!(
                "{:<44} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {:<13} {}",
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
            );
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(
            &mut out,
            [
                "figure",
                "unit",
                "direct",
                "openssh",
                "floor",
                "fernwart",
                "fw/direct",
                "fw/ssh",
                "fw/floor",
                "target",
                "",
            ],
        );
        let _ = writeln!(out, "{}", "-".repeat(144));
        for r in &self.rows {
            let verdict = match r.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None if r.target.is_some() => "n/a",
                None => "",
            };
            line(
                &mut out,
                [
                    &r.figure,
                    r.unit,
                    &num(r.direct),
                    &num(r.openssh),
                    &num(r.floor),
                    &num(r.fernwart),
                    &rat(r.ratio_direct),
                    &rat(r.ratio_ssh),
                    &rat(r.ratio_floor),
                    r.target.as_deref().unwrap_or(""),
                    verdict,
                ],
            );
        }
        let _ = writeln!(out);
        let s = &self.sizes;
        let _ = writeln!(
            out,
            "bulk: {} MiB on 1 connection, and {} MiB on each of 4 connections at once, sent to \
             the echo target and read back at the same time (full duplex); MiB/s counts the \
             payload once; median of {} rounds.",
            s.bulk1_mib, s.bulk4_mib_per_stream, s.rounds
        );
        let _ = writeln!(
            out,
            "RTT: {} ping-pongs on one TCP_NODELAY connection per round. connect: {} fresh \
             connections, from TCP connect to the first echoed byte. Percentiles over {} rounds.",
            s.rtt_count / s.rounds.max(1),
            s.connect_count / s.rounds.max(1),
            s.rounds
        );
        let _ = writeln!(
            out,
            "CPU: user+system seconds of each role over all rounds of the workload above; \
             peak RSS: VmHWM (summed over the sshd process tree)."
        );
        if let Some(b) = self.background_cpu_pct {
            let _ = writeln!(
                out,
                "other processes used {b:.0} % of the machine's CPU during the run{}",
                if b > 10.0 { ": figures are noisy, run again on a quiet machine" } else { "." }
            );
        }
        for p in &self.paths {
            if let Some(i) = &p.idle {
                let half = match (i.server_rss_half_kib, i.marginal_per_agent_kib) {
                    (Some(h), Some(m)) => format!(
                        ", with half of them {h} KiB; the second half cost {m:.1} KiB per agent"
                    ),
                    _ => String::new(),
                };
                let _ = writeln!(
                    out,
                    "idle agents: {}; server VmRSS {} KiB before, {} KiB with all connected{half}.",
                    i.method, i.server_rss_before_kib, i.server_rss_after_kib
                );
            }
        }
        for p in &self.paths {
            if !p.detail.is_empty() {
                let _ = writeln!(out, "{}: {}", p.path, p.detail);
            }
        }
        for p in &self.paths {
            if let Some(e) = &p.error {
                let _ = writeln!(out, "{}: not (fully) measured: {e}", p.path);
            }
        }
        let _ = writeln!(out, "total {:.0} s", self.elapsed_s);
        out
    }
}
