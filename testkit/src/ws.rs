//! The `/rtc` WebSocket: URL building and connecting.

use anyhow::{Context, Result, anyhow};
use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(crate) type WsSink = SplitSink<Ws, Message>;
pub(crate) type WsStream = SplitStream<Ws>;

/// `ws://HOST:PORT/rtc?access_token=TOKEN` from `http://HOST:PORT` (or `ws://`, `https://`,
/// `wss://`; a trailing slash is fine).
pub fn rtc_url(base_url: &str, token: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        format!("ws://{base}")
    };
    format!("{base}/rtc?access_token={}", encode_query(token))
}

fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Opens the WebSocket, with the HTTP status in the error if the upgrade is refused.
pub(crate) async fn connect(base_url: &str, token: &str) -> Result<(WsSink, WsStream)> {
    let url = rtc_url(base_url, token);
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok((ws, _response)) => Ok(ws.split()),
        Err(tungstenite::Error::Http(response)) => Err(anyhow!(
            "WebSocket upgrade of {} refused: HTTP {}",
            redact(&url),
            response.status()
        )),
        Err(e) => Err(e).with_context(|| format!("connect WebSocket {}", redact(&url))),
    }
}

/// The HTTP status of a `/rtc` upgrade attempt: 101 if it succeeded (the socket is then
/// closed), else the refusal's status (401, 403, ...).
pub async fn upgrade_status(base_url: &str, token: &str) -> Result<u16> {
    let url = rtc_url(base_url, token);
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok((mut ws, response)) => {
            let _ = ws.close(None).await;
            Ok(response.status().as_u16())
        }
        Err(tungstenite::Error::Http(response)) => Ok(response.status().as_u16()),
        Err(e) => Err(e).with_context(|| format!("connect WebSocket {}", redact(&url))),
    }
}

fn redact(url: &str) -> String {
    match url.find("access_token=") {
        Some(i) => format!("{}access_token=…", &url[..i]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            rtc_url("http://127.0.0.1:8080/", "a.b-c_d"),
            "ws://127.0.0.1:8080/rtc?access_token=a.b-c_d"
        );
        assert_eq!(
            rtc_url("ws://h:1", "x+y"),
            "ws://h:1/rtc?access_token=x%2By"
        );
        assert_eq!(
            rtc_url("127.0.0.1:9", "t"),
            "ws://127.0.0.1:9/rtc?access_token=t"
        );
    }
}
