//! The relay's wire protocol (ALPN `maxd-relay/1`), documented in `docs/relay.md`.
//!
//! Every request runs on its own bidirectional QUIC stream. Control messages are
//! frames: a 4-byte big-endian length then that many bytes of JSON. Bulk data follows
//! a frame that announces its length, raw, with no further framing.

use serde::{Deserialize, Serialize};

/// ALPN protocol name; the number is the protocol version.
pub const ALPN: &[u8] = b"maxd-relay/1";
/// Protocol version carried in `hello`.
pub const VERSION: u32 = 1;
/// Largest control frame accepted.
pub const MAX_FRAME: usize = 64 * 1024;

/// QUIC application close codes of the relay's connections.
/// The relay is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// `hello` was refused (its error frame says why) or did not come within `relay.auth_timeout`.
pub const CLOSE_UNAUTHENTICATED: u32 = 1;
/// The token's session was revoked (logout, session revoke).
pub const CLOSE_REVOKED: u32 = 2;
/// No request under way for `relay.idle_timeout`.
pub const CLOSE_IDLE: u32 = 3;

/// Client to server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// First request of a connection, on its first stream.
    Hello { version: u32, token: String },
    /// Declares an upload. The server answers `send_outboard`, `challenge` or `upload`.
    Begin {
        name: String,
        mime: String,
        size: u64,
        hash: String,
    },
    /// Answer to a `challenge`: keyed BLAKE3 of the whole content, key = the nonce.
    Prove { mac: String },
    /// Stores `len` bytes at `offset`; the bytes follow the frame. `offset` is a multiple
    /// of 16 KiB and `len` too, unless the range ends at the end of the file.
    Put { file: String, offset: u64, len: u64 },
    /// Reads `len` bytes (to the end if absent) from `offset`.
    Get {
        file: String,
        offset: u64,
        len: Option<u64>,
    },
    /// Describes a file.
    Stat { file: String },
    /// Sends the file's outboard (32 bytes per 16 KiB group).
    Outboard { file: String },
}

/// Server to client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Welcome {
        user: String,
        max_file_size: u64,
    },
    /// Send the outboard (`len` bytes) on this stream now.
    SendOutboard {
        len: u64,
    },
    /// The content is already stored: prove you have it (see `prove`).
    Challenge {
        nonce: String,
    },
    /// The upload session: the file id and the group ranges `[start, end)` to send.
    Upload {
        file: String,
        complete: bool,
        missing: Vec<(u64, u64)>,
    },
    /// A `put` was stored and verified.
    Stored {
        complete: bool,
    },
    /// `len` bytes from `offset` follow.
    Data {
        offset: u64,
        len: u64,
    },
    Stat(FileInfo),
    /// `len` bytes of outboard follow.
    OutboardData {
        len: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Description of a stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub id: String,
    pub name: String,
    pub mime: String,
    pub size: u64,
    /// BLAKE3 of the content, hex; `None` while an HTTP upload, whose hash is learnt
    /// at its end, is under way.
    pub hash: Option<String>,
    /// Complete and verified.
    pub complete: bool,
    /// Bytes stored and verified so far.
    pub stored: u64,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds after which the file is deleted.
    pub expires: u64,
}

/// Error codes; the message says what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Token missing, malformed or expired.
    Unauthorized,
    /// Token valid but without the `files` grant.
    Forbidden,
    /// The protocol version is not supported.
    Version,
    /// The request is malformed or out of range.
    BadRequest,
    /// Declared size over the limit.
    TooLarge,
    /// The user's quota would be exceeded.
    QuotaExceeded,
    /// The user has as many unfinished uploads as allowed (`relay.max_partial_uploads`).
    TooManyPartialUploads,
    /// The user's unfinished uploads would declare more bytes than allowed
    /// (`relay.max_partial_bytes`).
    PartialQuotaExceeded,
    /// The user started too many uploads in the last minute; the message says when to retry.
    RateLimited,
    /// No byte moved for `relay.stall_timeout`: the transfer was ended (what was stored
    /// is kept; resume).
    Timeout,
    /// The server's disk is full; the partial upload is kept, retry later.
    DiskFull,
    /// No such file (or it expired).
    NotFound,
    /// Data does not match the declared hash.
    HashMismatch,
    /// The proof of possession is wrong.
    ProofFailed,
    /// Something failed on the server.
    Internal,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream closed")]
    Closed,
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
}

/// One frame's bytes: the length, then the JSON body.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    Ok(buf)
}

/// The body length a frame's 4-byte header announces, refused over [`MAX_FRAME`]
/// before anything is allocated for it.
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), FrameError> {
    let buf = encode_frame(msg)?;
    send.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame.
pub async fn read_frame<T: for<'de> Deserialize<'de>>(
    recv: &mut quinn::RecvStream,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = frame_len(len)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// A 128-bit random file id, as 32 lowercase hex digits.
pub fn new_file_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Whether `s` looks like a file id (so it is safe in a path).
pub fn is_file_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a 32-byte hex hash.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}
