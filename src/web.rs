//! The browser clients (`web/`), embedded in the binary so `maxd` serves them from any
//! directory: the messenger at `/` and the room page at `/call`, and the dev-only
//! endpoints they use.
//!
//! - `GET /` (and `/index.html`): the messenger; `GET /call` (and `/call.html`): the
//!   room page for joining a call by room name. `/` with a `room`, `token` or `video`
//!   query (the room page's links from before the messenger) redirects to `/call` with
//!   the same query.
//! - The scripts and styles (`/app.js`, `/rtc.js`, `/style.css`, `/messenger.js`, ...),
//!   with an `ETag` and `Cache-Control: no-cache` (revalidated on every load, answered
//!   `304` when unchanged).
//! - `POST /dev/token` with `{"room": "...", "name": "..."}`: a room token for a fresh,
//!   unique identity. `GET /dev/info`: where the dev SMS provider writes login codes.
//!   Both registered only in dev mode (`dev = true`); otherwise `404`.
//!
//! See `docs/web.md`.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:literal) => {
        Asset {
            path: concat!("/", $path),
            content_type: $type,
            body: include_bytes!(concat!("../web/", $path)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";

const ASSETS: &[Asset] = &[
    // The messenger.
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("messenger.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("chatsocket.js", "text/javascript; charset=utf-8"),
    asset!("tus.js", "text/javascript; charset=utf-8"),
    asset!("voice.js", "text/javascript; charset=utf-8"),
    asset!("cache.js", "text/javascript; charset=utf-8"),
    asset!("sw.js", "text/javascript; charset=utf-8"),
    asset!("messenger.css", "text/css; charset=utf-8"),
    // The room page.
    asset!("call.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("rtc.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
];

/// Content-Security-Policy of the page: only its own scripts, styles and connections.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   media-src 'self' blob: mediastream:; img-src 'self' data: blob:; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'";

/// Lifetime of a dev token. The client reconnects (`resume`) with the same token, so it
/// must outlast a call.
pub const DEV_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// Longest room name and display name accepted by `/dev/token`, in characters.
pub const MAX_ROOM_LEN: usize = 64;
pub const MAX_NAME_LEN: usize = 64;

/// 64-bit FNV-1a, for the `ETag` of an embedded file.
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn serve(asset: &'static Asset, etag: HeaderValue, headers: HeaderMap) -> Response {
    let mut common = vec![
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag.clone()),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if asset.content_type == HTML {
        common.push((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ));
        common.push((
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ));
    }
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == etag.to_str().unwrap_or(""))
        });
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    resp.headers_mut().extend(common);
    resp
}

/// Query keys of the room page's links (`/?room=R&token=T`, `/?video=WxH`): `/` sends
/// such a request on to `/call`, so links from before the messenger keep working.
const ROOM_PAGE_KEYS: &[&str] = &["room", "token", "video"];

fn is_room_page_query(query: &str) -> bool {
    query
        .split('&')
        .filter_map(|kv| kv.split('=').next())
        .any(|k| ROOM_PAGE_KEYS.contains(&k))
}

/// What the dev-only `GET /dev/info` tells the messenger's login screen.
#[derive(Clone, Serialize)]
pub struct DevInfo {
    /// The file the dev SMS provider appends login codes to, when that provider is on.
    pub sms_file: Option<String>,
}

/// The routes of the web clients; `dev` adds `POST /dev/token` signed with `keys` and
/// `GET /dev/info` answering `dev_info`.
pub fn router(dev: bool, keys: common::Keys, dev_info: DevInfo) -> Router {
    let mut r = Router::new();
    for asset in ASSETS {
        let etag = HeaderValue::from_str(&format!("\"{:016x}\"", fnv1a64(asset.body)))
            .expect("hex is a valid header");
        let handler = {
            let etag = etag.clone();
            move |headers: HeaderMap| {
                let etag = etag.clone();
                async move { serve(asset, etag, headers) }
            }
        };
        if asset.path == "/index.html" {
            let root = move |RawQuery(q): RawQuery, headers: HeaderMap| {
                let etag = etag.clone();
                async move {
                    match q {
                        Some(q) if is_room_page_query(&q) => {
                            Redirect::temporary(&format!("/call?{q}")).into_response()
                        }
                        _ => serve(asset, etag, headers),
                    }
                }
            };
            r = r.route("/", get(root));
        }
        if asset.path == "/call.html" {
            r = r.route("/call", get(handler.clone()));
        }
        r = r.route(asset.path, get(handler));
    }
    if dev {
        r = r.route("/dev/token", post(dev_token).with_state(keys));
        r = r.route(
            "/dev/info",
            get(move || {
                let info = dev_info.clone();
                async move { ([(header::CACHE_CONTROL, "no-store")], axum::Json(info)) }
            }),
        );
    }
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    room: String,
    name: String,
}

#[derive(Serialize)]
struct TokenResponse {
    token: String,
    identity: String,
    room: String,
    name: String,
    expires_in_secs: u64,
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// Room names: 1..=64 of ASCII letters, digits, `-`, `_`, `.`.
pub fn check_room(room: &str) -> Result<(), String> {
    if room.is_empty() {
        return Err("room is empty".into());
    }
    if room.len() > MAX_ROOM_LEN {
        return Err(format!("room is longer than {MAX_ROOM_LEN} characters"));
    }
    if !room
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("room may contain only letters a-z A-Z, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

/// Display names: 1..=64 characters after trimming, no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!("name is longer than {MAX_NAME_LEN} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("name may not contain control characters".into());
    }
    Ok(())
}

async fn dev_token(State(keys): State<common::Keys>, body: Bytes) -> Response {
    let req: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!(
                "expected JSON {{\"room\": \"...\", \"name\": \"...\"}}: {e}"
            ));
        }
    };
    let room = req.room.trim();
    let name = req.name.trim();
    if let Err(e) = check_room(room)
        .map_err(|e| format!("bad room: {e}"))
        .and_then(|()| check_name(name).map_err(|e| format!("bad name: {e}")))
    {
        return bad_request(e);
    }
    let identity = {
        let b: [u8; 8] = rand::random();
        format!(
            "web-{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )
    };
    let grants = common::Grants {
        publish: true,
        subscribe: true,
        ..Default::default()
    };
    let token = keys.mint_for(&identity, Some(name), Some(room), grants, DEV_TOKEN_TTL);
    // Neither the room, the name nor the token reach the logs.
    tracing::debug!("dev token issued");
    let resp = TokenResponse {
        token,
        identity,
        room: room.to_string(),
        name: name.to_string(),
        expires_in_secs: DEV_TOKEN_TTL.as_secs(),
    };
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        serde_json::to_string(&resp).expect("serializes"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_and_name_rules() {
        assert!(check_room("demo-1_a.b").is_ok());
        assert!(check_room("").is_err());
        assert!(check_room("a b").is_err());
        assert!(check_room("комната").is_err());
        assert!(check_room(&"a".repeat(65)).is_err());
        assert!(check_name("Алиса Б.").is_ok());
        assert!(check_name(&"я".repeat(64)).is_ok());
        assert!(check_name(&"я".repeat(65)).is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn old_room_links_go_to_the_room_page() {
        assert!(is_room_page_query("room=demo&token=x"));
        assert!(is_room_page_query("video=320x180"));
        assert!(is_room_page_query("token"));
        assert!(!is_room_page_query(""));
        assert!(!is_room_page_query("chat=5"));
        assert!(!is_room_page_query("roomy=1"));
    }

    #[test]
    fn every_asset_is_embedded() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.path);
        }
    }
}
