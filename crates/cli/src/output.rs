//! Printing results: human lines, or JSON with `--json`.

use std::io::Write;

use serde::Serialize;

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

/// One line of JSON. The API types serialize without fail (plain fields, string keys).
pub fn print_json<T: Serialize + ?Sized>(v: &T) {
    line(format_args!("{}", serde_json::to_string(v).unwrap_or_default()));
}

/// One JSON line per item (for streams of events).
pub fn print_json_lines<T: Serialize>(items: &[T]) {
    for v in items {
        print_json(v);
    }
}

/// Names joined by commas, as the human output lists targets and users.
pub fn list<T: AsRef<str>>(names: &[T]) -> String {
    names.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(",")
}
