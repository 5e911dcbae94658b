//! Where the CLI keeps its login (FERNWART_HOME) and how it reaches the server.

use std::path::{Path, PathBuf};

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
        set_mode(&self.home, 0o700);
        write_private(&self.login_path(), serde_json::to_string_pretty(login)?.as_bytes())
    }

    /// FERNWART_HOME, made owner-only if it does not exist.
    pub fn ensure_home(&self) -> anyhow::Result<()> {
        if !self.home.exists() {
            std::fs::create_dir_all(&self.home)
                .with_context(|| format!("creating {}", self.home.display()))?;
            set_mode(&self.home, 0o700);
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

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

/// Elsewhere (Windows) a file in the user's profile is the user's: nothing to narrow.
#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) {}

/// FERNWART_HOME is the owner's only (0700 on Unix).
pub fn set_private_dir(dir: &Path) {
    set_mode(dir, 0o700);
}

pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let mut f = open.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    set_mode(&tmp, 0o600);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Reads one line from stdin (a password), without the line end.
pub fn read_secret_line() -> anyhow::Result<zeroize::Zeroizing<String>> {
    use std::io::BufRead;
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
    let pw = zeroize::Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
    if pw.is_empty() {
        bail!("no password on stdin");
    }
    Ok(pw)
}
