//! Printing results: human lines, or JSON with `--json`.

use std::io::Write;

use serde_json::Value;

/// Like `println!`, but a closed stdout (`fernwart audit list | head -1`) is no panic:
/// the reader has gone, so the line is dropped.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

pub fn line(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    // A write error means nobody reads stdout any more; nothing useful is left to do.
    let _ = stdout.write_fmt(args).and_then(|()| stdout.write_all(b"\n"));
}

pub fn print_json(v: &Value) {
    line(format_args!("{}", serde_json::to_string(v).unwrap_or_default()));
}

/// One JSON line per item (for streams of events).
pub fn print_json_lines(items: &[Value]) {
    for v in items {
        print_json(v);
    }
}

pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub fn list(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str().map(str::to_owned).unwrap_or_else(|| {
                        x.get("name").and_then(Value::as_str).unwrap_or("?").to_owned()
                    })
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}
