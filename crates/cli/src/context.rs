//! Where the CLI keeps its login (FERNWART_HOME) and how it reaches the server.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use fernwart_api::{Empty, Scope};
use fernwart_transport::{http_client::HttpMethod, tls, Dialer, HttpClient, ProxyConfig};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const LOGIN_FILE: &str = "login.json";
pub const CA_FILE: &str = "server-ca.pem";

#[derive(Serialize, Deserialize)]
pub struct Login {
    pub server: String,
    pub user: String,
    pub token: String,
    pub scope: Scope,
    pub expires: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("server", &self.server)
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .finish()
    }
}

pub struct Context {
    pub home: PathBuf,
    pub server: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub proxy: ProxyConfig,
    pub json: bool,
    /// An API token (env FERNWART_TOKEN): used instead of the stored login.
    pub token: Option<String>,
}

impl Context {
    fn login_path(&self) -> PathBuf {
        self.home.join(LOGIN_FILE)
    }

    pub fn load_login(&self) -> anyhow::Result<Login> {
        if let Some(token) = &self.token {
            let server = self.server.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "FERNWART_TOKEN needs the server too: set FERNWART_SERVER or --server"
                )
            })?;
            return Ok(Login {
                server,
                user: "api-token".into(),
                token: token.trim().to_owned(),
                scope: fernwart_api::Scope::Full,
                expires: "9999-12-31T23:59:59Z".into(),
            });
        }
        let path = self.login_path();
        let text = std::fs::read_to_string(&path).map_err(|_| {
            anyhow::anyhow!("not logged in: run `fernwart login --user NAME --password-stdin`")
        })?;
        let login: Login =
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        let expired = time::OffsetDateTime::parse(
            &login.expires,
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| t <= time::OffsetDateTime::now_utc())
        .unwrap_or(false);
        if expired {
            bail!("login expired: run `fernwart login` again");
        }
        Ok(login)
    }

    pub fn save_login(&self, login: &Login) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.home)
            .with_context(|| format!("creating {}", self.home.display()))?;
        set_private_dir(&self.home);
        write_private(&self.login_path(), serde_json::to_string_pretty(login)?.as_bytes())
    }

    /// FERNWART_HOME, made owner-only if it does not exist.
    pub fn ensure_home(&self) -> anyhow::Result<()> {
        if !self.home.exists() {
            std::fs::create_dir_all(&self.home)
                .with_context(|| format!("creating {}", self.home.display()))?;
            set_private_dir(&self.home);
        }
        Ok(())
    }

    pub fn forget_login(&self) {
        let _ = std::fs::remove_file(self.login_path());
    }

    /// The server URL: flag or env, else the one of the stored login.
    pub fn server_url(&self) -> anyhow::Result<String> {
        if let Some(s) = &self.server {
            return Ok(s.clone());
        }
        if let Ok(text) = std::fs::read_to_string(self.login_path()) {
            if let Ok(l) = serde_json::from_str::<Login>(&text) {
                return Ok(l.server);
            }
        }
        bail!("no server: give --server https://HOST:PORT or set FERNWART_SERVER")
    }

    /// The CA to trust: flag or env (remembered in FERNWART_HOME), else the remembered one.
    fn ca_path(&self) -> anyhow::Result<Option<PathBuf>> {
        let stored = self.home.join(CA_FILE);
        if let Some(p) = &self.ca_cert {
            let pem = std::fs::read(p)
                .with_context(|| format!("reading CA certificate {}", p.display()))?;
            if std::fs::read(&stored).ok().as_deref() != Some(&pem[..])
                && std::fs::create_dir_all(&self.home).is_ok()
            {
                let _ = std::fs::write(&stored, &pem);
            }
            return Ok(Some(p.clone()));
        }
        Ok(stored.exists().then_some(stored))
    }

    pub fn client(&self) -> anyhow::Result<HttpClient> {
        let url = url::Url::parse(&self.server_url()?).context("server URL")?;
        let roots = tls::roots(self.ca_path()?.as_deref())?;
        let cfg = tls::client_config(roots, None)?;
        Ok(HttpClient::new(Dialer::new(url, cfg, self.proxy.clone())?))
    }

    /// `GET path` with the stored login; the answer parsed as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call::<Empty, T>(HttpMethod::GET, path, None).await
    }

    /// `POST path` with `body` and the stored login; the answer parsed as `T`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call(HttpMethod::POST, path, Some(body)).await
    }

    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: HttpMethod,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let login = self.load_login()?;
        let client = self.client()?;
        let r = client.json(method, path, Some(&login.token), body).await;
        if let Err(e) = &r {
            if e.status() == Some(401) && !e.to_string().contains("fernwart login") {
                bail!("{e} (run `fernwart login`)");
            }
        }
        Ok(r?)
    }
}

/// FERNWART_HOME is the owner's only (0700 on Unix, an owner-only ACL that files made in it
/// inherit on Windows). Best effort: a home on a file system without permissions still works,
/// the files written into it are narrowed one by one (`write_private`).
pub fn set_private_dir(dir: &Path) {
    if let Err(e) = crate::owner_only::restrict(dir, true) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot make FERNWART_HOME owner-only");
    }
}

/// Writes `data` to `path` through a temporary file that only the owner may open from its
/// creation on (mode 0600 on Unix, an owner-only ACL on Windows).
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let mut f = open.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    // Before the secret goes in: an existing file kept its mode, and on Windows the file
    // inherited its folder's entries.
    crate::owner_only::restrict(&tmp, false)
        .with_context(|| format!("making {} owner-only", tmp.display()))?;
    f.write_all(data).with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    // A rename within the folder keeps the file's own ACL (and mode).
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Where the CLI keeps its login when FERNWART_HOME is not set: `%APPDATA%\fernwart` on
/// Windows (the roaming profile, where per-user settings belong), else
/// `$XDG_CONFIG_HOME/fernwart` or `~/.config/fernwart`. `var` reads the environment (passed in,
/// so that tests need not set it).
pub fn default_home(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    if let Some(h) = var("FERNWART_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let nonempty = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = if cfg!(windows) {
        nonempty("APPDATA")
            .or_else(|| nonempty("USERPROFILE").map(|p| p.join("AppData").join("Roaming")))
    } else {
        nonempty("XDG_CONFIG_HOME").or_else(|| nonempty("HOME").map(|h| h.join(".config")))
    };
    base.unwrap_or_else(|| PathBuf::from(".")).join("fernwart")
}

/// Reads one line from stdin (a password), without the line end.
pub fn read_secret_line() -> anyhow::Result<zeroize::Zeroizing<String>> {
    use std::io::BufRead;
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
    secret_from_line(&line)
}

/// The password in one line read from stdin: without its line end (LF, or CRLF from cmd and
/// PowerShell) and without the byte order mark Windows PowerShell puts before piped text when
/// its output encoding is UTF-8.
fn secret_from_line(line: &str) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let line = line.strip_prefix('\u{feff}').unwrap_or(line);
    let pw = zeroize::Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
    if pw.is_empty() {
        bail!("no password on stdin");
    }
    Ok(pw)
}

#[cfg(test)]
mod tests {
    use std::{ffi::OsString, path::PathBuf};

    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn a_password_line_loses_its_line_end_and_bom_only() {
        for line in ["pw x\n", "pw x\r\n", "\u{feff}pw x\r\n", "pw x"] {
            assert_eq!(secret_from_line(line).unwrap().as_str(), "pw x", "{line:?}");
        }
        assert_eq!(secret_from_line(" pw \n").unwrap().as_str(), " pw ");
        assert!(secret_from_line("\r\n").is_err());
        assert!(secret_from_line("").is_err());
    }

    #[test]
    fn fernwart_home_wins() {
        let vars = [("FERNWART_HOME", "/srv/fw"), ("APPDATA", "C:\\x"), ("HOME", "/home/t")];
        assert_eq!(default_home(env(&vars)), PathBuf::from("/srv/fw"));
    }

    #[cfg(windows)]
    #[test]
    fn the_default_home_on_windows_is_in_appdata() {
        let vars = [("APPDATA", r"C:\Users\t\AppData\Roaming"), ("HOME", "/home/t")];
        assert_eq!(default_home(env(&vars)), PathBuf::from(r"C:\Users\t\AppData\Roaming\fernwart"));
        let vars = [("USERPROFILE", r"C:\Users\t")];
        assert_eq!(default_home(env(&vars)), PathBuf::from(r"C:\Users\t\AppData\Roaming\fernwart"));
        // The real profile of the user running the test (under wine too).
        let home = default_home(|k| std::env::var_os(k));
        let appdata = std::env::var_os("APPDATA").expect("Windows sets APPDATA");
        assert_eq!(home, PathBuf::from(appdata).join("fernwart"));
        assert!(home.is_absolute(), "{}", home.display());
    }

    /// Exactly one ACE for the current user, protected; under wine, which keeps only Unix
    /// modes, no one but the owner and SYSTEM (see `Dacl::allows_only_owner_and_system`).
    #[cfg(windows)]
    fn owner_only(d: &crate::owner_only::Dacl) -> bool {
        d.is_owner_only()
            || crate::owner_only::running_under_wine() && d.allows_only_owner_and_system()
    }

    #[cfg(windows)]
    #[test]
    fn a_saved_login_is_the_owners_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context {
            home: dir.path().join("fernwart"),
            server: None,
            ca_cert: None,
            proxy: Default::default(),
            json: false,
            token: None,
        };
        let login = Login {
            server: "https://127.0.0.1:1".into(),
            user: "tech1".into(),
            token: "secret".into(),
            scope: fernwart_api::Scope::Full,
            expires: "9999-12-31T23:59:59Z".into(),
        };

        ctx.save_login(&login).unwrap();

        let file = crate::owner_only::dacl(&ctx.home.join(LOGIN_FILE)).unwrap();
        assert!(owner_only(&file), "{file:?}");
        let home = crate::owner_only::dacl(&ctx.home).unwrap();
        assert!(owner_only(&home), "{home:?}");
        assert_eq!(ctx.load_login().unwrap().token, "secret");
    }

    #[cfg(unix)]
    #[test]
    fn the_default_home_on_unix_is_in_the_config_folder() {
        let vars = [("XDG_CONFIG_HOME", "/x/cfg"), ("HOME", "/home/t")];
        assert_eq!(default_home(env(&vars)), PathBuf::from("/x/cfg/fernwart"));
        let vars = [("HOME", "/home/t"), ("APPDATA", "C:\\x")];
        assert_eq!(default_home(env(&vars)), PathBuf::from("/home/t/.config/fernwart"));
    }

    #[cfg(unix)]
    #[test]
    fn a_saved_login_is_mode_0600_in_a_0700_home() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("fernwart");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(home.join("login.tmp"), b"left over").unwrap();
        std::fs::set_permissions(home.join("login.tmp"), std::fs::Permissions::from_mode(0o644))
            .unwrap();

        write_private(&home.join(LOGIN_FILE), b"{}").unwrap();
        set_private_dir(&home);

        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home.join(LOGIN_FILE)), 0o600);
        assert_eq!(mode(&home), 0o700);
    }
}
