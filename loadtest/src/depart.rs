//! The ways a participant's `/rtc` WebSocket ends (see [`crate::Departure`]). The
//! peer connections are the participant's business (`Participant::close_pcs`).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The `/rtc` WebSocket of a participant.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long each polite step may take before the client gives up on it.
const STEP: Duration = Duration::from_secs(2);

/// Sends `leave` and reads until the server's `left` (or its close, or `STEP`).
pub async fn leave(ws: &mut Ws) {
    let _ = tokio::time::timeout(STEP, async {
        if ws
            .send(Message::Text(json!({"type": "leave"}).to_string().into()))
            .await
            .is_err()
        {
            return;
        }
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) if is_left(&t) => return,
                Message::Close(_) => return,
                _ => {}
            }
        }
    })
    .await;
}

/// Sends `leave` and a close frame and is gone, waiting neither for `left` nor for the
/// server's close frame: a page that unloads, a client that quits. The caller drops the
/// socket right after.
pub async fn quit(ws: &mut Ws) {
    let _ = tokio::time::timeout(STEP, async {
        let leave = Message::Text(json!({"type": "leave"}).to_string().into());
        if ws.send(leave).await.is_ok() {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let _ = ws.close(Some(frame)).await;
        }
    })
    .await;
}

/// Closes the WebSocket with a close frame and reads until the server's close frame
/// (the close handshake) or `STEP`.
pub async fn close(ws: &mut Ws, code: CloseCode) {
    let _ = tokio::time::timeout(STEP, async {
        let frame = CloseFrame {
            code,
            reason: "".into(),
        };
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// A killed client: the socket is closed without a close frame, as the kernel closes a
/// killed process's sockets (FIN, or RST when unread data is waiting). Dropping a
/// `WebSocketStream` sends nothing; this says so where it matters.
pub fn vanish(ws: Ws) {
    drop(ws);
}

fn is_left(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .is_ok_and(|v| v["type"].as_str() == Some("left"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Error as WsError;

    /// A WebSocket server on loopback and a client connected to it.
    async fn pair() -> (
        Ws,
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/rtc", l.local_addr().unwrap());
        let (client, server) = tokio::join!(tokio_tungstenite::connect_async(url), async {
            let (s, _) = l.accept().await.unwrap();
            tokio_tungstenite::accept_async(s).await.unwrap()
        });
        (client.unwrap().0, server)
    }

    /// What the server reads last: a close frame's code, or how the socket ended.
    async fn server_sees(
        server: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    ) -> String {
        loop {
            match server.next().await {
                Some(Ok(Message::Close(f))) => {
                    return format!("close frame {}", f.map(|f| u16::from(f.code)).unwrap_or(0));
                }
                Some(Ok(Message::Text(t))) if t.contains("leave") => {
                    // The server's answer to `leave`, then its close, as maxd does.
                    let _ = server
                        .send(Message::Text(r#"{"type":"left","reason":"left"}"#.into()))
                        .await;
                    return "leave".into();
                }
                Some(Ok(_)) => {}
                Some(Err(WsError::Protocol(p))) => {
                    return format!("ended without a close frame: {p}");
                }
                Some(Err(e)) => return format!("ended without a close frame: {e}"),
                None => return "ended without a close frame".into(),
            }
        }
    }

    #[tokio::test]
    async fn vanish_sends_no_close_frame() {
        let (client, mut server) = pair().await;
        vanish(client);
        let seen = server_sees(&mut server).await;
        assert!(seen.starts_with("ended without a close frame"), "{seen}");
    }

    #[tokio::test]
    async fn close_sends_a_close_frame_going_away() {
        let (mut client, mut server) = pair().await;
        let (_, seen) = tokio::join!(close(&mut client, CloseCode::Away), async move {
            let seen = server_sees(&mut server).await;
            // Complete the handshake and drop the socket, as the server does.
            let _ = server.close(None).await;
            seen
        });
        assert_eq!(seen, "close frame 1001");
    }

    #[tokio::test]
    async fn quit_sends_leave_then_closes_without_waiting() {
        let (mut client, mut server) = pair().await;
        // The server answers nothing; the client drops its socket once `quit` returns,
        // which ends the server's reading: one that waited for `left` or for the close
        // handshake would hang here until its limit.
        let (_, seen) = tokio::join!(
            async move {
                quit(&mut client).await;
                drop(client);
            },
            async move {
                let mut seen = Vec::new();
                while let Some(Ok(m)) = server.next().await {
                    match m {
                        Message::Text(t) => seen.push(t.to_string()),
                        Message::Close(f) => seen.push(format!(
                            "close {}",
                            f.map(|f| u16::from(f.code)).unwrap_or(0)
                        )),
                        _ => {}
                    }
                }
                seen
            }
        );
        assert_eq!(seen, [r#"{"type":"leave"}"#, "close 1000"]);
    }

    #[tokio::test]
    async fn leave_sends_leave_and_waits_for_left() {
        let (mut client, mut server) = pair().await;
        let (_, seen) = tokio::join!(leave(&mut client), server_sees(&mut server));
        assert_eq!(seen, "leave");
        // Then the close handshake on the same socket.
        let (_, seen) = tokio::join!(close(&mut client, CloseCode::Normal), async move {
            let seen = server_sees(&mut server).await;
            let _ = server.close(None).await;
            seen
        });
        assert_eq!(seen, "close frame 1000");
    }
}
