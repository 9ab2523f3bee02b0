//! WHIP (RFC 9725) publisher and WHEP player on webrtc-rs, plus a minimal HTTP/1.1
//! client, for testing `maxd`'s `/whip/{room}` and `/whep/{room}` with an independent
//! stack and nothing but the standard exchanges.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rtc::peer_connection::configuration::RTCOfferOptions;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use webrtc::peer_connection::{PeerConnection, RTCSessionDescription};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

use crate::media;
use crate::peer::{LocalAv, Peer, spawn_receiver};
use crate::stats::{Observed, RecvStats, SendStats};

/// An HTTP response, read whole.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request (`Connection: close`) to `base_url` (`http://host:port`).
pub async fn http(base_url: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Result<HttpResponse> {
    let host = base_url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(host).await.with_context(|| format!("connect {host}"))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut raw))
        .await
        .context("HTTP response timed out")??;
    let text = String::from_utf8(raw).context("HTTP response is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("HTTP response has no header end")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("empty HTTP response")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect::<Vec<_>>();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").context("bad chunk")?;
        let n = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).context("short chunk")?);
        s = rest.get(n + 2..).unwrap_or("");
    }
}

/// A WHIP or WHEP session as the client sees it.
pub struct HttpSession {
    pub base_url: String,
    pub token: String,
    /// The `Location` of the session resource.
    pub location: String,
    pub etag: String,
    /// `X-Maxd-Participant`: the participant the session is in the room.
    pub participant_id: String,
    pub peer: Peer,
    answer: Mutex<String>,
}

impl HttpSession {
    /// `POST`s `offer` (the local description) to `path` and applies the answer.
    async fn create(base_url: &str, path: &str, token: &str, peer: Peer) -> Result<HttpSession> {
        let offer = peer.pc.create_offer(None).await.context("create offer")?;
        peer.pc.set_local_description(offer.clone()).await.context("set offer")?;
        let auth = format!("Bearer {token}");
        let resp = http(base_url, "POST", path, &[("Authorization", &auth), ("Content-Type", "application/sdp")], &offer.sdp)
            .await?;
        if resp.status != 201 {
            bail!("POST {path}: {} {}", resp.status, resp.body.trim());
        }
        let location = resp.header("location").context("201 without Location")?.to_string();
        let etag = resp.header("etag").context("201 without ETag")?.to_string();
        let participant_id = resp.header("x-maxd-participant").unwrap_or_default().to_string();
        if resp.header("content-type") != Some("application/sdp") {
            bail!("answer has content type {:?}", resp.header("content-type"));
        }
        let answer = RTCSessionDescription::answer(resp.body.clone()).context("parse answer")?;
        peer.pc.set_remote_description(answer).await.context("apply answer")?;
        Ok(HttpSession {
            base_url: base_url.to_string(),
            token: token.to_string(),
            location,
            etag,
            participant_id,
            peer,
            answer: Mutex::new(resp.body),
        })
    }

    /// `DELETE`s the session; returns the status.
    pub async fn delete(&self) -> Result<u16> {
        let auth = format!("Bearer {}", self.token);
        Ok(http(&self.base_url, "DELETE", &self.location, &[("Authorization", &auth)], "").await?.status)
    }

    /// ICE restart the RFC 9725 way: a new offer with new credentials, sent as an
    /// `application/trickle-ice-sdpfrag` PATCH with `If-Match: *`; the server's new
    /// credentials from the 200 go into the remote description.
    pub async fn ice_restart(&self) -> Result<()> {
        let pc = &self.peer.pc;
        let offer = pc.create_offer(Some(RTCOfferOptions { ice_restart: true })).await.context("restart offer")?;
        pc.set_local_description(offer.clone()).await.context("set restart offer")?;
        let line = |sdp: &str, key: &str| -> Result<String> {
            sdp.lines()
                .find_map(|l| l.trim_end().strip_prefix(key).map(str::to_string))
                .with_context(|| format!("no {key} in SDP"))
        };
        let frag = format!(
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
            line(&offer.sdp, "a=ice-ufrag:")?,
            line(&offer.sdp, "a=ice-pwd:")?
        );
        let auth = format!("Bearer {}", self.token);
        let resp = http(
            &self.base_url,
            "PATCH",
            &self.location,
            &[("Authorization", &auth), ("Content-Type", "application/trickle-ice-sdpfrag"), ("If-Match", "*")],
            &frag,
        )
        .await?;
        if resp.status != 200 {
            bail!("ICE restart PATCH: {} {}", resp.status, resp.body.trim());
        }
        let ufrag = line(&resp.body, "a=ice-ufrag:")?;
        let pwd = line(&resp.body, "a=ice-pwd:")?;
        let answer = {
            let old = self.answer.lock().expect("answer lock");
            let mut out = String::with_capacity(old.len());
            for l in old.split_inclusive('\n') {
                if l.starts_with("a=ice-ufrag:") {
                    out.push_str(&format!("a=ice-ufrag:{ufrag}\r\n"));
                } else if l.starts_with("a=ice-pwd:") {
                    out.push_str(&format!("a=ice-pwd:{pwd}\r\n"));
                } else {
                    out.push_str(l);
                }
            }
            out
        };
        pc.set_remote_description(RTCSessionDescription::answer(answer.clone()).context("parse restarted answer")?)
            .await
            .context("apply restarted answer")?;
        *self.answer.lock().expect("answer lock") = answer;
        Ok(())
    }
}

/// Publishes synthetic Opus + VP8 (with integrity records) through WHIP.
pub struct WhipPublisher {
    pub session: HttpSession,
    pub sent: Arc<Observed<SendStats>>,
    tasks: Vec<JoinHandle<()>>,
}

impl WhipPublisher {
    /// `POST /whip/{room}` and start sending. Payloads carry the hash of the participant
    /// id the server reports, so receivers can check whose media they get.
    pub async fn publish(base_url: &str, room: &str, token: &str) -> Result<WhipPublisher> {
        let (peer, _events) = Peer::new("whip").await?;
        let av = LocalAv::add_to(&peer.pc).await?;
        let session = HttpSession::create(base_url, &format!("/whip/{room}"), token, peer).await?;
        let sent = Observed::new(SendStats::default());
        let tasks = av.start(&session.peer, media::identity_hash(&session.participant_id), sent.clone()).await?;
        Ok(WhipPublisher { session, sent, tasks })
    }

    pub async fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.session.peer.pc.close().await;
    }
}

/// Receives one audio and one video transceiver through WHEP.
pub struct WhepPlayer {
    pub session: HttpSession,
    /// By `mid:<mid>` (WHEP says nothing of tracks); see `RemoteTrackStats::last_sender`.
    pub recv: Arc<RecvStats>,
    task: JoinHandle<()>,
}

impl WhepPlayer {
    /// `POST` to `path` (`/whep/{room}` or `/whep/{room}/{participant}`) with a
    /// receive-only audio and video offer.
    pub async fn play(base_url: &str, path: &str, token: &str) -> Result<WhepPlayer> {
        let (peer, events) = Peer::new("whep").await?;
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            peer.pc
                .add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() }),
                )
                .await
                .context("add receive-only transceiver")?;
        }
        let pc: Arc<dyn PeerConnection> = peer.pc.clone();
        let session = HttpSession::create(base_url, path, token, peer).await?;
        let recv: Arc<RecvStats> = Observed::new(HashMap::new());
        let task = spawn_receiver(pc, events.tracks, Arc::new(Mutex::new(HashMap::new())), recv.clone());
        Ok(WhepPlayer { session, recv, task })
    }

    pub async fn stop(&self) {
        self.task.abort();
        let _ = self.session.peer.pc.close().await;
    }
}
