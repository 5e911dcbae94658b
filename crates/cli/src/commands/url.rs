//! `fernwart open-url fernwart://connect/SERVER/SESSION` (what the web console's session page
//! links to) and `fernwart url-handler register`, which makes this fernwart the handler of
//! such links: on Linux a desktop entry and `xdg-mime`, on Windows keys under
//! `HKCU\Software\Classes\fernwart`.
//!
//! A link comes from a web page, so it is read strictly: exactly one shape, no query,
//! fragment, user, escapes or extra segments, and it must name the server this fernwart is
//! logged in to: a link never sends the login anywhere else, and it only ever connects.

use std::{net::IpAddr, time::Duration};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::{output, Context};

/// The longest link taken.
const MAX_LINK: usize = 512;
/// The longest session name (the server's rule).
const MAX_NAME: usize = 64;
/// The scheme the CLI handles.
pub const SCHEME: &str = "fernwart";

/// What a `fernwart://connect/...` link asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectLink {
    /// `host:port` (IPv6 in brackets), port always present.
    pub server: String,
    pub session: String,
}

/// Reads a link of the one shape `fernwart://connect/HOST[:PORT]/SESSION[/]`.
pub fn parse(link: &str) -> anyhow::Result<ConnectLink> {
    if link.len() > MAX_LINK {
        bail!("the link is longer than {MAX_LINK} characters");
    }
    if !link.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("the link holds spaces, control or non-ASCII characters");
    }
    let Some((scheme, rest)) = link.split_once("://") else {
        bail!("not a fernwart:// link");
    };
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        bail!("not a fernwart:// link");
    }
    if rest.contains(['?', '#', '%', '\\']) {
        bail!("the link holds a query, fragment, escape or user part: refused");
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let parts: Vec<&str> = rest.split('/').collect();
    let [verb, authority, session] = parts.as_slice() else {
        bail!("the link must be fernwart://connect/SERVER/SESSION");
    };
    if *verb != "connect" {
        bail!("the link asks for {verb:?}: fernwart links only connect");
    }
    Ok(ConnectLink { server: authority_of(authority)?, session: session_name(session)? })
}

/// `host[:port]` as given in a link, with the port made explicit (443 if none).
fn authority_of(a: &str) -> anyhow::Result<String> {
    let (host, port) = if let Some(v6) = a.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').context("an IPv6 server without its ]")?;
        addr.parse::<std::net::Ipv6Addr>().with_context(|| format!("{addr:?} is not IPv6"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').context("something after the IPv6 server")?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match a.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            bail!("{host:?} is not a server name");
        }
        (host.to_ascii_lowercase(), port)
    };
    let port: u16 = match port {
        None => 443,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse().ok().filter(|&p| p != 0).with_context(|| format!("port {p} is not valid"))?
        }
        Some(p) => bail!("port {p:?} is not a number"),
    };
    Ok(format!("{host}:{port}"))
}

/// A session name by the server's rule (and never `.`-led, so it cannot climb a path).
fn session_name(s: &str) -> anyhow::Result<String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if !ok {
        bail!("{s:?} is not a session name");
    }
    Ok(s.to_owned())
}

/// The `host:port` of a server URL (`https://fw.example:8443`), as [`parse`] gives it.
fn authority_of_url(url: &str) -> Option<String> {
    let u = url::Url::parse(url.trim()).ok()?;
    if u.scheme() != "https" {
        return None;
    }
    let host = match u.host()? {
        url::Host::Ipv6(a) => format!("[{a}]"),
        h => h.to_string().to_ascii_lowercase(),
    };
    Some(format!("{host}:{}", u.port_or_known_default()?))
}

/// Whether the link's server is one of `configured` (comma-separated URLs, as
/// `FERNWART_SERVER` may be for a cluster).
pub fn same_server(link: &ConnectLink, configured: &str) -> bool {
    configured.split(',').filter_map(authority_of_url).any(|a| a == link.server)
}

/// `fernwart open-url LINK`: connects to the session the link names, on this fernwart's
/// server only.
pub async fn open(ctx: &Context, link: &str, bind: IpAddr, wait: Duration) -> anyhow::Result<()> {
    let l = parse(link).context("reading the link")?;
    let configured = ctx.server_url()?;
    if !same_server(&l, &configured) {
        bail!(
            "the link names server {}, but this fernwart uses {configured}: refused (log in to that server first if you trust it)",
            l.server
        );
    }
    super::connect::run(ctx, &l.session, bind, wait).await
}

#[derive(Serialize)]
struct Registered {
    scheme: &'static str,
    handler: String,
    /// Where it was written (a file or registry key).
    at: String,
}

/// `fernwart url-handler register`: this fernwart opens `fernwart://` links.
pub fn register(ctx: &Context) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this program")?;
    let (handler, at) = platform::register(&exe)?;
    if ctx.json {
        output::print_json(&Registered { scheme: SCHEME, handler, at });
    } else {
        crate::out!("fernwart:// links now open with: {handler}\n(registered at {at})");
    }
    Ok(())
}

/// The desktop entry that hands a link to `exe open-url` in a terminal.
pub fn desktop_entry(exe: &std::path::Path) -> anyhow::Result<String> {
    let exe = exe.to_str().context("the program's path is not UTF-8")?;
    // Desktop Entry Specification, "The Exec key": quoted, with " ` $ \ escaped.
    let mut quoted = String::from("\"");
    for c in exe.chars() {
        if matches!(c, '"' | '`' | '$' | '\\') {
            quoted.push('\\');
        }
        if c == '%' {
            quoted.push('%');
        }
        quoted.push(c);
    }
    quoted.push('"');
    Ok(format!(
        "[Desktop Entry]\nType=Application\nName=fernwart connect\nComment=Opens fernwart:// links from the web console\nExec={quoted} open-url %u\nTerminal=true\nNoDisplay=true\nMimeType=x-scheme-handler/{SCHEME};\n"
    ))
}

/// The command Windows runs for a link (`"C:\...\fernwart.exe" open-url "%1"`).
pub fn windows_command(exe: &std::path::Path) -> anyhow::Result<String> {
    let exe = exe.to_str().context("the program's path is not UTF-8")?;
    if exe.contains('"') {
        bail!("the program's path holds a quote");
    }
    Ok(format!("\"{exe}\" open-url \"%1\""))
}

#[cfg(windows)]
mod platform {
    use std::{path::Path, process::Command};

    use anyhow::{bail, Context as _};

    const KEY: &str = r"HKCU\Software\Classes\fernwart";

    fn reg(args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("reg.exe").args(args).output().context("running reg.exe")?;
        if !out.status.success() {
            bail!("reg.exe {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    pub fn register(exe: &Path) -> anyhow::Result<(String, String)> {
        let command = super::windows_command(exe)?;
        reg(&["add", KEY, "/ve", "/d", "URL:fernwart connect", "/f"])?;
        reg(&["add", KEY, "/v", "URL Protocol", "/d", "", "/f"])?;
        let open = format!(r"{KEY}\shell\open\command");
        reg(&["add", &open, "/ve", "/d", &command, "/f"])?;
        Ok((command, KEY.to_owned()))
    }
}

#[cfg(all(unix, not(target_os = "macos")))]
mod platform {
    use std::{path::Path, process::Command};

    use anyhow::{bail, Context as _};

    const FILE: &str = "fernwart-url-handler.desktop";

    /// `$XDG_DATA_HOME/applications`, else `~/.local/share/applications`.
    fn applications() -> anyhow::Result<std::path::PathBuf> {
        let data = std::env::var_os("XDG_DATA_HOME")
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share"))
            })
            .context("neither XDG_DATA_HOME nor HOME is set")?;
        Ok(data.join("applications"))
    }

    pub fn register(exe: &Path) -> anyhow::Result<(String, String)> {
        let entry = super::desktop_entry(exe)?;
        let dir = applications()?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(FILE);
        std::fs::write(&path, entry).with_context(|| format!("writing {}", path.display()))?;
        let mime = format!("x-scheme-handler/{}", super::SCHEME);
        let out = Command::new("xdg-mime")
            .args(["default", FILE, &mime])
            .output()
            .context("running xdg-mime (package xdg-utils)")?;
        if !out.status.success() {
            bail!(
                "xdg-mime default {FILE} {mime}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((format!("{} open-url", exe.display()), path.display().to_string()))
    }
}

#[cfg(not(any(windows, all(unix, not(target_os = "macos")))))]
mod platform {
    use std::path::Path;

    pub fn register(_exe: &Path) -> anyhow::Result<(String, String)> {
        anyhow::bail!("registering a link handler is not supported on this system; run `fernwart open-url LINK` yourself")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(link: &str) -> ConnectLink {
        match parse(link) {
            Ok(l) => l,
            Err(e) => panic!("{link}: {e:#}"),
        }
    }

    #[test]
    fn good_links_are_read() {
        assert_eq!(
            ok("fernwart://connect/fw.example:8443/s1"),
            ConnectLink { server: "fw.example:8443".into(), session: "s1".into() }
        );
        assert_eq!(ok("FERNWART://connect/FW.Example/T-42.a@b/").server, "fw.example:443");
        assert_eq!(ok("fernwart://connect/127.0.0.1:8443/s1").server, "127.0.0.1:8443");
        assert_eq!(ok("fernwart://connect/[::1]:8443/s1").server, "[::1]:8443");
        assert_eq!(ok("fernwart://connect/[::1]/s1").server, "[::1]:443");
    }

    #[test]
    fn malicious_links_are_refused() {
        let long = format!("fernwart://connect/fw.example/{}", "a".repeat(600));
        let name65 = format!("fernwart://connect/fw.example/{}", "a".repeat(65));
        for bad in [
            "",
            "https://fw.example/s1",
            "fernwart:connect/fw.example/s1",
            "fernwart://run/fw.example/s1",
            "fernwart://Connect/fw.example/s1",
            "fernwart://connect/fw.example",
            "fernwart://connect/fw.example/",
            "fernwart://connect//s1",
            "fernwart://connect/fw.example/s1/extra",
            "fernwart://connect/fw.example/s1?bind=0.0.0.0",
            "fernwart://connect/fw.example/s1#x",
            "fernwart://connect/user@evil.example/s1",
            "fernwart://connect/fw.example/%2e%2e",
            "fernwart://connect/fw.example/..",
            "fernwart://connect/fw.example/.hidden",
            "fernwart://connect/fw.example/--bind=0.0.0.0",
            "fernwart://connect/fw.example/s1;rm -rf ~",
            "fernwart://connect/fw.example/$(id)",
            "fernwart://connect/fw.example/s1\n",
            "fernwart://connect/fw.example/s\u{e4}",
            "fernwart://connect/fw.example\\evil/s1",
            "fernwart://connect/fw.example:0/s1",
            "fernwart://connect/fw.example:65536/s1",
            "fernwart://connect/fw.example:+443/s1",
            "fernwart://connect/fw.example:/s1",
            "fernwart://connect/-fw.example/s1",
            "fernwart://connect/fw..example/s1",
            "fernwart://connect/fw_example/s1",
            "fernwart://connect/[::1/s1",
            "fernwart://connect/[nope]/s1",
            "fernwart://connect/[::1]x/s1",
            &long,
            &name65,
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn a_link_connects_only_to_the_configured_server() {
        let l = ok("fernwart://connect/fw.example:8443/s1");
        assert!(same_server(&l, "https://fw.example:8443"));
        assert!(same_server(&l, "https://FW.example:8443/"));
        assert!(same_server(&l, "https://a.example, https://fw.example:8443"));
        assert!(!same_server(&l, "https://fw.example"));
        assert!(!same_server(&l, "https://evil.example:8443"));
        assert!(!same_server(&l, "http://fw.example:8443"));
        let d = ok("fernwart://connect/fw.example/s1");
        assert!(same_server(&d, "https://fw.example"));
        let v6 = ok("fernwart://connect/[::1]:8443/s1");
        assert!(same_server(&v6, "https://[::1]:8443"));
    }

    #[test]
    fn the_handler_runs_this_program_quoted() {
        let e = desktop_entry(std::path::Path::new("/opt/my tools/fern$wart")).unwrap();
        assert!(e.contains("Exec=\"/opt/my tools/fern\\$wart\" open-url %u\n"), "{e}");
        assert!(e.contains("MimeType=x-scheme-handler/fernwart;"));
        assert!(e.contains("Terminal=true"));
        let w = windows_command(std::path::Path::new(r"C:\Program Files\fernwart\fernwart.exe"))
            .unwrap();
        assert_eq!(w, r#""C:\Program Files\fernwart\fernwart.exe" open-url "%1""#);
        assert!(windows_command(std::path::Path::new("C:\\a\"b")).is_err());
    }
}
