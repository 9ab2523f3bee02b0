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
