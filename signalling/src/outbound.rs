//! HTTP POSTs to the URLs operators (SMS gateway, push gateway) and bots (webhooks)
//! configure: plain `http://`, and `https://` where the caller passes a [`Tls`] (push,
//! whose services are on HTTPS).
//!
//! Built on hyper's connection API, one connection per request, rather than
//! `hyper_util`'s pooled client, which logs the hosts and addresses it connects to at
//! debug level: those are personal data here (a bot owner's server), and logs carry
//! none. Errors name what failed, never the URL.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{StatusCode, Uri};
use hyper_util::rt::TokioIo;

/// Why a POST failed. The `Display` text names no host or URL.
#[derive(Debug, thiserror::Error)]
pub enum OutError {
    #[error("not an absolute http:// (or, where allowed, https://) URL")]
    BadUrl,
    #[error("TLS: {0}")]
    Tls(std::io::ErrorKind),
    #[error("connecting: {0}")]
    Connect(std::io::ErrorKind),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request")]
    Request,
    #[error("timed out")]
    Timeout,
}

/// Client TLS for `https://` URLs: Mozilla's root certificates (`webpki-roots`) and
/// any an operator adds (a private gateway's CA).
#[derive(Clone)]
pub struct Tls(tokio_rustls::TlsConnector);

impl Tls {
    /// Trusts Mozilla's roots and the certificates in the PEM file `extra_roots`, if any.
    pub fn new(extra_roots: Option<&std::path::Path>) -> anyhow::Result<Tls> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = extra_roots {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                anyhow::anyhow!("reading CA certificates from {}: {e}", path.display())
            })?;
            for c in certs {
                let c =
                    c.map_err(|e| anyhow::anyhow!("a CA certificate in {}: {e}", path.display()))?;
                roots.add(c)?;
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls(tokio_rustls::TlsConnector::from(Arc::new(cfg))))
    }
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
    post(url, &h, body, timeout, None).await.map(|(s, _)| s)
}

/// POSTs `body` to `url` with `headers` (content type included), and returns the
/// status and the first 64 KiB of the answer; all within `timeout`. `https://` URLs
/// need `tls`.
pub async fn post(
    url: &Uri,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
    tls: Option<&Tls>,
) -> Result<(StatusCode, Bytes), OutError> {
    tokio::time::timeout(timeout, post_inner(url, headers, body, tls))
        .await
        .map_err(|_| OutError::Timeout)?
}

async fn post_inner(
    url: &Uri,
    headers: &[(&str, &str)],
    body: Bytes,
    tls: Option<&Tls>,
) -> Result<(StatusCode, Bytes), OutError> {
    let tls = match (url.scheme_str(), tls) {
        (Some("http"), _) => None,
        (Some("https"), Some(t)) => Some(t),
        _ => return Err(OutError::BadUrl),
    };
    let host = url.host().ok_or(OutError::BadUrl)?;
    let port = url
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let stream = tokio::net::TcpStream::connect(format!("{host}:{port}"))
        .await
        .map_err(|e| OutError::Connect(e.kind()))?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => exchange(TokioIo::new(stream), url, host, headers, body).await,
        Some(t) => {
            let name = rustls::pki_types::ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            )
            .map_err(|_| OutError::BadUrl)?;
            let stream =
                t.0.connect(name, stream)
                    .await
                    .map_err(|e| OutError::Tls(e.kind()))?;
            exchange(TokioIo::new(stream), url, host, headers, body).await
        }
    }
}

/// One request and its answer on a connection.
async fn exchange<IO>(
    io: IO,
    url: &Uri,
    host: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(StatusCode, Bytes), OutError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
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
