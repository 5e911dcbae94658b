//! A small W3C WebDriver client for the console's browser tests: Debian's `chromedriver`
//! driving Debian's `chromium` headless, over plain HTTP on loopback (JSON in, JSON out). Only
//! what the tests use: navigate, find, type, click, read, cookies, screenshots.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    https::parse_reply,
    net::{free_port, poll, wait_port, LOCALHOST},
    process::Proc,
};

/// How long one WebDriver command may take (a page load included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The W3C key of an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian puts the browser and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether the browser and its driver are installed (`scripts/test` installs them).
pub fn available() -> Option<(PathBuf, PathBuf)> {
    let browser = std::env::var_os("FERNWART_CHROMIUM")
        .map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from);
    let driver = std::env::var_os("FERNWART_CHROMEDRIVER")
        .map_or_else(|| PathBuf::from(CHROMEDRIVER), PathBuf::from);
    (browser.is_file() && driver.is_file()).then_some((browser, driver))
}

/// A running chromedriver.
pub struct Driver {
    addr: SocketAddr,
    browser: PathBuf,
    _proc: Proc,
}

impl Driver {
    /// Starts `driver` on a free loopback port, logging to `log`.
    pub fn start(browser: &Path, driver: &Path, log: &Path) -> Result<Self> {
        let port = free_port(LOCALHOST)?;
        let mut cmd = Command::new(driver);
        cmd.arg(format!("--port={port}")).arg("--allowed-ips=127.0.0.1");
        let proc = Proc::spawn(cmd, "chromedriver", log, false)?;
        let addr = SocketAddr::new(LOCALHOST, port);
        wait_port(addr, Duration::from_secs(30)).context("chromedriver did not start")?;
        Ok(Self { addr, browser: browser.to_owned(), _proc: proc })
    }

    /// A new headless browser with a profile of its own in `profile` (a fresh context:
    /// no cookies shared with other sessions). Accepts the test CA's certificates.
    pub fn session(&self, profile: &Path, lang: &str) -> Result<Browser> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": self.browser,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--ignore-certificate-errors",
                    "--window-size=1280,900",
                    format!("--lang={lang}"),
                    format!("--user-data-dir={}", profile.display()),
                ],
                "prefs": {"intl.accept_languages": lang},
            },
        }}});
        let v = http(self.addr, "POST", "/session", Some(&caps)).context("starting a browser")?;
        let id = v
            .get("sessionId")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("new session: no sessionId in {v}"))?
            .to_owned();
        Ok(Browser { addr: self.addr, id })
    }
}

/// One browser session (a window with its own cookies).
pub struct Browser {
    addr: SocketAddr,
    id: String,
}

/// An element of the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        http(self.addr, method, &format!("/session/{}{path}", self.id), body)
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.cmd("POST", "/url", Some(&json!({ "url": url })))
            .with_context(|| format!("opening {url}"))
            .map(|_| ())
    }

    pub fn url(&self) -> Result<String> {
        self.cmd("GET", "/url", None)?
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the current URL is not a string"))
    }

    /// The page's HTML as the browser holds it now.
    pub fn source(&self) -> Result<String> {
        self.cmd("GET", "/source", None)?
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the page source is not a string"))
    }

    /// All elements matching a CSS selector (none: empty).
    pub fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v =
            self.cmd("POST", "/elements", Some(&json!({"using": "css selector", "value": css})))?;
        let list = v.as_array().ok_or_else(|| anyhow!("find {css}: not a list: {v}"))?;
        list.iter()
            .map(|e| {
                e.get(ELEMENT_KEY)
                    .and_then(Value::as_str)
                    .map(|id| Element(id.to_owned()))
                    .ok_or_else(|| anyhow!("find {css}: not an element: {e}"))
            })
            .collect()
    }

    /// The one element matching `css`, waiting up to `timeout` for it to appear.
    pub fn find(&self, css: &str, timeout: Duration) -> Result<Element> {
        poll(&format!("an element {css:?}"), timeout, Duration::from_millis(100), || {
            Ok(self.find_all(css)?.into_iter().next())
        })
    }

    pub fn type_into(&self, e: &Element, text: &str) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/value", e.0), Some(&json!({ "text": text })))
            .map(|_| ())
    }

    /// Empties an input field.
    pub fn clear(&self, e: &Element) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/clear", e.0), Some(&json!({}))).map(|_| ())
    }

    pub fn click(&self, e: &Element) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/click", e.0), Some(&json!({}))).map(|_| ())
    }

    pub fn text(&self, e: &Element) -> Result<String> {
        self.cmd("GET", &format!("/element/{}/text", e.0), None)?
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("element text is not a string"))
    }

    pub fn attribute(&self, e: &Element, name: &str) -> Result<Option<String>> {
        Ok(self
            .cmd("GET", &format!("/element/{}/attribute/{name}", e.0), None)?
            .as_str()
            .map(str::to_owned))
    }

    /// The cookies the browser holds for the current page (`name`, `httpOnly`, `secure`,
    /// `sameSite`, ...).
    pub fn cookies(&self) -> Result<Vec<Value>> {
        let v = self.cmd("GET", "/cookie", None)?;
        v.as_array().cloned().ok_or_else(|| anyhow!("cookies: not a list: {v}"))
    }

    /// Sets the window's size in CSS pixels (a tablet: 800 × 1100).
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.cmd("POST", "/window/rect", Some(&json!({ "width": width, "height": height })))
            .map(|_| ())
    }

    /// Runs `script` (a function body) in the page and gives back what it returns.
    pub fn eval(&self, script: &str) -> Result<Value> {
        self.cmd("POST", "/execute/sync", Some(&json!({ "script": script, "args": [] })))
    }

    /// Presses Enter on the element, as a keyboard user does on a focused button.
    pub fn press_enter(&self, e: &Element) -> Result<()> {
        self.type_into(e, "\u{E007}")
    }

    /// Saves a PNG of the window to `path` (its directory is created).
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        use base64::Engine as _;
        let v = self.cmd("GET", "/screenshot", None)?;
        let b64 = v.as_str().ok_or_else(|| anyhow!("screenshot: not a string"))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("screenshot: not base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Adds a virtual authenticator (WebAuthn, Chromium's): a CTAP2 USB security key with
    /// resident keys and user verification that always succeeds. Returns its id.
    pub fn add_virtual_authenticator(&self) -> Result<String> {
        let v = self.cmd(
            "POST",
            "/webauthn/authenticator",
            Some(&json!({
                "protocol": "ctap2",
                "transport": "usb",
                "hasResidentKey": true,
                "hasUserVerification": true,
                "isUserConsenting": true,
                "isUserVerified": true,
            })),
        )?;
        v.as_str().map(str::to_owned).ok_or_else(|| anyhow!("virtual authenticator: no id in {v}"))
    }

    /// Runs `script` in the page as an async function (WebDriver's execute/async: the last
    /// argument is the callback that returns its value).
    pub fn execute_async(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.cmd("POST", "/execute/async", Some(&json!({ "script": script, "args": args })))
    }

    /// The credentials a virtual authenticator holds (`credentialId`, `signCount`, ...).
    pub fn virtual_credentials(&self, authenticator: &str) -> Result<Vec<Value>> {
        let v =
            self.cmd("GET", &format!("/webauthn/authenticator/{authenticator}/credentials"), None)?;
        v.as_array().cloned().ok_or_else(|| anyhow!("credentials: not a list: {v}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(self.addr, "DELETE", &format!("/session/{}", self.id), None);
    }
}

/// One WebDriver command: the `value` of its answer, or its error as an error.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if method != "GET" && method != "DELETE" {
        req.push_str(&format!(
            "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to chromedriver at {addr}"))?;
    s.write_all(req.as_bytes()).context("sending a WebDriver command")?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let reply = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{method} {path}: no answer from chromedriver within {COMMAND_TIMEOUT:?}");
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut chunk) {
            Ok(0) => match parse_reply(&buf, true)? {
                Some(r) => break r,
                None => bail!("{method} {path}: chromedriver closed without an answer"),
            },
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(r) = parse_reply(&buf, false)? {
                    break r;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("{method} {path}: reading")),
        }
    };
    let v: Value = serde_json::from_str(&reply.body)
        .with_context(|| format!("{method} {path}: not JSON: {}", reply.summary()))?;
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    if !reply.ok() {
        let err = value.get("error").and_then(Value::as_str).unwrap_or("error");
        let msg = value.get("message").and_then(Value::as_str).unwrap_or_default();
        let first: String = msg.lines().next().unwrap_or_default().chars().take(300).collect();
        bail!("{method} {path}: WebDriver {err}: {first}");
    }
    Ok(value)
}
