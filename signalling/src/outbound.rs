//! Plain-HTTP POSTs to the URLs operators (SMS gateway) and bots (webhooks) configure.
//!
//! Built on hyper's connection API, one connection per request, rather than
//! `hyper_util`'s pooled client, which logs the hosts and addresses it connects to at
//! debug level: those are personal data here (a bot owner's server), and logs carry
//! none. Errors name what failed, never the URL.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{StatusCode, Uri};
use hyper_util::rt::TokioIo;

/// Why a POST failed. The `Display` text names no host or URL.
#[derive(Debug, thiserror::Error)]
pub enum OutError {
    #[error("not an absolute http:// URL")]
    BadUrl,
    #[error("connecting: {0}")]
    Connect(std::io::ErrorKind),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request")]
    Request,
    #[error("timed out")]
    Timeout,
}

/// Most bytes of an answer kept (the rest is read and dropped).
const MAX_ANSWER: usize = 64 * 1024;

/// POSTs `body` as JSON to `url` with extra `headers`, reads the whole answer, and
/// returns its status; all within `timeout`.
pub async fn post_json(
    url: &Uri,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
) -> Result<StatusCode, OutError> {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    post(url, &h, body, timeout).await.map(|(s, _)| s)
}

/// POSTs `body` to `url` with `headers` (content type included), and returns the
/// status and the first 64 KiB of the answer; all within `timeout`.
pub async fn post(
    url: &Uri,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), OutError> {
    tokio::time::timeout(timeout, post_inner(url, headers, body))
        .await
        .map_err(|_| OutError::Timeout)?
}

async fn post_inner(
    url: &Uri,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(StatusCode, Bytes), OutError> {
    if url.scheme_str() != Some("http") {
        return Err(OutError::BadUrl);
    }
    let host = url.host().ok_or(OutError::BadUrl)?;
    let port = url.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect(format!("{host}:{port}"))
        .await
        .map_err(|e| OutError::Connect(e.kind()))?;
    let _ = stream.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let path = url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let host_header = match url.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let mut req = hyper::Request::post(path).header(hyper::header::HOST, host_header);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(|_| OutError::Request)?;
    // Drive the connection while the request runs; it ends once `send` is dropped.
    let exchange = async move {
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut kept = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                let room = MAX_ANSWER.saturating_sub(kept.len());
                kept.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        drop(send);
        Ok::<_, OutError>((status, kept.freeze()))
    };
    let (status, _closed) = tokio::join!(exchange, conn);
    status
}
