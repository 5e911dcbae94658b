//! Printing results: human lines, or JSON with `--json`.

use serde_json::Value;

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
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
