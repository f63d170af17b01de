//! Request extractors that parse input once, at the edge of the system, and turn every
//! rejection into a precise problem+json instead of axum's plain-text defaults.

use std::fmt::Display;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::Method;

use crate::http::auth::AuthUser;
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::store::idempotency::{self, Begun, Fingerprint, KeyClaim};

// The three wrappers take their extraction from axum (`via`) and only map its rejection, each
// in its `From` impl below.

/// JSON body: malformed JSON is a 400, a body of the wrong shape (type, unknown or missing
/// field, invalid window) a 422 naming the path, a missing content type a 415.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct ApiJson<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                // "Failed to deserialize the JSON body into the target type: start: premature end…"
                let detail = cause(&e, || e.body_text());
                let field = detail
                    .split_once(':')
                    .map(|(path, _)| path.trim().to_owned())
                    .filter(|p| !p.contains(' ') && !p.is_empty() && p != ".");
                ApiError::Validation { field, detail }
            }
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::BadRequest(format!("malformed JSON: {}", cause(&e, || e.body_text())))
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a body with content-type: application/json".into(),
            ),
            JsonRejection::BytesRejection(e) => {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge("the request body is too large".into())
                } else {
                    ApiError::BadRequest(format!("could not read the body: {}", e.body_text()))
                }
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

/// What a rejection says: the error beneath it when there is one (serde's, which names the
/// field or parameter), else axum's own text.
fn cause(rejection: &dyn std::error::Error, text: impl FnOnce() -> String) -> String {
    rejection
        .source()
        .map(ToString::to_string)
        .unwrap_or_else(text)
}

/// Query string: any parse error is a 400 naming the parameter.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct ApiQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        match rejection {
            QueryRejection::FailedToDeserializeQueryString(e) => {
                ApiError::BadRequest(format!("invalid query: {}", cause(&e, || e.body_text())))
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

/// Path parameters: a malformed id is a 404 (it names nothing that exists), never a 500.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        match rejection {
            PathRejection::FailedToDeserializePathParams(e) => {
                ApiError::NotFound(format!("no such resource: {}", e.body_text()))
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

/// The `Idempotency-Key` header, when present: 1–255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyKey(pub Option<String>);

/// The header's name.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

impl FromRequestParts<AppState> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(IDEMPOTENCY_KEY) else {
            return Ok(IdempotencyKey(None));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
                )
            })?;
        Ok(IdempotencyKey(Some(key.to_owned())))
    }
}

/// The request id set by the request-id middleware (for history rows and logs).
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestId(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestId(
            parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(128).collect()),
        ))
    }
}

/// The route a request matched, and its method: where an idempotency fingerprint takes its
/// method and path from, so no handler re-types its own path (which could drift from the
/// router).
///
/// The path is the matched route (`MatchedPath`, e.g. `/v1/bookings/{id}/confirm`) with each
/// parameter written in its canonical spelling, as parsed by the handler — not the raw request
/// path: ids accept upper-case hex and regions either case, and keys stored before this
/// extractor existed hashed the canonical spelling (`/v1/bookings/bkg_euw_<lower hex>/confirm`,
/// `/v1/admin/pricing/EUW/…`), so a retry spelled differently still replays.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    method: Method,
    template: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Route {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let template = parts
            .extensions
            .get::<MatchedPath>()
            .map(|path| path.as_str().to_owned())
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("no matched route for {}", parts.uri.path()))
            })?;
        Ok(Route {
            method: parts.method.clone(),
            template,
        })
    }
}

impl Route {
    /// The concrete path: every `{name}` of the matched route replaced by the value given for
    /// `name`. A parameter without a value, or a value for no parameter, is a bug (500).
    pub(crate) fn path(
        &self,
        params: &[(&str, &(dyn Display + Sync))],
    ) -> Result<String, ApiError> {
        let bug =
            |what: String| ApiError::Internal(anyhow::anyhow!("route {}: {what}", self.template));
        let mut path = String::with_capacity(self.template.len() + 40);
        let mut used = 0;
        let mut rest = self.template.as_str();
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .map(|i| open + i)
                .ok_or_else(|| bug("unclosed parameter".into()))?;
            let name = &rest[open + 1..close];
            let (_, value) = params
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| bug(format!("no value for {{{name}}}")))?;
            path.push_str(&rest[..open]);
            path.push_str(&value.to_string());
            used += 1;
            rest = &rest[close + 1..];
        }
        path.push_str(rest);
        if used != params.len() {
            return Err(bug(format!(
                "{} values for {used} parameters",
                params.len()
            )));
        }
        Ok(path)
    }

    /// The request's idempotency fingerprint: method, [`Route::path`] and `body`.
    pub(crate) fn fingerprint(
        &self,
        params: &[(&str, &(dyn Display + Sync))],
        body: &impl serde::Serialize,
    ) -> Result<Fingerprint, ApiError> {
        Ok(Fingerprint::new(
            self.method.as_str(),
            &self.path(params)?,
            body,
        ))
    }
}

/// What every write (a POST, PUT or DELETE with an `Idempotency-Key`) takes from its request:
/// the state, the caller, the request id, the key and the matched route — extracted in that
/// order, as separate extractors would be, so the answers to bad requests are unchanged.
pub(crate) struct WriteCall {
    pub state: AppState,
    pub user: AuthUser,
    pub request_id: RequestId,
    pub key: IdempotencyKey,
    pub route: Route,
    /// The request's `traceparent` header, as sent (validated where it is used).
    pub traceparent: Option<String>,
}

impl std::fmt::Debug for WriteCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteCall")
            .field("user", &self.user.id)
            .field("request_id", &self.request_id)
            .field("key", &self.key)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl FromRequestParts<AppState> for WriteCall {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        let request_id = match RequestId::from_request_parts(parts, state).await {
            Ok(id) => id,
            Err(never) => match never {},
        };
        let key = IdempotencyKey::from_request_parts(parts, state).await?;
        let route = Route::from_request_parts(parts, state).await?;
        let traceparent = parts
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(WriteCall {
            state: state.clone(),
            user,
            request_id,
            key,
            route,
            traceparent,
        })
    }
}

impl WriteCall {
    /// Phase one of the idempotent write (`store::idempotency`): the request's fingerprint is
    /// its method, its route with `params` filled in, and `body`.
    pub(crate) async fn begin(
        &self,
        params: &[(&str, &(dyn Display + Sync))],
        body: &impl serde::Serialize,
    ) -> Result<Begun, ApiError> {
        let fingerprint = self.route.fingerprint(params, body)?;
        Ok(idempotency::begin(
            &self.state.db,
            &self.user.id,
            self.key.0.as_deref(),
            fingerprint,
        )
        .await?)
    }
}

impl WriteCall {
    /// The request's key for a write that claims it inside its own statement (the
    /// one-statement hold, `store::bookings::at_once`); `None` without a key.
    pub(crate) fn key_claim(
        &self,
        params: &[(&str, &(dyn Display + Sync))],
        body: &impl serde::Serialize,
    ) -> Result<Option<KeyClaim<'_>>, ApiError> {
        let Some(key) = self.key.0.as_deref() else {
            return Ok(None);
        };
        Ok(Some(KeyClaim {
            user: &self.user.id,
            key,
            fingerprint: self.route.fingerprint(params, body)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::ids::BookingId;

    fn route(method: Method, template: &str) -> Route {
        Route {
            method,
            template: template.to_owned(),
        }
    }

    #[test]
    fn a_route_path_fills_each_parameter_with_its_canonical_spelling() -> Result<(), ApiError> {
        let id: BookingId = "bkg_euw_0190F0C5A4C37D3E8B1E2F3A4B5C6D7E"
            .parse()
            .map_err(|e| ApiError::BadRequest(format!("{e}")))?;
        let confirm = route(Method::POST, "/v1/bookings/{id}/confirm");
        assert_eq!(
            confirm.path(&[("id", &id)])?,
            "/v1/bookings/bkg_euw_0190f0c5a4c37d3e8b1e2f3a4b5c6d7e/confirm"
        );
        let admin = route(Method::PUT, "/v1/admin/pricing/{region}/base-rates/{class}");
        let region = domain::region::Region::Euw;
        assert_eq!(
            admin.path(&[("class", &"compact"), ("region", &region)])?,
            "/v1/admin/pricing/EUW/base-rates/compact"
        );
        assert_eq!(
            route(Method::POST, "/v2/bookings").path(&[])?,
            "/v2/bookings"
        );
        Ok(())
    }

    #[test]
    fn a_missing_or_extra_route_parameter_is_an_internal_error() {
        let confirm = route(Method::POST, "/v1/bookings/{id}/confirm");
        assert!(matches!(confirm.path(&[]), Err(ApiError::Internal(_))));
        assert!(matches!(
            confirm.path(&[("id", &"x"), ("other", &"y")]),
            Err(ApiError::Internal(_))
        ));
        assert!(matches!(
            confirm.path(&[("ID", &"x")]),
            Err(ApiError::Internal(_))
        ));
    }

    #[test]
    fn a_fingerprint_is_the_hash_of_method_path_and_body_as_before() -> Result<(), ApiError> {
        use sha2::{Digest, Sha256};
        let extend = route(Method::POST, "/v1/bookings/{id}/extend");
        let body = serde_json::json!({ "end": "2027-01-01T10:00:00Z" });
        let got = extend.fingerprint(&[("id", &"bkg_euw_1")], &body)?;
        let expected = Sha256::new()
            .chain_update(b"POST\0/v1/bookings/bkg_euw_1/extend\0")
            .chain_update(br#"{"end":"2027-01-01T10:00:00Z"}"#)
            .finalize();
        assert_eq!(got.as_bytes(), &expected[..]);
        // The method is part of it.
        let put = route(Method::PUT, "/v1/bookings/{id}/extend")
            .fingerprint(&[("id", &"bkg_euw_1")], &body)?;
        assert_ne!(put, got);
        Ok(())
    }
}
