//! `/v1` and `/v2` of one route: one handler body, two documented paths.
//!
//! The versions share their handlers (ARCHITECTURE.md, decision 10); v2 only answers with a
//! richer body. utoipa documents one annotated function per path, so writing the pair by hand
//! copies the whole response table, and the copies drift. [`versioned!`] writes both functions
//! from one table instead: the responses the versions share, then each version's doc comment,
//! path and success response, then the one body, which gets the [`Version`] to render. A route
//! is still found by its path literal, with all its documented responses beside it.

/// Which body shape a handler answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// The stable, compact form.
    V1,
    /// The richer form (breakdowns, minor units).
    V2,
}

/// Writes the v1 and the v2 handler of one route, secured by the bearer token:
///
/// ```text
/// versioned!(
///     get, tag = "search", [params(SearchParams),],
///     errors(400 "Bad query", 401 "Missing or invalid token"),
///     /// Doc of v1.
///     search_v1 "/v1/vehicles/search" => (status = 200, …, body = SearchPage<VehicleHitV1>),
///     /// Doc of v2.
///     search_v2 "/v2/vehicles/search" => (status = 200, …, body = SearchPage<VehicleHitV2>),
///     |version| (State(state): State<AppState>, …) -> ApiResult<Response> { … }
/// );
/// ```
///
/// The bracketed attributes (`params`, `request_body`) and the `errors` go into both
/// `#[utoipa::path]`s, each error as a status and its description with a problem+json body
/// ([`Problem`](crate::http::error::Problem)); the body is compiled once per version, with
/// `version` bound to [`Version::V1`] or [`Version::V2`].
macro_rules! versioned {
    (
        $method:ident, tag = $tag:literal, [$($shared:tt)*],
        errors($($status:literal $description:literal),* $(,)?),
        $(#[$doc1:meta])* $v1:ident $path1:literal => $ok1:tt,
        $(#[$doc2:meta])* $v2:ident $path2:literal => $ok2:tt,
        |$version:ident| ($($args:tt)*) -> $ret:ty $body:block
    ) => {
        $crate::http::versioned::versioned!(
            @one [$(#[$doc1])*] $v1 V1, $method, $path1, $tag, [$($shared)*], $ok1, ($(($status, $description)),*),
            |$version| ($($args)*) -> $ret $body
        );
        $crate::http::versioned::versioned!(
            @one [$(#[$doc2])*] $v2 V2, $method, $path2, $tag, [$($shared)*], $ok2, ($(($status, $description)),*),
            |$version| ($($args)*) -> $ret $body
        );
    };
    (
        @one [$($doc:tt)*] $name:ident $v:ident, $method:ident, $path:literal, $tag:literal,
        [$($shared:tt)*], $ok:tt, ($(($status:literal, $description:literal)),*),
        |$version:ident| ($($args:tt)*) -> $ret:ty $body:block
    ) => {
        $($doc)*
        #[utoipa::path(
            $method, path = $path, tag = $tag,
            $($shared)*
            responses(
                $ok,
                $((status = $status, description = $description, body = $crate::http::error::Problem, content_type = "application/problem+json"),)*
            ),
            security(("bearer" = []))
        )]
        pub(crate) async fn $name($($args)*) -> $ret {
            let $version = $crate::http::versioned::Version::$v;
            $body
        }
    };
}

pub(crate) use versioned;
