//! Documents the errors every operation can answer with because of what it takes, not what it
//! does: a JSON body can be malformed (400), too large (413), not JSON (415) or the wrong shape
//! (422); every route can be refused without an edge signature (401) and a secured one over
//! the per-user limit (429); a path id can name nothing (404); any request can
//! be shed or outlive its deadline (503). Middleware and extractors produce these for every
//! route, so writing them into each `#[utoipa::path]` by hand drifts (schemathesis found
//! undocumented 401/400/404/415 answers on newer routes). This pass adds each one, as a problem
//! body, to every operation that lacks it; statuses a handler documents itself are kept as they
//! are.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

/// Adds the middleware- and extractor-level error responses to every operation of `doc`.
pub(crate) fn document_common_errors(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let signed = !crate::http::edge_guard::UNSIGNED_PATHS.contains(&path.as_str());
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_to(op, signed);
        }
    }
}

fn add_to(op: &mut Operation, signed: bool) {
    let params = op.parameters.as_deref().unwrap_or_default();
    let has = |place: ParameterIn| {
        params
            .iter()
            .any(|p| std::mem::discriminant(&p.parameter_in) == std::mem::discriminant(&place))
    };
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let (body, query, path) = (
        op.request_body.is_some(),
        has(ParameterIn::Query),
        has(ParameterIn::Path),
    );
    let headers = has(ParameterIn::Header);
    let mut add = |status: &str, description: &str| {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| problem(description));
    };
    if body || query || headers {
        add("400", "Malformed request (body, query or header)");
    }
    // Every public route: a missing or invalid edge signature (`edge_guard.rs`) is a 401, and
    // a caller over the origin's own per-user limit a 429.
    if signed {
        add(
            "401",
            "Missing or invalid token, or no valid edge signature",
        );
    }
    if secured {
        add("429", "Over the per-user rate limit (Retry-After)");
    }
    // A name that is no region is a 404 wherever it is named (path or query); a region
    // another origin serves is a 421 (misdirected).
    let region_query = params
        .iter()
        .any(|p| p.name == "region" && matches!(p.parameter_in, ParameterIn::Query));
    if path || region_query {
        add("404", "Not found (or no such region)");
    }
    if region_query || params.iter().any(|p| p.name == "region") {
        add("421", "The region belongs to another origin (misdirected)");
    }
    if body {
        add("413", "Body too large");
        add("415", "Body is not JSON");
        add("422", "Invalid request");
    }
    if query && !body {
        add("422", "Invalid request");
    }
    add(
        "503",
        "Overloaded, past the request deadline, or a dependency is down (Retry-After)",
    );
}

fn problem(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build(),
    )
}
