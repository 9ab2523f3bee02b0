//! Push for ringing: a device without an open `/ws` connection is woken by a push.
//!
//! A device session registers one push target:
//! - `webpush`: a browser's Web Push subscription (RFC 8030), payload encrypted with
//!   RFC 8291 `aes128gcm` and signed with VAPID (RFC 8292), by `web-push-native`;
//! - `gateway`: an app's `pushkey` for the operator's push gateway (APNs VoIP, FCM), in
//!   the shape of Matrix's push gateway API (sygnal): one JSON POST per notification,
//!   answered with the pushkeys the platform rejected.
//!
//! An invite is pushed at high priority with a TTL equal to the ring timeout; when the
//! ring ends (answer, decline, cancel, timeout) a `call_stop` push follows, with the
//! same Web Push `Topic`, so a push service still holding the invite replaces it.
//! Targets the push service calls dead (404/410, or rejected by the gateway) are
//! dropped. Sends run in the background, at most [`IN_FLIGHT`] at once. Endpoints,
//! pushkeys and keys never reach logs.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use web_push_native::jwt_simple::algorithms::{ECDSAP256PublicKeyLike, ES256KeyPair};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::{App, now_ms};

/// Push requests in flight at once (others wait their turn).
pub const IN_FLIGHT: usize = 32;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a device registers (`POST /api/push`).
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TargetReq {
    /// A `PushSubscription` as browsers serialise it.
    Webpush {
        endpoint: String,
        keys: WebpushKeys,
    },
    Gateway {
        app_id: String,
        pushkey: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebpushKeys {
    pub p256dh: String,
    pub auth: String,
}

/// The push configuration, parsed once.
pub struct Pusher {
    vapid: Option<ES256KeyPair>,
    vapid_public: Option<String>,
    gateway: Option<hyper::Uri>,
    pub(crate) tls: crate::outbound::Tls,
    slots: tokio::sync::Semaphore,
}

impl Pusher {
    pub fn new(cfg: &crate::Config) -> anyhow::Result<Pusher> {
        let vapid = match cfg.push_vapid_private_key.trim() {
            "" => None,
            k => {
                let raw = B64URL.decode(k.trim_end_matches('=')).map_err(|_| {
                    anyhow::anyhow!("signalling.push_vapid_private_key is not base64url")
                })?;
                Some(ES256KeyPair::from_bytes(&raw).map_err(|_| {
                    anyhow::anyhow!(
                        "signalling.push_vapid_private_key is not a P-256 private key (32 bytes)"
                    )
                })?)
            }
        };
        let vapid_public = vapid
            .as_ref()
            .map(|k| B64URL.encode(k.public_key().public_key().to_bytes_uncompressed()));
        let gateway = match cfg.push_gateway_url.trim() {
            "" => None,
            u => {
                let uri: hyper::Uri = u
                    .parse()
                    .map_err(|_| anyhow::anyhow!("signalling.push_gateway_url is not a URL"))?;
                if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none() {
                    anyhow::bail!("signalling.push_gateway_url must be an https:// or http:// URL");
                }
                Some(uri)
            }
        };
        let roots = cfg.push_ca_file.trim();
        let tls =
            crate::outbound::Tls::new((!roots.is_empty()).then(|| std::path::Path::new(roots)))
                .map_err(|e| anyhow::anyhow!("signalling.push_ca_file: {e}"))?;
        Ok(Pusher {
            vapid,
            vapid_public,
            gateway,
            tls,
            slots: tokio::sync::Semaphore::new(IN_FLIGHT),
        })
    }
}

/// One push: what it says, for how long it matters, and the Web Push topic.
#[derive(Debug, Clone)]
pub struct PushMsg {
    pub body: Value,
    pub ttl: Duration,
    /// Web Push `Topic` (at most 32 base64url characters): a later push with the same
    /// topic replaces an undelivered one.
    pub topic: String,
}

struct Target {
    session_id: String,
    kind: String,
    endpoint: String,
    p256dh: String,
    auth: String,
    app_id: String,
    created_at: i64,
}

fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.to_ascii_lowercase();
    allowed.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        match a.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => host == a,
        }
    })
}

impl App {
    /// The VAPID public key browsers subscribe with (`applicationServerKey`).
    pub fn vapid_public_key(&self) -> Option<&str> {
        self.pusher.vapid_public.as_deref()
    }

    /// Registers (or replaces) the push target of the caller's device.
    pub async fn register_push(&self, c: &Caller, t: TargetReq) -> ApiResult<Value> {
        let (kind, endpoint, p256dh, auth, app_id) = match t {
            TargetReq::Webpush { endpoint, keys } => {
                if self.pusher.vapid.is_none() {
                    return Err(ApiError::BadRequest(
                        "Web Push is not configured on this server".into(),
                    ));
                }
                let uri: hyper::Uri = endpoint
                    .parse()
                    .map_err(|_| ApiError::BadRequest("endpoint is not a URL".into()))?;
                let host_ok = uri
                    .host()
                    .is_some_and(|h| host_allowed(h, &self.cfg.push_webpush_hosts));
                if !matches!(uri.scheme_str(), Some("https" | "http"))
                    || !host_ok
                    || endpoint.len() > 1024
                {
                    return Err(ApiError::BadRequest(
                        "endpoint is not on a known push service".into(),
                    ));
                }
                let p = B64URL.decode(keys.p256dh.trim_end_matches('=')).ok();
                let valid_key = p
                    .as_deref()
                    .is_some_and(|p| web_push_native::p256::PublicKey::from_sec1_bytes(p).is_ok());
                let a = B64URL.decode(keys.auth.trim_end_matches('=')).ok();
                if !valid_key || a.as_ref().map(Vec::len) != Some(16) {
                    return Err(ApiError::BadRequest(
                        "keys.p256dh must be a P-256 point and keys.auth 16 bytes, base64url"
                            .into(),
                    ));
                }
                ("webpush", endpoint, keys.p256dh, keys.auth, String::new())
            }
            TargetReq::Gateway { app_id, pushkey } => {
                if self.pusher.gateway.is_none() {
                    return Err(ApiError::BadRequest(
                        "no push gateway is configured on this server".into(),
                    ));
                }
                if app_id.is_empty()
                    || app_id.len() > 128
                    || pushkey.is_empty()
                    || pushkey.len() > 512
                {
                    return Err(ApiError::BadRequest(
                        "app_id (1-128 bytes) and pushkey (1-512 bytes) are required".into(),
                    ));
                }
                ("gateway", pushkey, String::new(), String::new(), app_id)
            }
        };
        sqlx::query("DELETE FROM push_targets WHERE session_id = $1")
            .bind(&c.session_id)
            .execute(&self.db.pool)
            .await?;
        sqlx::query("INSERT INTO push_targets (session_id, user_id, kind, endpoint, p256dh, auth, app_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&c.session_id)
            .bind(c.user_id)
            .bind(kind)
            .bind(&endpoint)
            .bind(&p256dh)
            .bind(&auth)
            .bind(&app_id)
            .bind(now_ms())
            .execute(&self.db.pool)
            .await?;
        Ok(json!({"kind": kind}))
    }

    /// Removes the push target of the caller's device.
    pub async fn unregister_push(&self, c: &Caller) -> ApiResult<()> {
        sqlx::query("DELETE FROM push_targets WHERE session_id = $1")
            .bind(&c.session_id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Drops the push targets of revoked sessions.
    pub(crate) async fn forget_push_targets(&self, sessions: &[String]) -> ApiResult<()> {
        for s in sessions {
            sqlx::query("DELETE FROM push_targets WHERE session_id = $1")
                .bind(s)
                .execute(&self.db.pool)
                .await?;
        }
        Ok(())
    }

    /// Whether `user` has a push target.
    pub(crate) async fn has_push_target(&self, user: i64) -> bool {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM push_targets WHERE user_id = $1")
            .bind(user)
            .fetch_one(&self.db.pool)
            .await
            .map(|n| n > 0)
            .unwrap_or(false)
    }

    /// Device sessions of `user` with a push target and no open connection.
    pub(crate) async fn offline_push_targets(&self, user: i64) -> Vec<String> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT session_id FROM push_targets WHERE user_id = $1")
                .bind(user)
                .fetch_all(&self.db.pool)
                .await
                .unwrap_or_default();
        rows.into_iter()
            .filter(|s| !self.hub.session_online(user, s))
            .collect()
    }

    /// Pushes `msg` to the devices of `user` in the background (only to `sessions` when
    /// given). Returns at once.
    pub(crate) fn push_to(
        self: &Arc<Self>,
        user: i64,
        msg: PushMsg,
        sessions: Option<Vec<String>>,
    ) {
        let app = self.clone();
        tokio::spawn(async move {
            let targets = match app.push_targets(user).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "reading push targets");
                    return;
                }
            };
            for t in targets {
                if sessions
                    .as_ref()
                    .is_some_and(|s| !s.contains(&t.session_id))
                {
                    continue;
                }
                let app = app.clone();
                let msg = msg.clone();
                tokio::spawn(async move {
                    let Ok(_slot) = app.pusher.slots.acquire().await else {
                        return;
                    };
                    app.push_one(&t, &msg).await;
                });
            }
        });
    }

    async fn push_targets(&self, user: i64) -> ApiResult<Vec<Target>> {
        let rows: Vec<(String, String, String, String, String, String, i64)> = sqlx::query_as(
            "SELECT session_id, kind, endpoint, p256dh, auth, app_id, created_at FROM push_targets WHERE user_id = $1",
        )
        .bind(user)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(session_id, kind, endpoint, p256dh, auth, app_id, created_at)| Target {
                    session_id,
                    kind,
                    endpoint,
                    p256dh,
                    auth,
                    app_id,
                    created_at,
                },
            )
            .collect())
    }

    async fn push_one(&self, t: &Target, msg: &PushMsg) {
        let dead = match t.kind.as_str() {
            "webpush" => self.send_webpush(t, msg).await,
            _ => self.send_gateway(t, msg).await,
        };
        self.metrics.pushes.inc();
        if dead {
            self.metrics.push_targets_dropped.inc();
            let _ = sqlx::query("DELETE FROM push_targets WHERE session_id = $1 AND endpoint = $2")
                .bind(&t.session_id)
                .bind(&t.endpoint)
                .execute(&self.db.pool)
                .await;
        }
    }

    /// Sends one Web Push; true when the push service says the subscription is gone.
    async fn send_webpush(&self, t: &Target, msg: &PushMsg) -> bool {
        let Some(vapid) = &self.pusher.vapid else {
            return false;
        };
        let built = (|| {
            let uri: hyper::Uri = t.endpoint.parse().ok()?;
            let key = web_push_native::p256::PublicKey::from_sec1_bytes(
                &B64URL.decode(t.p256dh.trim_end_matches('=')).ok()?,
            )
            .ok()?;
            let auth = B64URL.decode(t.auth.trim_end_matches('=')).ok()?;
            if auth.len() != 16 {
                return None;
            }
            let ttl = msg.ttl.max(Duration::from_secs(1));
            web_push_native::WebPushBuilder::new(
                uri,
                key,
                *web_push_native::Auth::from_slice(&auth),
            )
            .with_valid_duration(ttl)
            .with_vapid(vapid, &self.cfg.push_vapid_subject)
            .build(msg.body.to_string())
            .ok()
        })();
        let Some(req) = built else {
            tracing::warn!("a Web Push target could not be used: dropped");
            return true;
        };
        let mut headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .filter(|(k, _)| *k != hyper::header::CONTENT_LENGTH)
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        headers.push(("urgency".into(), "high".into()));
        headers.push(("topic".into(), msg.topic.clone()));
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let uri = req.uri().clone();
        let body = Bytes::from(req.into_body());
        match crate::outbound::post(
            &uri,
            &h,
            body,
            self.cfg.push_timeout,
            Some(&self.pusher.tls),
        )
        .await
        {
            Ok((s, _)) if s.is_success() => false,
            Ok((s, _)) if s.as_u16() == 404 || s.as_u16() == 410 => true,
            Ok((s, _)) => {
                tracing::warn!(status = s.as_u16(), "Web Push refused");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "Web Push failed");
                false
            }
        }
    }

    /// Sends one notification to the push gateway; true when it rejected the pushkey.
    async fn send_gateway(&self, t: &Target, msg: &PushMsg) -> bool {
        let Some(url) = &self.pusher.gateway else {
            return false;
        };
        let mut n = msg.body.clone();
        n["prio"] = json!("high");
        n["ttl"] = json!(msg.ttl.as_secs());
        n["devices"] = json!([{"app_id": t.app_id, "pushkey": t.endpoint,
            "pushkey_ts": t.created_at / 1000, "data": {}}]);
        let body = Bytes::from(json!({"notification": n}).to_string());
        match crate::outbound::post(
            url,
            &[("content-type", "application/json")],
            body,
            self.cfg.push_timeout,
            Some(&self.pusher.tls),
        )
        .await
        {
            Ok((s, answer)) if s.is_success() => {
                let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
                v["rejected"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|k| k.as_str() == Some(t.endpoint.as_str())))
            }
            Ok((s, _)) => {
                tracing::warn!(status = s.as_u16(), "push gateway refused a notification");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "push gateway failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_push_services_are_accepted() {
        let allowed = vec![
            "fcm.googleapis.com".to_string(),
            "*.notify.windows.com".into(),
        ];
        assert!(host_allowed("fcm.googleapis.com", &allowed));
        assert!(host_allowed("FCM.googleapis.com", &allowed));
        assert!(host_allowed("wns2-par02p.notify.windows.com", &allowed));
        assert!(!host_allowed("notify.windows.com.evil.example", &allowed));
        assert!(!host_allowed("evilnotify.windows.com", &allowed));
        assert!(!host_allowed("127.0.0.1", &allowed));
    }
}
