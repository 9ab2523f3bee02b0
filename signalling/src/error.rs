//! Errors a client sees: a stable `code`, an HTTP status and a message that says what to do.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to a client. The `Display` text is safe to show.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid phone number: {0}")]
    InvalidPhone(String),
    #[error("phone numbers of country code +{0} cannot register here")]
    CountryNotAllowed(u16),
    #[error("VoIP numbers cannot register: use a mobile number")]
    VoipNumber,
    #[error("too many requests: retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error(
        "too many codes for this number were burnt by wrong tries: it is locked, retry in {retry_after} s"
    )]
    NumberLocked { retry_after: u64 },
    #[error("at most {max} open connections per account: close one first")]
    TooManyConnections { max: usize },
    #[error("wrong code: {remaining} tries left")]
    CodeWrong { remaining: u32 },
    #[error(
        "no valid code for this number (expired, used, or too many wrong tries): request a new one"
    )]
    CodeExpired,
    #[error("{0}")]
    Token(#[from] common::TokenError),
    #[error("refresh token is unknown, used, expired or revoked: log in again")]
    RefreshInvalid,
    #[error(
        "this refresh token was already used: the session is revoked in case the token was stolen; log in again"
    )]
    RefreshReused,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("no such endpoint: the API is described at /api/openapi.json")]
    NoRoute,
    #[error("this endpoint does not take this method: see the Allow header")]
    MethodNotAllowed,
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Another error of the HTTP layer, with its status (a 4xx other than the above).
    #[error("{1}")]
    Http(StatusCode, String),
    #[error("you are not a member of this chat")]
    NotMember,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Call(#[from] crate::calls::machine::CallError),
    #[error("you are in another call: hang up first")]
    AlreadyInCall,
    #[error("SMS could not be sent: try again later")]
    SmsUnavailable,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

impl ApiError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidPhone(_) => "invalid_phone",
            ApiError::CountryNotAllowed(_) => "country_not_allowed",
            ApiError::VoipNumber => "voip_number",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::NumberLocked { .. } => "number_locked",
            ApiError::TooManyConnections { .. } => "too_many_connections",
            ApiError::CodeWrong { .. } => "code_wrong",
            ApiError::CodeExpired => "code_expired",
            ApiError::Token(common::TokenError::Expired) => "token_expired",
            ApiError::Token(common::TokenError::Missing) => "token_missing",
            ApiError::Token(common::TokenError::NotGranted(_)) => "not_granted",
            ApiError::Token(common::TokenError::Revoked) => "session_revoked",
            ApiError::Token(_) => "token_invalid",
            ApiError::RefreshInvalid => "refresh_invalid",
            ApiError::RefreshReused => "refresh_reused",
            ApiError::NotFound(_) | ApiError::NoRoute => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Http(s, _) if s.is_server_error() => "internal",
            ApiError::Http(..) => "bad_request",
            ApiError::NotMember => "not_member",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Conflict(_) => "conflict",
            ApiError::Call(e) => e.code(),
            ApiError::AlreadyInCall => "already_in_call",
            ApiError::SmsUnavailable => "sms_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_)
            | ApiError::InvalidPhone(_)
            | ApiError::CountryNotAllowed(_)
            | ApiError::VoipNumber => StatusCode::BAD_REQUEST,
            ApiError::RateLimited { .. }
            | ApiError::NumberLocked { .. }
            | ApiError::TooManyConnections { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::CodeWrong { .. }
            | ApiError::CodeExpired
            | ApiError::RefreshInvalid
            | ApiError::RefreshReused => StatusCode::UNAUTHORIZED,
            ApiError::Token(t) => {
                StatusCode::from_u16(t.http_status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            ApiError::NotFound(_) | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Http(s, _) => *s,
            ApiError::NotMember | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) | ApiError::AlreadyInCall => StatusCode::CONFLICT,
            ApiError::Call(crate::calls::machine::CallError::NotInvited) => StatusCode::FORBIDDEN,
            ApiError::Call(_) => StatusCode::CONFLICT,
            ApiError::SmsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body: `{"error": code, "message": text, "retry_after"?: s}`.
    pub fn body(&self) -> serde_json::Value {
        if let ApiError::Internal(e) = self {
            tracing::error!(error = %format!("{e:#}"), "internal error");
        }
        let mut v = json!({ "error": self.code(), "message": self.to_string() });
        if let Some(s) = self.retry_after() {
            v["retry_after"] = json!(s);
        }
        v
    }

    /// Seconds to wait before trying again, for the errors that have one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after } | ApiError::NumberLocked { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }
}

impl ApiError {
    /// The error for a response the HTTP framework made (a rejection, a 404 or 405 of
    /// the router) with status `status` and plain text `text`.
    pub fn from_framework(status: StatusCode, text: String) -> ApiError {
        match status {
            StatusCode::NOT_FOUND => ApiError::NoRoute,
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(text),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                ApiError::BadRequest(text)
            }
            s if s.is_server_error() => {
                ApiError::Http(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
            }
            s => ApiError::Http(s, text),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status(), Json(self.body())).into_response();
        if let Some(retry_after) = self.retry_after() {
            if let Ok(v) = retry_after.to_string().parse() {
                r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
