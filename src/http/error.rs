//! The one error type that reaches a client, and the one place every module's own error is
//! mapped to it: `limits::Refusal`, `options::ParseError`, `auth::AuthError`,
//! `catalog::CatalogError`, `render::RenderError`, `audit::AuditError`,
//! `workers::WorkerError`, `storage::StorageError` and `image::ImageError` (the `From` impls
//! below). Modules below `http` never build this type.
//!
//! Every failure a client can see has a stable machine `code`, an HTTP status, a public message
//! and a `category` (also a metric label). Internal detail (S3 error bodies, file paths, Redis
//! messages) is carried for the log only and never rendered into a response: see
//! [`Error::public_message`].

use http::StatusCode;

use crate::audit::AuditError;
use crate::auth::AuthError;
use crate::catalog::CatalogError;
use crate::image::ImageError;
use crate::limits::Refusal;
use crate::options::ParseError;
use crate::render::RenderError;
use crate::storage::StorageError;
use crate::workers::WorkerError;

/// Coarse error families, used as a low-cardinality metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Client,
    Auth,
    NotFound,
    Limit,
    Overload,
    Upstream,
    Internal,
    /// Refused by the IP blocklist (apart from `auth`: a blocked scanner is not an auth spike).
    Blocked,
}

/// Everything that can go wrong while serving a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("invalid signature")]
    InvalidSignature,
    #[error("url expired")]
    UrlExpired,
    #[error("unknown option `{0}`")]
    UnknownOption(String),
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("invalid source: {0}")]
    InvalidSource(String),
    #[error("unsupported output format `{0}`")]
    UnsupportedFormat(String),
    #[error("missing bearer token")]
    MissingToken,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    TokenExpired,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("insufficient scope: {0}")]
    InsufficientScope(&'static str),
    #[error("origin not allowed")]
    CorsForbidden,
    /// The client address is on the IP blocklist.
    #[error("blocked")]
    Blocked,
    #[error("at most {limit} API keys per user")]
    TooManyApiKeys { limit: u64 },
    #[error("an export of this account is already running")]
    ExportInProgress,
    /// The state refuses the change (the last admin of a team, a full collection).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid field: {0}")]
    InvalidField(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("payload larger than {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("image has {width}x{height} pixels, more than the limit of {limit}")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("image is {width}x{height}; no side may be longer than {limit} pixels")]
    DimensionTooLarge { width: u32, height: u32, limit: u32 },
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// A stored object of the image is damaged (unparseable metadata, an original that is not
    /// a regular file): the operator's problem, reported with a stable code (`pixgate fsck`).
    #[error("stored object damaged: {0}")]
    StorageCorrupt(String),
    /// An in-place original (`pixgate import --in-place`) is gone from its bucket.
    #[error("the original this image references is gone")]
    SourceGone,
    /// An in-place original was replaced after its import: never decoded unvalidated.
    #[error("the original this image references changed since it was imported")]
    SourceChanged,
    #[error("image has more than {limit} animation frames")]
    TooManyFrames { limit: u64 },
    /// The encoded result passed `limits.max_result_bytes` (an animation, mostly).
    #[error("the result is over the limit of {limit} bytes")]
    ResultTooManyBytes { limit: u64 },
    #[error("requested result of {width}x{height} pixels is over the limit of {limit}")]
    ResultTooLarge { width: u32, height: u32, limit: u64 },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("server overloaded")]
    Overloaded,
    #[error("request timed out")]
    Timeout,
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    #[error("{} quota exceeded: {} per {} s; retry in {} s", .0.policy.kind.name(), .0.policy.limit, .0.policy.window_ms / 1000, .0.retry_after_secs())]
    QuotaExceeded(Box<crate::limits::Status>),
    #[error("rate limited: {} {} per {} s; retry in {} s", .0.policy.limit, .0.policy.kind.name(), .0.policy.window_ms / 1000, .0.retry_after_secs())]
    RateLimited(Box<crate::limits::Status>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidSignature
            | Error::Forbidden(_)
            | Error::InsufficientScope(_)
            | Error::CorsForbidden
            | Error::Blocked => StatusCode::FORBIDDEN,
            Error::TooManyApiKeys { .. }
            | Error::ExportInProgress
            | Error::SourceChanged
            | Error::Conflict(_) => StatusCode::CONFLICT,
            Error::UrlExpired | Error::SourceGone => StatusCode::GONE,
            Error::UnknownOption(_)
            | Error::InvalidOption(_)
            | Error::InvalidSource(_)
            | Error::UnsupportedFormat(_)
            | Error::ResultTooLarge { .. }
            | Error::InvalidField(_)
            | Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::MissingToken | Error::InvalidToken(_) | Error::TokenExpired => {
                StatusCode::UNAUTHORIZED
            }
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::TooManyPixels { .. }
            | Error::DimensionTooLarge { .. }
            | Error::TooManyFrames { .. }
            | Error::ResultTooManyBytes { .. }
            | Error::InvalidImage(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Overloaded | Error::Timeout | Error::StorageUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::QuotaExceeded(_) | Error::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Internal(_) | Error::StorageCorrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code. Clients and tests match on these; never rename one.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidSignature => "invalid_signature",
            Error::UrlExpired => "url_expired",
            Error::UnknownOption(_) => "unknown_option",
            Error::InvalidOption(_) => "invalid_option",
            Error::InvalidSource(_) => "invalid_source",
            Error::UnsupportedFormat(_) => "unsupported_format",
            Error::MissingToken => "missing_token",
            Error::InvalidToken(_) => "invalid_token",
            Error::TokenExpired => "token_expired",
            Error::Forbidden(_) => "forbidden",
            Error::InsufficientScope(_) => "insufficient_scope",
            Error::CorsForbidden => "cors_origin_not_allowed",
            Error::Blocked => "blocked",
            Error::TooManyApiKeys { .. } => "too_many_api_keys",
            Error::ExportInProgress => "export_in_progress",
            Error::Conflict(_) => "conflict",
            Error::InvalidField(_) => "invalid_field",
            Error::NotFound => "not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::TooManyPixels { .. } => "too_many_pixels",
            Error::DimensionTooLarge { .. } => "dimension_too_large",
            Error::StorageCorrupt(_) => "storage_corrupt",
            Error::SourceGone => "source_gone",
            Error::SourceChanged => "source_changed",
            Error::TooManyFrames { .. } => "too_many_frames",
            Error::ResultTooManyBytes { .. } => "result_too_many_bytes",
            Error::InvalidImage(_) => "invalid_image",
            Error::ResultTooLarge { .. } => "result_too_large",
            Error::BadRequest(_) => "bad_request",
            Error::Overloaded => "overloaded",
            Error::Timeout => "timeout",
            Error::StorageUnavailable(_) => "storage_unavailable",
            Error::QuotaExceeded(_) => "quota_exceeded",
            Error::RateLimited(_) => "rate_limited",
            Error::Internal(_) => "internal",
        }
    }

    /// The category, used as a metric label.
    pub fn category(&self) -> Category {
        match self {
            Error::MissingToken
            | Error::InvalidToken(_)
            | Error::TokenExpired
            | Error::InvalidSignature
            | Error::Forbidden(_)
            | Error::InsufficientScope(_)
            | Error::CorsForbidden => Category::Auth,
            Error::NotFound => Category::NotFound,
            Error::Blocked => Category::Blocked,
            Error::PayloadTooLarge { .. }
            | Error::TooManyPixels { .. }
            | Error::DimensionTooLarge { .. }
            | Error::TooManyFrames { .. }
            | Error::ResultTooManyBytes { .. }
            | Error::ResultTooLarge { .. }
            | Error::TooManyApiKeys { .. }
            | Error::ExportInProgress
            | Error::QuotaExceeded(_)
            | Error::RateLimited(_) => Category::Limit,
            Error::Overloaded | Error::Timeout => Category::Overload,
            Error::StorageUnavailable(_) | Error::SourceGone | Error::SourceChanged => {
                Category::Upstream
            }
            Error::Internal(_) | Error::StorageCorrupt(_) => Category::Internal,
            _ => Category::Client,
        }
    }

    /// The message sent to the client. Client errors describe the client's own input;
    /// server-side errors say nothing about internals.
    pub fn public_message(&self) -> String {
        match self {
            Error::StorageUnavailable(_) => "storage temporarily unavailable".to_owned(),
            Error::Internal(_) => "internal server error".to_owned(),
            Error::StorageCorrupt(_) => "a stored object of this image is damaged".to_owned(),
            Error::InvalidToken(_) => "the access token is invalid".to_owned(),
            Error::InvalidImage(_) => "the image could not be decoded".to_owned(),
            other => other.to_string(),
        }
    }
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Client => "client",
            Category::Auth => "auth",
            Category::NotFound => "not_found",
            Category::Limit => "limit",
            Category::Overload => "overload",
            Category::Upstream => "upstream",
            Category::Internal => "internal",
            Category::Blocked => "blocked",
        }
    }
}

impl From<ParseError> for Error {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::UnknownOption(o) => Error::UnknownOption(o),
            ParseError::InvalidOption(m) => Error::InvalidOption(m),
            ParseError::InvalidSource(m) => Error::InvalidSource(m),
            ParseError::UnsupportedFormat(f) => Error::UnsupportedFormat(f),
        }
    }
}

impl From<crate::access::AccessError> for Error {
    fn from(e: crate::access::AccessError) -> Self {
        use crate::access::AccessError as A;
        match e {
            A::NotFound => Error::NotFound,
            A::Forbidden(m) => Error::Forbidden(m),
            A::InvalidField(m) => Error::InvalidField(m),
            A::Conflict(m) => Error::Conflict(m),
            A::Storage(e) => Error::from(e),
            A::Corrupt(m) => Error::StorageCorrupt(m),
            A::Internal(m) => Error::Internal(m),
        }
    }
}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::MissingToken => Error::MissingToken,
            AuthError::InvalidToken(m) => Error::InvalidToken(m),
            AuthError::TokenExpired => Error::TokenExpired,
            AuthError::Forbidden(a) => Error::Forbidden(a),
            AuthError::InsufficientScope(a) => Error::InsufficientScope(a),
            AuthError::TooManyApiKeys { limit } => Error::TooManyApiKeys { limit },
            AuthError::InvalidField(m) => Error::InvalidField(m),
            AuthError::Storage(e) => Error::from(e),
            AuthError::Corrupt(m) => Error::StorageCorrupt(m),
            AuthError::Internal(m) => Error::Internal(m),
        }
    }
}

impl From<CatalogError> for Error {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::NotFound => Error::NotFound,
            CatalogError::InvalidField(m) => Error::InvalidField(m),
            CatalogError::Corrupt(m) => Error::StorageCorrupt(m),
            CatalogError::Storage(e) => Error::from(e),
            CatalogError::Internal(m) => Error::Internal(m),
            CatalogError::SourceGone => Error::SourceGone,
            CatalogError::SourceChanged => Error::SourceChanged,
        }
    }
}

impl From<RenderError> for Error {
    fn from(e: RenderError) -> Self {
        match e {
            RenderError::NotFound => Error::NotFound,
            // Handled by the transform route (negotiated again); anywhere else, try later.
            RenderError::Overloaded | RenderError::AvifBusy => Error::Overloaded,
            RenderError::Refused(r) => Error::from(r),
            RenderError::Catalog(e) => Error::from(e),
            RenderError::Image(e) => Error::from(e),
            RenderError::Storage(e) => Error::from(e),
            RenderError::Internal(m) => Error::Internal(m),
        }
    }
}

impl From<AuditError> for Error {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::InvalidField(m) => Error::InvalidField(m),
            AuditError::Storage(e) => Error::from(e),
            AuditError::Internal(m) => Error::Internal(m),
        }
    }
}

impl From<WorkerError> for Error {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::Overloaded => Error::Overloaded,
            WorkerError::Failed(m) => Error::Internal(m),
        }
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Quota(status) => Error::QuotaExceeded(status),
            Refusal::Rate(status) => Error::RateLimited(status),
            Refusal::Busy => Error::Overloaded,
            Refusal::Unavailable(msg) => Error::StorageUnavailable(msg),
        }
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => Error::NotFound,
            // A stored object larger than the read cap is an operator problem, not the client's.
            StorageError::TooLarge { limit } => {
                Error::StorageCorrupt(format!("stored object exceeds read cap of {limit} bytes"))
            }
            StorageError::Timeout => Error::StorageUnavailable("storage timed out".to_owned()),
            StorageError::Backend(msg) => Error::StorageUnavailable(msg),
            StorageError::InvalidKey(msg) => Error::Internal(format!("invalid object key: {msg}")),
            StorageError::NotAFile => {
                Error::StorageCorrupt("the stored object is not a regular file".to_owned())
            }
        }
    }
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::UnknownFormat => Error::UnsupportedMediaType(
                "not a JPEG, PNG, WebP, GIF, BMP, ICO, TIFF, JPEG XL, AVIF, HEIC or SVG image"
                    .to_owned(),
            ),
            ImageError::TooManyPixels {
                width,
                height,
                limit,
            } => Error::TooManyPixels {
                width,
                height,
                limit,
            },
            ImageError::ResultTooLarge {
                width,
                height,
                limit,
            } => Error::ResultTooLarge {
                width,
                height,
                limit,
            },
            ImageError::DimensionTooLarge {
                width,
                height,
                limit,
            } => Error::DimensionTooLarge {
                width,
                height,
                limit,
            },
            ImageError::TooManyFrames { limit } => Error::TooManyFrames { limit },
            ImageError::OutputTooLarge { limit } => Error::ResultTooManyBytes { limit },
            ImageError::Corrupt(msg) => Error::InvalidImage(msg),
            ImageError::Encode(msg) => Error::Internal(format!("encode failed: {msg}")),
            ImageError::Unsupported(msg) => Error::InvalidOption(msg),
            ImageError::Unavailable(msg) => Error::Internal(format!("decoder unavailable: {msg}")),
        }
    }
}

/// For unit tests of modules with errors of their own: the stable code the HTTP layer answers
/// an error with (`e.code()`).
#[cfg(test)]
pub trait CodeOf {
    fn code(&self) -> &'static str;
}

#[cfg(test)]
impl<E: Clone + Into<Error>> CodeOf for E {
    fn code(&self) -> &'static str {
        self.clone().into().code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_never_reach_the_public_message() {
        let e = Error::StorageUnavailable("s3://secret-bucket/path: AccessDenied".into());
        assert!(!e.public_message().contains("secret"));
        let e = Error::Internal("/var/lib/pixgate/x: permission denied".into());
        assert!(!e.public_message().contains("/var"));
    }

    #[test]
    fn statuses_and_codes_are_stable() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (Error::InvalidSignature, 403, "invalid_signature"),
            (Error::UrlExpired, 410, "url_expired"),
            (Error::UnknownOption("x".into()), 400, "unknown_option"),
            (Error::MissingToken, 401, "missing_token"),
            (Error::InsufficientScope("x"), 403, "insufficient_scope"),
            (Error::TooManyApiKeys { limit: 1 }, 409, "too_many_api_keys"),
            (Error::ExportInProgress, 409, "export_in_progress"),
            (Error::InvalidField("x".into()), 400, "invalid_field"),
            (Error::CorsForbidden, 403, "cors_origin_not_allowed"),
            (Error::TokenExpired, 401, "token_expired"),
            (Error::NotFound, 404, "not_found"),
            // The decoder sandbox did not start: the server's fault, not the source's.
            (
                ImageError::Unavailable("no seccomp".into()).into(),
                500,
                "internal",
            ),
            (
                ImageError::Corrupt("child crashed".into()).into(),
                422,
                "invalid_image",
            ),
            (
                Error::PayloadTooLarge { limit: 1 },
                413,
                "payload_too_large",
            ),
            (
                Error::UnsupportedMediaType("html".into()),
                415,
                "unsupported_media_type",
            ),
            (
                Error::TooManyPixels {
                    width: 1,
                    height: 1,
                    limit: 0,
                },
                422,
                "too_many_pixels",
            ),
            (Error::TooManyFrames { limit: 1 }, 422, "too_many_frames"),
            (
                Error::ResultTooManyBytes { limit: 1 },
                422,
                "result_too_many_bytes",
            ),
            (
                Error::DimensionTooLarge {
                    width: 1,
                    height: 2,
                    limit: 1,
                },
                422,
                "dimension_too_large",
            ),
            (Error::StorageCorrupt("x".into()), 500, "storage_corrupt"),
            (Error::Overloaded, 503, "overloaded"),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.code(), code);
        }
    }
}
