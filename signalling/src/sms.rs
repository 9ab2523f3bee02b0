//! SMS delivery behind a trait: a dev provider that appends codes to a file in the data
//! directory, and an HTTP provider that posts to a gateway.

use std::io::Write as _;
use std::path::PathBuf;

/// File in the data directory where the dev provider writes codes, one JSON line each.
pub const DEV_SMS_FILE: &str = "sms-codes.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    #[error("writing the dev SMS file: {0}")]
    Io(#[from] std::io::Error),
    #[error("SMS gateway: {0}")]
    Gateway(String),
}

/// One SMS to send. `code` is there so the dev provider can write it in a field.
pub struct Sms<'a> {
    pub to: &'a str,
    pub text: &'a str,
    pub code: &'a str,
}

pub trait SmsSender: Send + Sync {
    fn send<'a>(
        &'a self,
        sms: Sms<'a>,
    ) -> futures_util::future::BoxFuture<'a, Result<(), SmsError>>;
}

/// Dev mode only: appends `{"to","code","text"}` lines to `<data_dir>/sms-codes.jsonl`.
pub struct DevFileSms {
    pub path: PathBuf,
    lock: parking_lot::Mutex<()>,
}

impl DevFileSms {
    pub fn new(path: PathBuf) -> Self {
        DevFileSms {
            path,
            lock: parking_lot::Mutex::new(()),
        }
    }
}

impl SmsSender for DevFileSms {
    fn send<'a>(
        &'a self,
        sms: Sms<'a>,
    ) -> futures_util::future::BoxFuture<'a, Result<(), SmsError>> {
        Box::pin(async move {
            let line =
                serde_json::json!({ "to": sms.to, "code": sms.code, "text": sms.text }).to_string();
            let _g = self.lock.lock();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            writeln!(f, "{line}")?;
            Ok(())
        })
    }
}

/// Posts `{"to": "+7...", "text": "..."}` to the gateway; any 2xx is success.
pub struct HttpSms {
    url: hyper::Uri,
    auth: String,
}

impl HttpSms {
    pub fn new(url: &str, auth: &str) -> anyhow::Result<Self> {
        let url: hyper::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("signalling.sms_gateway_url: {e}"))?;
        if url.scheme_str() != Some("http") {
            anyhow::bail!(
                "signalling.sms_gateway_url must be an http:// URL (put TLS in a local proxy)"
            );
        }
        Ok(HttpSms {
            url,
            auth: auth.to_string(),
        })
    }
}

impl SmsSender for HttpSms {
    fn send<'a>(
        &'a self,
        sms: Sms<'a>,
    ) -> futures_util::future::BoxFuture<'a, Result<(), SmsError>> {
        Box::pin(async move {
            let body = serde_json::json!({ "to": sms.to, "text": sms.text }).to_string();
            let auth = [("authorization", self.auth.as_str())];
            let headers = if self.auth.is_empty() {
                &[][..]
            } else {
                &auth[..]
            };
            let status = crate::outbound::post_json(
                &self.url,
                headers,
                bytes::Bytes::from(body),
                std::time::Duration::from_secs(10),
            )
            .await
            .map_err(|e| SmsError::Gateway(e.to_string()))?;
            if !status.is_success() {
                return Err(SmsError::Gateway(format!("answered {status}")));
            }
            Ok(())
        })
    }
}

/// The text of a login SMS: a warning, and the domain-bound last line for autofill.
pub fn login_text(code: &str, domain: &str) -> String {
    format!(
        "Your maxd login code: {code}\nNever tell this code to anyone, including support.\n\n@{domain} #{code}"
    )
}
