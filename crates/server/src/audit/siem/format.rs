//! Audit records as RFC 5424 syslog messages in octet-counted frames (RFC 6587 3.4.1, RFC 5425
//! 4.3), and as JSON lines. Pure: no I/O, no clock.
//!
//! ```text
//! LEN SP <PRI>1 TIMESTAMP HOSTNAME fernwart - MSGID [fernwart@32473 seq=".." prev=".."
//!   hash=".." action=".." actor=".." target=".." source=".."] [BOM]DETAILS
//! ```
//!
//! - PRI: facility 13 ("log audit") * 8 + severity: 2 (critical) for records whose details say
//!   `"alert": true` (lockouts, alert rules), 4 (warning) for refusals (`*.refused`,
//!   `*_refused`, `auth.login_failed`), 6 (informational) for link and tunnel traffic
//!   (`agent.connect`, `session.disconnect`, `tunnel.open`, ...), 5 (notice) for the rest.
//! - TIMESTAMP: the record's time, UTC, milliseconds (`2026-03-01T12:00:00.123Z`).
//! - HOSTNAME: the host of the server's public URL; PROCID is `-`: a message depends on its
//!   record alone, so a record sent again (by this process or after a restart) is the same
//!   bytes.
//! - MSGID: the action, cut to 32 printable ASCII characters (the whole action is in the SD).
//! - The structured data carries every field of the record exactly as hashed, so a receiver
//!   can check the chain (`seq`, `prev`, `hash`) and drop a record sent twice (same `seq`).
//! - MSG: the record's details, the JSON object exactly as stored; it starts with a UTF-8 BOM
//!   when it holds characters beyond ASCII (RFC 5424 6.4), and is plain ASCII otherwise.

use fernwart_proto::chain::Linked;

/// "log audit" (RFC 5424 table 1).
pub const FACILITY: u8 = 13;
pub const APP_NAME: &str = "fernwart";
/// The SD-ID of our parameters. 32473 is the private enterprise number RFC 5612 reserves for
/// examples: fernwart has none registered yet.
pub const SD_ID: &str = "fernwart@32473";

pub const CRITICAL: u8 = 2;
pub const WARNING: u8 = 4;
pub const NOTICE: u8 = 5;
pub const INFORMATIONAL: u8 = 6;

const BOM: &[u8] = b"\xEF\xBB\xBF";
const NIL: &str = "-";

/// What every message of this server says about its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// 1 to 255 printable ASCII characters, or `-`.
    hostname: String,
}

impl Origin {
    /// `host`: the host of the server's public URL (an IPv6 address without brackets).
    pub fn new(host: &str) -> Self {
        Self { hostname: header_field(host, 255) }
    }
}

/// The severity of a record (see the module's documentation).
pub fn severity(action: &str, details: &str) -> u8 {
    let alert = serde_json::from_str::<serde_json::Value>(details)
        .ok()
        .and_then(|d| d.get("alert").and_then(serde_json::Value::as_bool))
        .unwrap_or(false);
    if alert {
        CRITICAL
    } else if action.ends_with("refused") || action == "auth.login_failed" {
        WARNING
    } else if matches!(
        action,
        "agent.connect"
            | "agent.disconnect"
            | "session.connect"
            | "session.disconnect"
            | "tunnel.open"
            | "tunnel.close"
    ) {
        INFORMATIONAL
    } else {
        NOTICE
    }
}

/// One record as an RFC 5424 SYSLOG-MSG (without framing).
pub fn syslog_message(origin: &Origin, r: &Linked) -> Vec<u8> {
    let b = &r.body;
    let pri = u16::from(FACILITY) * 8 + u16::from(severity(&b.action, &b.details));
    let mut m = format!(
        "<{pri}>1 {} {} {APP_NAME} {NIL} {} [{SD_ID}",
        timestamp(b.time_ms),
        origin.hostname,
        header_field(&b.action, 32),
    );
    for (name, value) in [
        ("seq", r.seq.to_string().as_str()),
        ("prev", &r.prev),
        ("hash", &r.hash),
        ("action", &b.action),
        ("actor", &b.actor),
        ("target", &b.target),
        ("source", &b.source),
    ] {
        m.push(' ');
        m.push_str(name);
        m.push_str("=\"");
        push_param_value(&mut m, value);
        m.push('"');
    }
    m.push(']');
    let mut bytes = m.into_bytes();
    if !b.details.is_empty() {
        bytes.push(b' ');
        if !b.details.is_ascii() {
            bytes.extend_from_slice(BOM);
        }
        bytes.extend_from_slice(b.details.as_bytes());
    }
    bytes
}

/// Appends `msg` as one octet-counted frame: `MSG-LEN SP SYSLOG-MSG`.
pub fn push_frame(out: &mut Vec<u8>, msg: &[u8]) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
}

/// RFC 3339 in UTC with milliseconds, as RFC 5424 6.2.3 allows; `-` for a time outside years
/// 0 to 9999.
pub fn timestamp(time_ms: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_ms) * 1_000_000)
    else {
        return NIL.into();
    };
    if !(0..=9999).contains(&t.year()) {
        return NIL.into();
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// One record as a line of JSON (with its newline): the chain's fields as hashed (`details`
/// is the stored JSON text, a string) plus `time`, the same instant in RFC 3339.
pub fn json_line(r: &Linked) -> String {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        seq: u64,
        prev: &'a str,
        hash: &'a str,
        time: String,
        time_ms: i64,
        actor: &'a str,
        action: &'a str,
        target: &'a str,
        source: &'a str,
        details: &'a str,
    }
    let b = &r.body;
    let line = Line {
        seq: r.seq,
        prev: &r.prev,
        hash: &r.hash,
        time: timestamp(b.time_ms),
        time_ms: b.time_ms,
        actor: &b.actor,
        action: &b.action,
        target: &b.target,
        source: &b.source,
        details: &b.details,
    };
    // Serializing plain strings and numbers cannot fail; `{}` would still be a valid line.
    let mut text = serde_json::to_string(&line).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

/// A header field (HOSTNAME, MSGID): printable US-ASCII without spaces, at most `max`
/// characters; anything else becomes `_`; empty becomes `-`.
fn header_field(value: &str, max: usize) -> String {
    let field: String =
        value.chars().take(max).map(|c| if c.is_ascii_graphic() { c } else { '_' }).collect();
    if field.is_empty() {
        NIL.into()
    } else {
        field
    }
}

/// A PARAM-VALUE: `"`, `\` and `]` escaped with a backslash (RFC 5424 6.3.3).
fn push_param_value(out: &mut String, value: &str) {
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use fernwart_proto::chain::{link, Body};
    use proptest::prelude::*;

    use super::*;

    fn record(action: &str, actor: &str, details: &str) -> Linked {
        link(
            None,
            Body {
                time_ms: 1_767_225_600_123,
                actor: actor.into(),
                action: action.into(),
                target: "s1".into(),
                source: "127.0.0.1".into(),
                details: details.into(),
            },
        )
    }

    #[test]
    fn a_message_has_every_part_in_place() {
        let r = record("org.add", "admin", r#"{"kind":"provider"}"#);
        let msg = syslog_message(&Origin::new("fw.example.org"), &r);
        let expected = format!(
            "<109>1 2026-01-01T00:00:00.123Z fw.example.org fernwart - org.add \
             [fernwart@32473 seq=\"1\" prev=\"{}\" hash=\"{}\" action=\"org.add\" \
             actor=\"admin\" target=\"s1\" source=\"127.0.0.1\"] {{\"kind\":\"provider\"}}",
            r.prev, r.hash
        );
        assert_eq!(String::from_utf8(msg).unwrap(), expected);
    }

    #[test]
    fn frames_count_octets() {
        let mut out = b"x".to_vec();
        push_frame(&mut out, "<109>1 - - - - - - ä".as_bytes());
        assert_eq!(out, "x21 <109>1 - - - - - - ä".as_bytes());
    }

    #[test]
    fn severity_follows_alerts_refusals_and_traffic() {
        assert_eq!(severity("auth.lockout", r#"{"alert":true,"failures":3}"#), CRITICAL);
        assert_eq!(severity("alert.night_access", r#"{"alert":true}"#), CRITICAL);
        assert_eq!(severity("auth.login_failed", "{}"), WARNING);
        assert_eq!(severity("auth.login_refused", "{}"), WARNING);
        assert_eq!(severity("access.refused", "{}"), WARNING);
        assert_eq!(severity("tunnel.refused", "{}"), WARNING);
        assert_eq!(severity("tunnel.open", "{}"), INFORMATIONAL);
        assert_eq!(severity("session.approve", r#"{"alert":false}"#), NOTICE);
        assert_eq!(severity("user.add", "not json"), NOTICE);
        let crit =
            syslog_message(&Origin::new("h"), &record("auth.lockout", "a", r#"{"alert":true}"#));
        assert!(crit.starts_with(b"<106>1 "));
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(timestamp(i64::MAX), "-");
        assert_eq!(timestamp(253_402_300_800_000), "-", "year 10000");
    }

    #[test]
    fn header_fields_are_printable_and_bounded() {
        assert_eq!(header_field("", 32), "-");
        assert_eq!(header_field("a b\u{e4}\n", 32), "a_b__");
        assert_eq!(header_field(&"x".repeat(40), 32).len(), 32);
        assert_eq!(Origin::new("").hostname, "-");
        assert_eq!(Origin::new("::1").hostname, "::1");
    }

    #[test]
    fn param_values_escape_quote_backslash_and_bracket() {
        let mut s = String::new();
        push_param_value(&mut s, r#"a"b\c]d[e="#);
        assert_eq!(s, r#"a\"b\\c\]d[e="#);
    }

    #[test]
    fn details_beyond_ascii_start_with_a_bom() {
        let msg = syslog_message(&Origin::new("h"), &record("a.b", "x", r#"{"r":"Grüße"}"#));
        let text = String::from_utf8(msg).unwrap();
        assert!(text.ends_with("] \u{feff}{\"r\":\"Grüße\"}"), "{text}");
        let msg = syslog_message(&Origin::new("h"), &record("a.b", "x", ""));
        assert!(msg.ends_with(b"\"]"), "no MSG, no space");
    }

    #[test]
    fn json_lines_carry_the_chain_fields_as_hashed() {
        let r = record("org.add", "ad\"min", "{\"a\":\"x\\ny\"}");
        let line = json_line(&r);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with("}\n"));
        let back: Linked = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-01-01T00:00:00.123Z");
    }

    /// Splits a SYSLOG-MSG at its structured data and reads the parameters back, strictly: the
    /// structure must hold whatever the values were.
    fn parse_sd(msg: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
        let text = String::from_utf8(msg.to_vec()).unwrap();
        let fields: Vec<&str> = text.splitn(7, ' ').collect();
        assert_eq!(fields.len(), 7, "PRI+VERSION TIMESTAMP HOSTNAME APP PROCID MSGID SD");
        assert!(fields[5].len() <= 32 && fields[5].bytes().all(|b| b.is_ascii_graphic()));
        let sd = fields[6].strip_prefix('[').unwrap();
        let mut rest = sd.chars();
        let id: String = rest.by_ref().take_while(|c| *c != ' ').collect();
        assert_eq!(id, SD_ID);
        let mut params = Vec::new();
        loop {
            let name: String = rest.by_ref().take_while(|c| *c != '=').collect();
            assert_eq!(rest.next(), Some('"'));
            let mut value = String::new();
            loop {
                match rest.next().unwrap() {
                    '\\' => {
                        let c = rest.next().unwrap();
                        assert!(matches!(c, '"' | '\\' | ']'), "escaped {c:?}");
                        value.push(c);
                    }
                    '"' => break,
                    ']' => panic!("unescaped ] inside a value"),
                    c => value.push(c),
                }
            }
            params.push((name, value));
            match rest.next() {
                Some(' ') => continue,
                Some(']') => break,
                other => panic!("after a value: {other:?}"),
            }
        }
        let tail: String = rest.collect();
        (params, tail.into_bytes())
    }

    proptest! {
        #[test]
        fn framing_is_exact_and_values_cannot_break_the_structure(
            actor in any::<String>(),
            action in any::<String>(),
            target in any::<String>(),
            source in any::<String>(),
            details in any::<String>(),
            time_ms in any::<i64>(),
        ) {
            let r = link(None, Body {
                time_ms,
                actor: actor.clone(),
                action: action.clone(),
                target: target.clone(),
                source: source.clone(),
                details: details.clone(),
            });
            let msg = syslog_message(&Origin::new("fw"), &r);
            let mut framed = Vec::new();
            push_frame(&mut framed, &msg);
            let space = framed.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&framed[..space]).unwrap().parse().unwrap();
            prop_assert_eq!(len, framed.len() - space - 1);
            prop_assert_eq!(&framed[space + 1..], &msg[..]);

            let (params, tail) = parse_sd(&msg);
            let expected: Vec<(String, String)> = [
                ("seq", "1".to_string()),
                ("prev", r.prev.clone()),
                ("hash", r.hash.clone()),
                ("action", action),
                ("actor", actor),
                ("target", target),
                ("source", source),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
            prop_assert_eq!(params, expected);
            let mut want = Vec::new();
            if !details.is_empty() {
                want.push(b' ');
                if !details.is_ascii() {
                    want.extend_from_slice(BOM);
                }
                want.extend_from_slice(details.as_bytes());
            }
            prop_assert_eq!(tail, want);
        }
    }
}
