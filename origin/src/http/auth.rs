//! Bearer JWT authentication: the verified caller of a request.
//!
//! Verification rules (algorithm pinned per key, issuer, audience, expiry, not-before) live in
//! `domain::auth` so the edge applies exactly the same ones. Here we only extract the header,
//! call the verifier with the current time and map failures to a 401 that says why without
//! echoing the token.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use domain::auth::{Claims, JwtVerifier, VerifyKey};

use crate::config::JwtConfig;
use crate::http::error::ApiError;
use crate::state::AppState;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct AuthUser {
    /// The subject: our user id.
    pub id: String,
    /// Ops may read any booking and use the admin routes.
    pub is_ops: bool,
    /// Membership tier from the token (e.g. "gold"), for membership discounts.
    pub membership: Option<String>,
}

impl AuthUser {
    fn from_claims(claims: Claims) -> Self {
        AuthUser {
            is_ops: claims.is_ops(),
            membership: claims.membership.clone(),
            id: claims.sub,
        }
    }
}

/// Builds the verifier from configuration.
pub(crate) fn verifier(config: &JwtConfig) -> anyhow::Result<JwtVerifier> {
    let mut keys = Vec::new();
    if let Some(secret) = &config.hs256_secret {
        keys.push(VerifyKey::Hs256 {
            kid: config.hs256_kid.clone(),
            secret: secret.0.clone(),
        });
    }
    for (kid, pem) in &config.rs256_public_keys {
        keys.push(VerifyKey::Rs256Pem {
            kid: Some(kid.clone()),
            pem: pem.clone(),
        });
    }
    for (kid, pem) in &config.eddsa_public_keys {
        keys.push(VerifyKey::EdDsaPem {
            kid: Some(kid.clone()),
            pem: pem.clone(),
        });
    }
    JwtVerifier::new(
        keys,
        config.issuer.clone(),
        config.audience.clone(),
        config.leeway_secs,
    )
    .map_err(|e| anyhow::anyhow!("JWT keys: {e}"))
}

impl AuthUser {
    /// Verifies the request's bearer token. The front door (`edge_guard.rs`) calls it once per
    /// request and leaves the caller in the request's extensions, where the extractor finds it.
    pub(crate) fn from_headers(headers: &HeaderMap, state: &AppState) -> Result<Self, ApiError> {
        let header = headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("expected an Authorization: Bearer <token> header".into())
            })?;
        let claims = state
            .jwt
            .verify(token, chrono::Utc::now().timestamp())
            .map_err(|e| ApiError::Unauthorized(format!("invalid token: {e}")))?;
        Ok(AuthUser::from_claims(claims))
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = match parts.extensions.get::<AuthUser>() {
            Some(user) => user.clone(),
            None => AuthUser::from_headers(&parts.headers, state)?,
        };
        // The access log names the verified caller (hashed), whichever way it was verified.
        if let Some(access) = parts.extensions.get::<crate::http::access::AccessUser>() {
            access.set(&user.id);
        }
        Ok(user)
    }
}
