//! Access tokens for simulated participants: signed here with the server's secret
//! (`common::Keys`, HS256), or printed by a command such as `maxd token`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::{Grants, Keys};

#[derive(Clone)]
pub enum TokenSource {
    Secret(Box<Keys>),
    /// `sh -c` command with `{room}`, `{identity}` and `{grants}` replaced.
    Command(String),
}

impl TokenSource {
    pub fn from_options(secret: Option<&str>, command: Option<&str>) -> Result<TokenSource> {
        match (secret, command) {
            (Some(s), _) => Ok(TokenSource::Secret(Box::new(
                Keys::from_secret(s.as_bytes()).context("token secret")?,
            ))),
            (None, Some(c)) => Ok(TokenSource::Command(c.to_string())),
            (None, None) => bail!("no token secret and no token command"),
        }
    }

    /// A token for `identity` in `room` (or no room) with `grants` (comma-separated).
    pub async fn token(
        &self,
        room: Option<&str>,
        identity: &str,
        grants: &str,
        ttl: Duration,
    ) -> Result<String> {
        match self {
            TokenSource::Secret(keys) => {
                let g = Grants::parse_list(grants).map_err(anyhow::Error::msg)?;
                Ok(keys.mint_for(identity, None, room, g, ttl))
            }
            TokenSource::Command(cmd) => {
                let cmd = cmd
                    .replace("{room}", room.unwrap_or(""))
                    .replace("{identity}", identity)
                    .replace("{grants}", grants);
                let out = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&cmd)
                    .output()
                    .await
                    .context("run token command")?;
                if !out.status.success() {
                    bail!(
                        "token command failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                let t = String::from_utf8(out.stdout)
                    .context("token command output")?
                    .trim()
                    .to_string();
                if t.is_empty() {
                    bail!("token command printed nothing");
                }
                Ok(t)
            }
        }
    }
}
