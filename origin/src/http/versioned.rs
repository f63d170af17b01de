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

#[cfg(test)]
mod tests {
    use utoipa::openapi::path::Operation;

    /// Every operation of the document by (method, path).
    fn operations(doc: &utoipa::openapi::OpenApi) -> Vec<(&'static str, &str, &Operation)> {
        doc.paths
            .paths
            .iter()
            .flat_map(|(path, item)| {
                [
                    ("get", &item.get),
                    ("put", &item.put),
                    ("post", &item.post),
                    ("delete", &item.delete),
                    ("patch", &item.patch),
                ]
                .into_iter()
                .filter_map(move |(method, op)| op.as_ref().map(|op| (method, path.as_str(), op)))
            })
            .collect()
    }

    #[test]
    fn both_versions_of_a_route_document_the_same_parameters_body_and_errors(
    ) -> Result<(), serde_json::Error> {
        let (_, doc) = crate::http::api();
        let ops = operations(&doc);
        let mut pairs = 0;
        for (method, path, v1) in &ops {
            let Some(rest) = path.strip_prefix("/v1/") else {
                continue;
            };
            let v2_path = format!("/v2/{rest}");
            let Some((_, _, v2)) = ops.iter().find(|(m, p, _)| m == method && *p == v2_path) else {
                continue;
            };
            pairs += 1;
            // Only the success answer may differ (its body shape, and the headers v1 documents).
            let errors = |op: &Operation| -> Result<serde_json::Value, serde_json::Error> {
                let mut responses = op.responses.responses.clone();
                responses.retain(|status, _| !status.starts_with('2'));
                serde_json::to_value(responses)
            };
            let what = format!("{method} {path} and {v2_path}");
            assert_eq!(errors(v1)?, errors(v2)?, "errors of {what}");
            assert_eq!(
                serde_json::to_value(&v1.parameters)?,
                serde_json::to_value(&v2.parameters)?,
                "parameters of {what}"
            );
            assert_eq!(
                serde_json::to_value(&v1.request_body)?,
                serde_json::to_value(&v2.request_body)?,
                "request body of {what}"
            );
            assert_eq!(v1.tags, v2.tags, "tags of {what}");
            assert_eq!(
                serde_json::to_value(&v1.security)?,
                serde_json::to_value(&v2.security)?,
                "security of {what}"
            );
        }
        // Search, quotes, the bookings (create and list), one booking, and its six actions.
        assert_eq!(pairs, 11, "v1/v2 pairs found");
        Ok(())
    }
}
