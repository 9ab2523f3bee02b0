//! `maxd` configuration: embedded defaults, then a TOML file, then environment
//! variables, then validation. Unknown keys are refused with their name.
//!
//! Environment variables are `MAXD_` followed by the key path in capitals with `__`
//! between sections: `MAXD_HTTP__LISTEN=0.0.0.0:8080`, `MAXD_SFU__PUBLIC_IP=203.0.113.5`.
//!
//! One scheme for the whole `MAXD_` namespace: a variable is a config key when its name
//! has the `__` section separator (then an unknown key is refused by name) or names a
//! top-level key (`MAXD_DATA_DIR`, `MAXD_DEV`, `MAXD_ROLES`). Every other `MAXD_` name
//! belongs to a command-line option (`MAXD_CONFIG_FILE`, `MAXD_FILES_TOKEN`, ...) or to
//! a plane (`MAXD_RELAY_NO_DIRECT_IO`), and is never read as a key; `maxd` warns about
//! one that nothing reads ([`unread_variables`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A plane this node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Media plane: rooms, `/rtc`, WHIP/WHEP, UDP/TCP media.
    Sfu,
    /// Control plane: accounts, chat, call set-up.
    Signalling,
    /// QUIC file relay.
    Relay,
}

impl Role {
    /// The name used in config, logs and `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sfu => "sfu",
            Role::Signalling => "signalling",
            Role::Relay => "relay",
        }
    }
}

/// The whole configuration. Every key is documented in `configs/maxd.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the database, stored files and dev secrets.
    pub data_dir: PathBuf,
    /// Dev mode: enables dev-only conveniences. Never in production.
    pub dev: bool,
    /// Planes this node runs.
    pub roles: Vec<Role>,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub sfu: sfu::Config,
    pub signalling: signalling::Config,
    pub relay: relay::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("maxd-data"),
            dev: true,
            roles: vec![Role::Sfu, Role::Signalling, Role::Relay],
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            sfu: sfu::Config::default(),
            signalling: signalling::Config::default(),
            relay: relay::Config::default(),
        }
    }
}

/// `[http]`: the main HTTP server. The limits are described in `docs/operations.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP server (web client, APIs, `/rtc`, WHIP/WHEP, `/metrics`).
    pub listen: SocketAddr,
    /// Time a client has to send a request's head, from the connection's start or from
    /// the first byte of its next request. Closes slowloris connections.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait between requests, and a response may
    /// wait for the client to read it. WebSockets have their own timeouts.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most open connections, WebSockets included. 0: three quarters of the open-file
    /// limit; a larger value is lowered to that.
    pub max_connections: usize,
    /// Most open connections from one client address (IPv6: one /64). 0: no limit.
    pub max_connections_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 0,
            max_connections_per_ip: 256,
        }
    }
}

/// `[auth]`: access-token signing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HMAC secret for access tokens (at least 32 bytes). Unset in dev mode: a secret is
    /// generated once and kept in `data_dir/dev-secret.hex`.
    pub secret: Option<String>,
}

/// `[log]`: structured logs on standard error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter in `tracing` syntax (`info`, `maxd=debug,sfu=trace`). `RUST_LOG` wins.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Prefix of every environment variable `maxd` reads.
pub const ENV_PREFIX: &str = "MAXD_";

/// The top-level keys of the configuration (`data_dir`, `dev`, `roles`, and the
/// sections), from the type itself so the list cannot drift.
fn top_level_keys() -> Vec<String> {
    match toml::Table::try_from(Config::default()) {
        Ok(t) => t.keys().cloned().collect(),
        Err(_) => Vec::new(),
    }
}

/// Whether the variable `MAXD_<rest>` is a config key (see the module docs).
fn is_config_variable(rest: &str, top: &[String]) -> bool {
    rest.contains("__") || top.iter().any(|k| k.eq_ignore_ascii_case(rest))
}

/// The config-key variables with `prefix`, split into key paths at `__`.
fn env_provider(prefix: &str) -> Env {
    let top = top_level_keys();
    Env::prefixed(prefix)
        .filter(move |k| is_config_variable(k.as_str(), &top))
        .split("__")
}

/// `MAXD_` variables in `vars` that are neither config keys nor in `known` (the
/// command line's own variables and those the planes read): a typo, most likely.
pub fn unread_variables(vars: impl IntoIterator<Item = String>, known: &[String]) -> Vec<String> {
    let top = top_level_keys();
    let mut out: Vec<String> = vars
        .into_iter()
        .filter(|name| match name.strip_prefix(ENV_PREFIX) {
            Some(rest) => !is_config_variable(rest, &top) && !known.iter().any(|k| k == name),
            None => false,
        })
        .collect();
    out.sort();
    out
}

impl Config {
    /// Defaults, then `file` if given, then `MAXD_*` environment variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        Self::load_with_env(file, env_provider(ENV_PREFIX))
    }

    fn load_with_env(file: Option<&Path>, env: Env) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                bail!("config file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        let cfg: Config = fig.merge(env).extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("invalid configuration: {}", msgs.join("; "))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.roles.is_empty() {
            bail!("`roles` is empty: name at least one of sfu, signalling, relay");
        }
        if self.http.header_read_timeout.is_zero() || self.http.idle_timeout.is_zero() {
            bail!("http.header_read_timeout and http.idle_timeout must be more than 0");
        }
        self.sfu
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid [sfu] section: {e}"))?;
        Ok(())
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/maxd.toml");
        let cfg = Config::load_with_env(Some(&path), Env::prefixed("MAXD_TEST_NONE_")).unwrap();
        let def = Config::default();
        assert_eq!(
            toml::to_string(&cfg).unwrap(),
            toml::to_string(&def).unwrap()
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[sfu]\nudp_lisen = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load_with_env(Some(&path), Env::prefixed("MAXD_TEST_NONE_")).unwrap_err();
        assert!(err.to_string().contains("udp_lisen"), "{err}");
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[http]\nlisten = \"127.0.0.1:1111\"\n").unwrap();
        // SAFETY: this test owns this variable name; no other test reads it.
        unsafe { std::env::set_var("MAXD_T1_HTTP__LISTEN", "127.0.0.1:2222") };
        let cfg = Config::load_with_env(Some(&path), env_provider("MAXD_T1_")).unwrap();
        assert_eq!(cfg.http.listen.port(), 2222);
    }

    #[test]
    fn only_section_keys_and_top_level_keys_are_read_from_the_environment() {
        // SAFETY: this test owns the MAXD_T2_ names; no other test reads them.
        unsafe {
            std::env::set_var("MAXD_T2_CONFIG_FILE", "/nonexistent.toml");
            std::env::set_var("MAXD_T2_FILES_TOKEN", "x");
            std::env::set_var("MAXD_T2_RELAY_NO_DIRECT_IO", "1");
            std::env::set_var("MAXD_T2_DATA_DIR", "/srv/maxd");
            std::env::set_var("MAXD_T2_DEV", "false");
            std::env::set_var("MAXD_T2_AUTH__SECRET", "0123456789abcdef0123456789abcdef");
            std::env::set_var("MAXD_T2_HTTP__MAX_CONNECTIONS_PER_IP", "7");
        }
        let cfg = Config::load_with_env(None, env_provider("MAXD_T2_")).unwrap();
        assert_eq!(cfg.data_dir, Path::new("/srv/maxd"));
        assert!(!cfg.dev);
        assert_eq!(cfg.http.max_connections_per_ip, 7);
        // SAFETY: as above.
        unsafe { std::env::set_var("MAXD_T3_HTTP__MAX_CONECTIONS", "7") };
        let err = Config::load_with_env(None, env_provider("MAXD_T3_")).unwrap_err();
        assert!(err.to_string().contains("max_conections"), "{err}");
    }

    #[test]
    fn unread_variables_are_those_no_key_and_no_option_takes() {
        let vars = [
            "MAXD_DATADIR",
            "MAXD_DATA_DIR",
            "MAXD_FILES_TOKEN",
            "MAXD_HTTP__LISTEN",
            "MAXD_ROLES",
            "PATH",
            "MAXD_FOO",
        ];
        let unread = unread_variables(
            vars.iter().map(|s| s.to_string()),
            &["MAXD_FILES_TOKEN".to_string()],
        );
        assert_eq!(unread, ["MAXD_DATADIR", "MAXD_FOO"]);
    }
}

/// What stands in for a secret in `maxd config`.
pub const REDACTED: &str = "<redacted>";

/// The effective configuration as TOML, with every secret replaced by [`REDACTED`]:
/// keys that name one (`secret`, `*_secret`, `*password*`, `*private_key*`, `*_auth`)
/// and the password of any URL (`postgres://user:PASSWORD@host/db`). `maxd config` is
/// pasted into issues and chats; it must not carry what grants access.
pub fn to_redacted_toml(cfg: &Config) -> anyhow::Result<String> {
    let mut v = toml::Value::try_from(cfg)?;
    redact(&mut v, "");
    Ok(toml::to_string(&v)?)
}

fn is_secret_key(key: &str) -> bool {
    key == "secret" || key.ends_with("_secret") || key.contains("password") || key.contains("private_key") || key.ends_with("_auth")
}

fn redact(v: &mut toml::Value, key: &str) {
    match v {
        toml::Value::Table(t) => t.iter_mut().for_each(|(k, v)| redact(v, k)),
        toml::Value::Array(a) => a.iter_mut().for_each(|v| redact(v, key)),
        toml::Value::String(s) if !s.is_empty() && is_secret_key(key) => *s = REDACTED.to_string(),
        toml::Value::String(s) => {
            if let Some(r) = redact_url_password(s) {
                *s = r;
            }
        }
        _ => {}
    }
}

/// `scheme://user:password@host...` with the password replaced, or `None` when there is
/// none.
fn redact_url_password(s: &str) -> Option<String> {
    let start = s.find("://")? + 3;
    let authority_end = s[start..].find(['/', '?', '#']).map_or(s.len(), |i| start + i);
    let at = s[start..authority_end].rfind('@')? + start;
    let colon = s[start..at].find(':')? + start;
    Some(format!("{}{REDACTED}{}", &s[..colon + 1], &s[at..]))
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn maxd_config_shows_no_secret() {
        let mut cfg = Config::default();
        cfg.auth.secret = Some("s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t".into());
        cfg.signalling.turn_secret = "turn-shared-secret".into();
        cfg.signalling.push_vapid_private_key = "vapid-private".into();
        cfg.signalling.sms_gateway_auth = "Bearer gateway-key".into();
        cfg.signalling.database_url = "postgres://maxd:db-pass@db.internal:5432/maxd".into();
        cfg.signalling.push_gateway_url = "https://push.example/notify".into();
        let text = to_redacted_toml(&cfg).unwrap();
        for secret in ["s3cr3t", "turn-shared-secret", "vapid-private", "gateway-key", "db-pass"] {
            assert!(!text.contains(secret), "{secret} shown in:\n{text}");
        }
        assert!(text.contains("postgres://maxd:<redacted>@db.internal:5432/maxd"), "{text}");
        assert!(text.contains("https://push.example/notify"), "a URL without a password is kept:\n{text}");
        // Still a config maxd reads (what is not secret round-trips).
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.signalling.push_gateway_url, "https://push.example/notify");
    }

    #[test]
    fn url_passwords() {
        assert_eq!(redact_url_password("redis://:pw@h:6379").as_deref(), Some("redis://:<redacted>@h:6379"));
        assert_eq!(redact_url_password("https://u@h/p:x@y"), None);
        assert_eq!(redact_url_password("sqlite://maxd-data/db"), None);
        assert_eq!(redact_url_password("not a url"), None);
    }
}
