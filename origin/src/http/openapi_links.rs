//! OpenAPI links: how the answer of one operation feeds the next (quote → hold → confirm,
//! cancel, extend, reschedule, start, complete; a new pricing rule → its update and delete). A client
//! generator can follow them, and schemathesis's stateful phase does: it chains real calls
//! through them instead of guessing booking ids that never exist (which only ever got 404s).
//!
//! Written as one pass over the finished document, like `openapi_errors`: the links name
//! operations by path and method, and the pass finds their operation ids, so a renamed
//! handler cannot leave a link dangling (the module's test fails on any link it could not place).

use serde_json::{json, Value};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::{OpenApi, RefOr};

/// One link: from the `status` answer of (`method`, `path`) to (`to_method`, `to_path`),
/// with the target's parameters and body as runtime expressions.
struct Edge {
    from: (HttpMethod, String, &'static str),
    name: &'static str,
    to: (HttpMethod, String),
    parameters: &'static [(&'static str, &'static str)],
    body: Option<Value>,
}

const BOOKING_ID: &[(&str, &str)] = &[("id", "$response.body#/id")];
const RULE_ID: &[(&str, &str)] = &[
    ("region", "$request.path.region"),
    ("id", "$response.body#/key"),
];

/// The links of one API version (`v` = "v1" or "v2"): the booking journey.
fn booking_edges(v: &str) -> Vec<Edge> {
    let p = |s: &str| format!("/{v}{s}");
    let actions = [
        ("read", HttpMethod::Get, p("/bookings/{id}")),
        ("confirm", HttpMethod::Post, p("/bookings/{id}/confirm")),
        ("cancel", HttpMethod::Post, p("/bookings/{id}/cancel")),
        ("extend", HttpMethod::Post, p("/bookings/{id}/extend")),
        (
            "reschedule",
            HttpMethod::Post,
            p("/bookings/{id}/reschedule"),
        ),
        ("start", HttpMethod::Post, p("/bookings/{id}/start")),
        ("complete", HttpMethod::Post, p("/bookings/{id}/complete")),
    ];
    let mut edges = vec![Edge {
        from: (HttpMethod::Post, p("/quotes"), "201"),
        name: "hold",
        to: (HttpMethod::Post, p("/bookings")),
        parameters: &[],
        body: Some(json!({ "quote_token": "$response.body#/quote_token" })),
    }];
    // From a new hold, and from each action that leaves the booking active, to every action.
    let sources = [
        (p("/bookings"), "201"),
        (p("/bookings/{id}/confirm"), "200"),
        (p("/bookings/{id}/start"), "200"),
        (p("/bookings/{id}/extend"), "200"),
        (p("/bookings/{id}/reschedule"), "200"),
    ];
    for (from, status) in sources {
        for (name, method, to) in &actions {
            edges.push(Edge {
                from: (HttpMethod::Post, from.clone(), status),
                name,
                to: (method.clone(), to.clone()),
                parameters: BOOKING_ID,
                body: None,
            });
        }
    }
    edges
}

/// The pricing rules: a created rule can be replaced and deleted.
fn rule_edges() -> Vec<Edge> {
    let mut edges = Vec::new();
    for rules in ["time-multipliers", "discount-rules"] {
        let collection = format!("/v1/admin/pricing/{{region}}/{rules}");
        for (name, method) in [("update", HttpMethod::Put), ("delete", HttpMethod::Delete)] {
            edges.push(Edge {
                from: (HttpMethod::Post, collection.clone(), "201"),
                name,
                to: (method, format!("{collection}/{{id}}")),
                parameters: RULE_ID,
                body: None,
            });
        }
    }
    edges
}

fn operation<'d>(
    doc: &'d mut OpenApi,
    method: &HttpMethod,
    path: &str,
) -> Option<&'d mut Operation> {
    let item = doc.paths.paths.get_mut(path)?;
    match method {
        HttpMethod::Get => item.get.as_mut(),
        HttpMethod::Post => item.post.as_mut(),
        HttpMethod::Put => item.put.as_mut(),
        HttpMethod::Delete => item.delete.as_mut(),
        HttpMethod::Patch => item.patch.as_mut(),
        _ => None,
    }
}

/// Adds the links to `doc`. Returns the links it could not place (a path, method, status or
/// operation id that is not in the document): empty, or the document's test fails.
pub(crate) fn document_links(doc: &mut OpenApi) -> Vec<String> {
    let mut missing = Vec::new();
    let edges = booking_edges("v1")
        .into_iter()
        .chain(booking_edges("v2"))
        .chain(rule_edges());
    for edge in edges {
        let (to_method, to_path) = &edge.to;
        let Some(target) = operation(doc, to_method, to_path).and_then(|o| o.operation_id.clone())
        else {
            missing.push(format!(
                "{} {to_path} (target of {})",
                method_name(to_method),
                edge.name
            ));
            continue;
        };
        let (from_method, from_path, status) = &edge.from;
        let response = operation(doc, from_method, from_path)
            .and_then(|o| o.responses.responses.get_mut(*status));
        let Some(RefOr::T(response)) = response else {
            missing.push(format!("{} {from_path} {status}", method_name(from_method)));
            continue;
        };
        let mut link = LinkBuilder::new().operation_id(target);
        for (name, expression) in edge.parameters {
            link = link.parameter(*name, *expression);
        }
        link = link.request_body(edge.body);
        response
            .links
            .insert(edge.name.to_owned(), RefOr::T(link.build()));
    }
    missing
}

/// utoipa 5.5 serialises a Link's fields in snake_case (`operation_id`, `request_body`),
/// which OpenAPI readers do not know (schemathesis refused every link as "missing both
/// operationRef and operationId"). Renames them to the specification's camelCase in the
/// served JSON document.
pub(crate) fn spec_field_names(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let operations = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let Some(responses) = operation
            .get_mut("responses")
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let links = responses
            .values_mut()
            .filter_map(|r| r.get_mut("links").and_then(Value::as_object_mut))
            .flat_map(|links| links.values_mut().filter_map(Value::as_object_mut));
        for link in links {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_owned(), value);
                }
            }
        }
    }
}

fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Patch => "PATCH",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_finds_its_source_and_target_operation() {
        let (_, mut doc) = crate::http::api();
        // `api()` already placed them; placing them again must find every end the same way.
        assert_eq!(document_links(&mut doc), Vec::<String>::new());
        let quote = operation(&mut doc, &HttpMethod::Post, "/v1/quotes")
            .and_then(|o| o.responses.responses.get("201").cloned());
        let Some(RefOr::T(quote)) = quote else {
            panic!("no 201 on POST /v1/quotes")
        };
        assert!(quote.links.contains_key("hold"));
    }

    #[test]
    fn the_served_links_use_the_specifications_field_names() {
        let (_, doc) = crate::http::api();
        let mut json = serde_json::to_value(&doc).unwrap_or_default();
        spec_field_names(&mut json);
        let hold = &json["paths"]["/v1/quotes"]["post"]["responses"]["201"]["links"]["hold"];
        assert_eq!(hold["operationId"], "create_v1", "{hold}");
        assert_eq!(
            hold["requestBody"]["quote_token"],
            "$response.body#/quote_token"
        );
        assert!(hold.get("operation_id").is_none() && hold.get("request_body").is_none());
    }
}
