//! The WebRTC plumbing without a server: two webrtc-rs peer connections on 127.0.0.1,
//! negotiated in-process, one publishing the synthetic audio+video to the other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use testkit::media::identity_hash;
use testkit::peer::{LocalAv, MidMap, Peer, spawn_receiver};
use testkit::proto::MidTrack;
use testkit::stats::Observed;
use testkit::{RemoteTrackStats, SendStats, TrackKind};
use tokio::sync::mpsc;
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Applies `from`'s candidates to `to` (after both descriptions are set).
fn forward_candidates(
    mut from: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    to: Arc<dyn PeerConnection>,
) {
    tokio::spawn(async move {
        while let Some(c) = from.recv().await {
            to.add_ice_candidate(c).await.expect("add candidate");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_av_flows_between_two_webrtc_rs_peers() -> Result<()> {
    let (a, a_events) = Peer::new("a").await?;
    let (b, b_events) = Peer::new("b").await?;

    let av = LocalAv::add_to(&a.pc).await?;
    let offer = a.pc.create_offer(None).await?;
    a.pc.set_local_description(offer.clone()).await?;
    let (audio_mid, video_mid) = av.mids().await?;
    assert_ne!(audio_mid, video_mid);
    assert!(
        offer.sdp.contains("VP8") && offer.sdp.contains("opus"),
        "{}",
        offer.sdp
    );
    assert!(
        offer.sdp.contains(testkit::peer::AUDIO_LEVEL_URI),
        "{}",
        offer.sdp
    );

    b.pc.set_remote_description(offer).await?;
    let answer = b.pc.create_answer(None).await?;
    b.pc.set_local_description(answer.clone()).await?;
    a.pc.set_remote_description(answer).await?;
    forward_candidates(a_events.candidates, b.pc.clone());
    forward_candidates(b_events.candidates, a.pc.clone());

    let mids: MidMap = Default::default();
    for (mid, track) in [(&audio_mid, "TR_a"), (&video_mid, "TR_v")] {
        let m = MidTrack {
            mid: mid.clone(),
            track_id: track.into(),
            participant_id: "PA_1".into(),
        };
        mids.lock().unwrap().insert(mid.clone(), m);
    }
    let recv = Observed::new(HashMap::<String, RemoteTrackStats>::new());
    let _receiver = spawn_receiver(b.pc.clone(), b_events.tracks, mids, recv.clone());
    let sent = Observed::new(SendStats::default());
    let _senders = av.start(&a, identity_hash("PA_1"), sent.clone()).await?;

    a.wait_connected(TIMEOUT).await.context("a")?;
    b.wait_connected(TIMEOUT).await.context("b")?;

    // ~1 s of media: 50 audio packets, 30 video frames (one of them a keyframe).
    let got = recv
        .wait(
            TIMEOUT,
            "audio and video",
            |m| {
                let a = m.get("TR_a").filter(|s| s.packets >= 40)?;
                let v = m
                    .get("TR_v")
                    .filter(|s| s.frames >= 25 && s.keyframes >= 1)?;
                Some((a.clone(), v.clone()))
            },
            |m| format!("{m:?}"),
        )
        .await?;
    let (audio, video) = got;
    for s in [&audio, &video] {
        assert_eq!(s.participant_id, "PA_1");
        assert_eq!(s.bad_payloads, 0, "{s:?}");
        assert_eq!(s.foreign_payloads, 0, "{s:?}");
        assert!(s.first_packet_at.is_some());
    }
    assert_eq!(audio.kind, TrackKind::Audio);
    assert_eq!(audio.mid, audio_mid);
    assert_eq!(audio.frames, audio.packets);
    assert_eq!(
        audio.packets_with_extensions, audio.packets,
        "audio level extension on every packet"
    );
    assert!(audio.bytes >= audio.packets * 70, "{audio:?}");
    assert_eq!(video.kind, TrackKind::Video);
    assert_eq!(video.mid, video_mid);
    assert_eq!(video.frames, video.packets, "one packet per frame");
    assert!(video.bytes >= video.packets * 400, "{video:?}");

    // A PLI from the receiver reaches the sender, which answers with a keyframe.
    let receivers = b.pc.get_receivers().await;
    let mut video_track = None;
    for r in &receivers {
        if r.track().kind().await == rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video {
            video_track = Some(r.track().clone());
        }
    }
    let video_track = video_track.context("no video receiver")?;
    let media_ssrc = *video_track.ssrcs().await.first().context("video ssrc")?;
    let keyframes_before = sent.read(|s| s.keyframes);
    video_track
        .write_rtcp(vec![Box::new(PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc,
        })])
        .await?;
    sent.wait(
        TIMEOUT,
        "the PLI and a keyframe after it",
        |s| (s.keyframe_requests >= 1 && s.keyframes > keyframes_before).then_some(()),
        |s| format!("{s:?}"),
    )
    .await?;
    assert_eq!(sent.read(|s| s.write_errors), 0);

    a.pc.close().await?;
    b.pc.close().await?;
    Ok(())
}

/// One offer/answer round, `offerer` offering.
async fn negotiate(offerer: &Peer, answerer: &Peer) -> Result<()> {
    let offer = offerer.pc.create_offer(None).await?;
    offerer.pc.set_local_description(offer.clone()).await?;
    answerer.pc.set_remote_description(offer).await?;
    let answer = answerer.pc.create_answer(None).await?;
    answerer.pc.set_local_description(answer.clone()).await?;
    offerer.pc.set_remote_description(answer).await?;
    Ok(())
}

/// Like the SFU's subscriber connection: tracks added by a later renegotiation are
/// received too, each counted under its own mid mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_added_by_renegotiation_are_received() -> Result<()> {
    let (a, a_events) = Peer::new("a").await?;
    let (b, b_events) = Peer::new("b").await?;
    let mids: MidMap = Default::default();
    let recv = Observed::new(HashMap::<String, RemoteTrackStats>::new());
    let _receiver = spawn_receiver(b.pc.clone(), b_events.tracks, mids.clone(), recv.clone());
    let sent = Observed::new(SendStats::default());
    let mut tasks = Vec::new();

    let first = LocalAv::add_to(&a.pc).await?;
    negotiate(&a, &b).await?;
    forward_candidates(a_events.candidates, b.pc.clone());
    forward_candidates(b_events.candidates, a.pc.clone());
    let map = |mids: &MidMap, mid: String, participant: &str, track: &str| {
        let m = MidTrack {
            mid: mid.clone(),
            track_id: track.into(),
            participant_id: participant.into(),
        };
        mids.lock().unwrap().insert(mid, m);
    };
    let (am, vm) = first.mids().await?;
    map(&mids, am, "PA_1", "TR_1a");
    map(&mids, vm, "PA_1", "TR_1v");
    tasks.extend(first.start(&a, identity_hash("PA_1"), sent.clone()).await?);
    a.wait_connected(TIMEOUT).await?;

    // A second participant's tracks arrive on new transceivers.
    let second = LocalAv::add_to(&a.pc).await?;
    negotiate(&a, &b).await?;
    let (am, vm) = second.mids().await?;
    map(&mids, am, "PA_2", "TR_2a");
    map(&mids, vm, "PA_2", "TR_2v");
    tasks.extend(
        second
            .start(&a, identity_hash("PA_2"), sent.clone())
            .await?,
    );

    let all = recv
        .wait(
            TIMEOUT,
            "four tracks",
            |m| {
                let ok = ["TR_1a", "TR_1v", "TR_2a", "TR_2v"]
                    .iter()
                    .all(|t| m.get(*t).is_some_and(|s| s.packets >= 10));
                ok.then(|| m.clone())
            },
            |m| format!("{m:?}"),
        )
        .await?;
    for s in all.values() {
        assert_eq!(s.bad_payloads, 0, "{s:?}");
        assert_eq!(s.foreign_payloads, 0, "{s:?}");
    }
    assert_eq!(all["TR_2v"].participant_id, "PA_2");
    assert_eq!(all["TR_2v"].kind, TrackKind::Video);
    tasks.iter().for_each(|t| t.abort());
    a.pc.close().await?;
    b.pc.close().await?;
    Ok(())
}
