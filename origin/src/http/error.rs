//! The one HTTP error type: every failure leaves the origin as RFC 9457 `application/problem+json`.
//!
//! Each variant has a stable `type` (a relative URI, `/problems/<slug>`) that clients can match
//! on, a status, and a human `detail`. Internal errors are logged with their cause and leave
//! with a generic detail: a 5xx never tells a client about our database.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::booking::BookingError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::blocks::BlockFailure;
use crate::app::booking::BookingFailure;
use crate::redis::locks::LockError;
use crate::store::blocks::{BlockStoreError, InTheWay};
use crate::store::bookings::StoreError;
use crate::store::idempotency::IdempotencyError;

/// A problem details body (RFC 9457).
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub(crate) struct Problem {
    /// Stable identifier of the error kind, e.g. `/problems/conflict`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The field at fault, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The bookings in the way of a maintenance block (`/problems/bookings-in-the-way`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bookings: Option<Vec<InTheWay>>,
}

/// Every error a handler can return.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// Unparseable input: malformed JSON, a bad query string, a bad header.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed input that breaks a rule; `field` names the culprit when there is one.
    #[error("{detail}")]
    Validation {
        field: Option<String>,
        detail: String,
    },
    #[error("{0}")]
    Unauthorized(String),
    /// A public route called without a valid edge signature (`edge_guard.rs`).
    #[error("{0}")]
    EdgeSignature(String),
    /// The caller is over the origin's own per-user limit (`edge_guard.rs`).
    #[error(
        "rate limit of {} requests per {} s exceeded; retry after {} s",
        .limit.limit,
        .limit.window_ms / 1000,
        .decision.retry_after_secs()
    )]
    RateLimited {
        decision: domain::ratelimit::Decision,
        limit: domain::ratelimit::RateLimit,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is about another region's vehicle, booking, quote, area or admin data: it
    /// was sent to the wrong origin (a routing mistake, counted as `misdirected_requests_total`).
    #[error("{0}")]
    Misdirected(String),
    /// The vehicle is taken for (part of) that window.
    #[error("{0}")]
    Conflict(String),
    /// What the request would create is already there (e.g. an active deny-list entry).
    #[error("{0}")]
    AlreadyExists(String),
    /// Occupying bookings overlap a maintenance block's window; `bookings` names them.
    #[error("{detail}")]
    BookingsInTheWay {
        detail: String,
        bookings: Vec<InTheWay>,
    },
    /// The booking is not in a state that allows this action.
    #[error("{0}")]
    InvalidState(String),
    /// The hold expired before it was confirmed.
    #[error("{0}")]
    HoldExpired(String),
    #[error("{0}")]
    QuoteInvalid(String),
    #[error("{0}")]
    QuoteExpired(String),
    #[error("{0}")]
    QuoteUsed(String),
    /// The same Idempotency-Key is being processed by another request right now.
    #[error("a request with this Idempotency-Key is still in progress; retry later")]
    IdempotencyInProgress,
    /// The same Idempotency-Key was used with another request.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A dependency is down or the server is overloaded; the client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// The computed price failed validation (see `pricing/validate.rs`): refused, not quoted.
    #[error("{0}")]
    PriceRefused(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// Shorthand for a validation error on a named field.
    pub(crate) fn field(field: &str, detail: impl Into<String>) -> Self {
        ApiError::Validation {
            field: Some(field.to_owned()),
            detail: detail.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            Validation { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid request",
            ),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            EdgeSignature(_) => (
                StatusCode::UNAUTHORIZED,
                "edge-signature",
                "Edge signature required",
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Misdirected(_) => (
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected",
                "Misdirected request",
            ),
            Conflict(_) => (StatusCode::CONFLICT, "conflict", "Vehicle not available"),
            AlreadyExists(_) => (StatusCode::CONFLICT, "already-exists", "Already exists"),
            BookingsInTheWay { .. } => (
                StatusCode::CONFLICT,
                "bookings-in-the-way",
                "Bookings in the way",
            ),
            InvalidState(_) => (
                StatusCode::CONFLICT,
                "invalid-state",
                "Action not allowed in this state",
            ),
            HoldExpired(_) => (StatusCode::CONFLICT, "hold-expired", "Hold expired"),
            QuoteInvalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "quote-invalid",
                "Invalid quote token",
            ),
            QuoteExpired(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "quote-expired",
                "Quote expired",
            ),
            QuoteUsed(_) => (StatusCode::CONFLICT, "quote-used", "Quote already used"),
            IdempotencyInProgress => (
                StatusCode::CONFLICT,
                "idempotency-in-progress",
                "Request in progress",
            ),
            IdempotencyMismatch => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-mismatch",
                "Idempotency-Key reused",
            ),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            NoRoute(_) => (StatusCode::NOT_FOUND, "no-route", "No such route"),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            PriceRefused(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "price-refused",
                "Price refused",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }

    /// The problem body this error becomes.
    pub(crate) fn problem(&self) -> Problem {
        let (status, slug, title) = self.parts();
        let detail = match self {
            ApiError::Internal(_) => "the server failed to handle this request".to_owned(),
            other => other.to_string(),
        };
        Problem {
            kind: format!("/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            field: match self {
                ApiError::Validation { field, .. } => field.clone(),
                _ => None,
            },
            bookings: match self {
                ApiError::BookingsInTheWay { bookings, .. } => Some(bookings.clone()),
                _ => None,
            },
        }
    }

    /// The HTTP status of this error.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.parts().0
    }
}

/// Renders a problem body as a response.
pub(crate) fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(e) => tracing::error!(error = ?e, "internal error"),
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "unavailable"),
            _ => {}
        }
        let mut response = problem_response(&self.problem());
        let headers = response.headers_mut();
        match self {
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited { decision, limit } => {
                let window = limit.window_ms / 1000;
                for (name, value) in [
                    ("retry-after", decision.retry_after_secs().to_string()),
                    ("ratelimit-limit", limit.limit.to_string()),
                    ("ratelimit-remaining", decision.remaining.to_string()),
                    (
                        "ratelimit-reset",
                        decision.reset_ms.div_ceil(1000).to_string(),
                    ),
                    ("ratelimit-policy", format!("{};w={window}", limit.limit)),
                ] {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        headers.insert(name, value);
                    }
                }
            }
            ApiError::Unavailable(_)
            | ApiError::IdempotencyInProgress
            | ApiError::PriceRefused(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// Maps database errors: constraint violations become client errors, never 500s.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            match db.code().as_deref() {
                // exclusion_violation: the vehicle is taken for that window.
                Some("23P01") => {
                    metrics::counter!(crate::store::bookings::OVERLAP_REJECTIONS).increment(1);
                    return ApiError::Conflict(
                        "the vehicle is already booked for part of that window or the turnaround after a booking".into(),
                    );
                }
                // deadlock_detected / serialization_failure: a concurrent booking won.
                Some("40P01") | Some("40001") => {
                    return ApiError::Conflict(
                        "a concurrent booking for this vehicle won; try another window".into(),
                    )
                }
                // character_not_in_repertoire: a text value with U+0000, which PostgreSQL's text
                // cannot hold (schemathesis sent one in a query parameter and in an admin body).
                // The statement failed, so nothing was written.
                Some("22021") => {
                    return ApiError::BadRequest(
                        "text values must not contain the NUL character (U+0000)".into(),
                    )
                }
                // unique violation on the quote: the quote was already used for a booking.
                Some("23505") if db.constraint() == Some("bookings_quote") => {
                    return ApiError::QuoteUsed("this quote was already used for a booking".into())
                }
                _ => {}
            }
        }
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::Unavailable("the database is unavailable; retry shortly".into())
            }
            other => ApiError::Internal(anyhow::Error::new(other).context("database error")),
        }
    }
}

// The application services' errors (pricing, search, pricing administration), mapped once.

/// A promo code nobody offers is the caller's mistake (422 naming `promo_code`); a pricing
/// table that cannot price is ours (500, detail logged, not sent).
impl From<crate::app::pricing::PricingError> for ApiError {
    fn from(e: crate::app::pricing::PricingError) -> Self {
        use crate::app::pricing::PricingError;
        match e {
            PricingError::UnknownPromoCode => ApiError::field("promo_code", e.to_string()),
            PricingError::Database(db) => ApiError::from(db),
            config @ PricingError::Config(_) => ApiError::Internal(anyhow::Error::new(config)),
        }
    }
}

impl From<crate::app::search::SearchError> for ApiError {
    fn from(e: crate::app::search::SearchError) -> Self {
        use crate::app::search::SearchError;
        match e {
            SearchError::Pricing(e) => ApiError::from(e),
            SearchError::Database(e) => ApiError::from(e),
        }
    }
}

/// A refused change names its field (422); a missing rule is a 404.
impl From<crate::app::pricing::admin::AdminError> for ApiError {
    fn from(e: crate::app::pricing::admin::AdminError) -> Self {
        use crate::app::pricing::admin::AdminError;
        match e {
            AdminError::Invalid { field, detail } => ApiError::field(field, detail),
            AdminError::NotFound(what) => ApiError::NotFound(what),
            AdminError::Database(e) => ApiError::from(e),
        }
    }
}

// The booking write path's errors: the aggregate's refusals, the repository, the vehicle lock,
// idempotency keys, and the booking service that wraps them. Each is mapped here, once.

/// The booking aggregate's refusals: a lifecycle or time rule is a 409, a window a 422 naming
/// its field, a pricing or currency fault a 500.
impl From<BookingError> for ApiError {
    fn from(e: BookingError) -> Self {
        match e {
            BookingError::InvalidTransition(_)
            | BookingError::NotStartable { .. }
            | BookingError::NotExtendable(_)
            | BookingError::NotReschedulable(_)
            | BookingError::Ended => ApiError::InvalidState(e.to_string()),
            BookingError::SameWindow => ApiError::field("start", e.to_string()),
            BookingError::HoldExpired(_) => ApiError::HoldExpired(e.to_string()),
            BookingError::Window { field, .. } => ApiError::field(field, e.to_string()),
            BookingError::ExtensionTooLong { .. } => ApiError::field("end", e.to_string()),
            BookingError::HoldNotExpired(_)
            | BookingError::CurrencyMismatch { .. }
            | BookingError::Pricing(_)
            | BookingError::Overflow => ApiError::Internal(anyhow::Error::new(e)),
        }
    }
}

/// The bookings repository: constraint violations are client errors, never 500s.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Overlap | StoreError::Blocked | StoreError::OfferedToWaitlist { .. } => {
                ApiError::Conflict(e.to_string())
            }
            StoreError::Contention => ApiError::Conflict(
                "a concurrent booking for this vehicle won; try another window".into(),
            ),
            StoreError::QuoteUsed => ApiError::QuoteUsed(e.to_string()),
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                ApiError::Unavailable("the database is unavailable; retry shortly".into())
            }
            StoreError::Corrupt { .. }
            | StoreError::OutboxMismatch { .. }
            | StoreError::Encode(_)
            | StoreError::Database(_) => ApiError::Internal(anyhow::Error::new(e)),
        }
    }
}

/// A vehicle lock held by someone else is a 409 (`/problems/conflict`).
impl From<LockError> for ApiError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Busy(_) => ApiError::Conflict(e.to_string()),
            LockError::Database(cause) => cause.into(),
        }
    }
}

impl From<IdempotencyError> for ApiError {
    fn from(e: IdempotencyError) -> Self {
        match e {
            IdempotencyError::InProgress => ApiError::IdempotencyInProgress,
            IdempotencyError::Mismatch => ApiError::IdempotencyMismatch,
            IdempotencyError::Database(cause) => cause.into(),
        }
    }
}

impl From<BookingFailure> for ApiError {
    fn from(e: BookingFailure) -> Self {
        match e {
            BookingFailure::QuoteExpired => ApiError::QuoteExpired(e.to_string()),
            BookingFailure::QuoteInvalid(_) => ApiError::QuoteInvalid(e.to_string()),
            BookingFailure::QuoteOfAnotherUser => ApiError::Forbidden(e.to_string()),
            BookingFailure::RegionNotServed(_) => ApiError::Misdirected(e.to_string()),
            BookingFailure::NotFound(_) | BookingFailure::VehicleUnavailable(_) => {
                ApiError::NotFound(e.to_string())
            }
            BookingFailure::ExtensionBlocked | BookingFailure::RescheduleBlocked => {
                ApiError::Conflict(e.to_string())
            }
            BookingFailure::Refused(refused) => refused.into(),
            BookingFailure::Store(store) => store.into(),
            BookingFailure::Pricing(pricing) => pricing.into(),
            BookingFailure::HoldTtl(_) => ApiError::Internal(anyhow::Error::new(e)),
        }
    }
}

/// The block service's refusals: the bookings in the way are named in the body.
impl From<BlockFailure> for ApiError {
    fn from(e: BlockFailure) -> Self {
        match e {
            BlockFailure::VehicleNotFound(_) | BlockFailure::NotFound(_) => {
                ApiError::NotFound(e.to_string())
            }
            BlockFailure::Refused(refused) => match refused.field() {
                Some(field) => ApiError::field(field, refused.to_string()),
                None => ApiError::InvalidState(refused.to_string()),
            },
            BlockFailure::BookingsInTheWay(ref bookings)
            | BlockFailure::TripsUnderWay(ref bookings) => ApiError::BookingsInTheWay {
                detail: e.to_string(),
                bookings: bookings.clone(),
            },
            BlockFailure::Block(BlockStoreError::BlockOverlap) => ApiError::Conflict(e.to_string()),
            BlockFailure::Block(BlockStoreError::BookingOverlap) => {
                ApiError::Conflict(e.to_string())
            }
            BlockFailure::Block(BlockStoreError::Database(cause)) => cause.into(),
            BlockFailure::Block(BlockStoreError::Encode(_)) | BlockFailure::Withdraw(_) => {
                ApiError::Internal(anyhow::Error::new(e))
            }
            BlockFailure::Booking(store) => store.into(),
        }
    }
}

/// Result alias for handlers.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod app_error_mapping_tests {
    use super::*;
    use crate::app::pricing::admin::AdminError;
    use crate::app::pricing::PricingError;

    #[test]
    fn an_unknown_promo_code_is_a_422_naming_the_field() {
        let problem = ApiError::from(PricingError::UnknownPromoCode).problem();
        assert_eq!(problem.status, 422);
        assert_eq!(problem.kind, "/problems/validation");
        assert_eq!(problem.field.as_deref(), Some("promo_code"));
        assert_eq!(problem.detail, "unknown or expired promo code");
    }

    #[test]
    fn a_pricing_table_that_cannot_price_is_a_500_that_does_not_tell_why() {
        let problem = ApiError::from(PricingError::Config("no rate for EUW van".into())).problem();
        assert_eq!(problem.status, 500);
        assert!(!problem.detail.contains("rate"), "{}", problem.detail);
    }

    #[test]
    fn a_busy_database_under_pricing_or_admin_is_a_503_as_everywhere() {
        let pricing = ApiError::from(PricingError::Database(sqlx::Error::PoolTimedOut));
        let admin = ApiError::from(AdminError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(pricing.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(admin.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn refused_admin_changes_name_their_field_and_missing_rules_are_404() {
        let invalid = ApiError::from(AdminError::Invalid {
            field: "start_hour",
            detail: "overlaps".into(),
        })
        .problem();
        assert_eq!(
            (invalid.status, invalid.field.as_deref()),
            (422, Some("start_hour"))
        );
        assert_eq!(invalid.detail, "overlaps");
        let missing = ApiError::from(AdminError::NotFound("no discount rule x".into())).problem();
        assert_eq!(
            (missing.status, missing.detail.as_str()),
            (404, "no discount rule x")
        );
    }

    #[test]
    fn another_regions_quote_is_a_421_misdirected_not_a_404() {
        let problem =
            ApiError::from(BookingFailure::RegionNotServed(domain::Region::Eun)).problem();
        assert_eq!(problem.status, 421);
        assert_eq!(problem.kind, "/problems/misdirected");
        assert_eq!(problem.title, "Misdirected request");
        assert!(problem.detail.contains("EUN"), "{}", problem.detail);
    }
}
