//! Paid operations marked in a `utoipa` OpenAPI document (feature `utoipa`): each
//! operation of a paid route gets its `x-payment-info` and a `402` response describing
//! the envelope; the route table decides which operations are paid.

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder,
};

use super::{PricedRoute, routes, settle_label};
use crate::actix::route::Route;
use crate::actix::route_table::shape;
use crate::wire::PAYMENT_REQUIRED;

/// The name of the envelope's schema in `components.schemas`.
const ENVELOPE: &str = "X402PaymentRequired";
/// The name of the 402 body's schema in `components.schemas`.
const ERROR_BODY: &str = "X402Error";

/// Marks the paid operations of an OpenAPI document: each operation a `#[paid]`
/// handler serves gets an `x-payment-info` extension and a `402` response.
///
/// An operation is the handler's when its `operationId` is the handler's name
/// (`#[utoipa::path]`'s default: the function's name) and, when the handler has a
/// routing attribute below `#[paid]`, its method is the attribute's and its path
/// ends with the attribute's path (a scope prefix before it; parameter names and
/// `{id:regex}` patterns ignored). For a handler without one: the methods and paths
/// of the requests it served, once served, else the `operationId` alone.
///
/// `x-payment-info` is `{"plan": …, "agent"?: …, "credits": n | "dynamic",
/// "settle": "before_body" | "after_body" | "default", "scheme"?: …, "network"?: …}`
/// (values as in the [manifest](super::app_manifest)). The `402` response (kept
/// when the operation already documents one) describes the `payment-required`
/// header (base64 of the JSON envelope, whose schema is added to the components as
/// `X402PaymentRequired`, field names as on the wire) and its JSON body
/// (`X402Error`: `error`, `message`).
///
/// Paid routes absent from the document are not added (the pricing table does not
/// know the scope prefixes they are served under): they are returned (entries as in
/// the [manifest](super::manifest)), for you to log or to fail on. The table holds every `#[paid]` handler linked into the
/// program, so a handler this app does not serve is returned too.
///
/// ```
/// use nvm_runtime::actix::pricing::utoipa::openapi::{
///     HttpMethod, InfoBuilder, OpenApiBuilder, PathItem, PathsBuilder, path::OperationBuilder,
/// };
///
/// let ask = OperationBuilder::new().operation_id(Some("ask"));
/// let mut doc = OpenApiBuilder::new()
///     .info(InfoBuilder::new().title("agent").version("1").build())
///     .paths(PathsBuilder::new().path("/v1/ask", PathItem::new(HttpMethod::Post, ask)))
///     .build();
/// let undocumented = nvm_runtime::actix::pricing::openapi(&mut doc);
/// for route in undocumented {
///     eprintln!("paid, but not in the OpenAPI document: {} {}", route["handler"], route["path"]);
/// }
/// ```
pub fn openapi(doc: &mut OpenApi) -> Vec<serde_json::Value> {
    super::to_json(&mark_paid(doc))
}

/// [`openapi`], the routes left out typed.
fn mark_paid(doc: &mut OpenApi) -> Vec<PricedRoute> {
    let routes = routes();
    let mut documented = vec![false; routes.len()];
    let mut marked = false;
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, operation) in operations(item) {
            let Some(operation) = operation.as_mut() else { continue };
            let Some(id) = operation.operation_id.clone() else { continue };
            let matching: Vec<usize> =
                (0..routes.len()).filter(|&i| documents(routes[i], method, path, &id)).collect();
            let Some(&first) = matching.first() else { continue };
            let info = payment_info(&PricedRoute::of(routes[first], Some(method), Some(path)));
            let agree = matching
                .iter()
                .all(|&i| payment_info(&PricedRoute::of(routes[i], Some(method), Some(path))) == info);
            if !agree {
                tracing::warn!(
                    method,
                    path,
                    operation_id = id,
                    "not marked as paid: #[paid] handlers of the same name with different terms match this operation; give it the operationId of one handler only"
                );
                continue;
            }
            for i in matching {
                documented[i] = true;
            }
            mark(operation, info);
            marked = true;
        }
    }
    if marked {
        add_schemas(doc);
    }
    let missing: Vec<(&str, &str)> = routes
        .iter()
        .zip(documented)
        .filter(|(_, documented)| !documented)
        .map(|(route, _)| (route.spec().module, route.spec().handler))
        .collect();
    super::table()
        .into_iter()
        .filter(|entry| missing.contains(&(entry.module.as_str(), entry.handler.as_str())))
        .collect()
}

/// [`openapi`] as a utoipa modifier, for `#[openapi(modifiers(&PaidOperations))]`;
/// paid routes absent from the document are logged (at `info`).
///
/// ```
/// use nvm_runtime::actix::pricing::utoipa::openapi::{InfoBuilder, OpenApiBuilder};
/// use nvm_runtime::actix::pricing::utoipa::Modify;
/// use nvm_runtime::actix::pricing::PaidOperations;
///
/// let mut doc = OpenApiBuilder::new().info(InfoBuilder::new().title("agent").version("1").build()).build();
/// PaidOperations.modify(&mut doc);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PaidOperations;

impl utoipa::Modify for PaidOperations {
    fn modify(&self, doc: &mut OpenApi) {
        for route in mark_paid(doc) {
            tracing::info!(
                handler = route.handler,
                method = route.method.as_deref().unwrap_or_default(),
                path = route.path.as_deref().unwrap_or_default(),
                "a #[paid] handler is not in the OpenAPI document"
            );
        }
    }
}

/// The operations of a path item, with their methods.
fn operations(item: &mut PathItem) -> [(&'static str, &mut Option<Operation>); 8] {
    [
        ("GET", &mut item.get),
        ("PUT", &mut item.put),
        ("POST", &mut item.post),
        ("DELETE", &mut item.delete),
        ("OPTIONS", &mut item.options),
        ("HEAD", &mut item.head),
        ("PATCH", &mut item.patch),
        ("TRACE", &mut item.trace),
    ]
}

/// Whether the operation `method path` of id `operation_id` is `route`'s.
fn documents(route: &Route, method: &str, path: &str, operation_id: &str) -> bool {
    if route.spec().handler != operation_id {
        return false;
    }
    let mut mounts = route.mounts().peekable();
    if mounts.peek().is_some() {
        let path = template(path);
        return mounts.any(|mount| {
            let suffix = super::leading_slash(&template(mount.path));
            mount.methods().any(|m| m == method) && path.ends_with(&suffix)
        });
    }
    let served = route.served();
    served.is_empty() || served.iter().any(|s| s.method == method && template(&s.pattern) == template(path))
}

/// A path with its parameters erased, actix-web's and OpenAPI's alike:
/// `/a/{id:\d+}/{tail}*` → `/a/{}/{}`.
fn template(path: &str) -> String {
    let erased = shape(path);
    let mut out = String::with_capacity(erased.len());
    let mut depth = 0usize;
    let mut chars = erased.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' => {
                if depth == 0 {
                    out.push('{');
                }
                depth += 1;
            }
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    out.push('}');
                    // A tail segment: `{tail}*`.
                    if chars.peek() == Some(&'*') {
                        chars.next();
                    }
                }
            }
            _ if depth > 0 => {}
            c => out.push(c),
        }
    }
    out
}

/// The `x-payment-info` of an entry.
fn payment_info(entry: &PricedRoute) -> serde_json::Value {
    let mut info = serde_json::json!({
        "plan": entry.plan,
        "credits": entry.credits,
        "settle": settle_label(entry.settle),
    });
    if let Some(agent) = &entry.agent {
        info["agent"] = serde_json::json!(agent);
    }
    if let Some(scheme) = &entry.scheme {
        info["scheme"] = scheme.as_str().into();
    }
    if let Some(network) = &entry.network {
        info["network"] = network.as_str().into();
    }
    info
}

/// Adds the extension and, unless documented already, the 402 response.
fn mark(operation: &mut Operation, info: serde_json::Value) {
    operation.extensions.get_or_insert_with(Default::default).insert("x-payment-info".to_owned(), info);
    operation.responses.responses.entry("402".to_owned()).or_insert_with(|| RefOr::T(payment_required()));
}

/// The 402 response of a paid operation.
fn payment_required() -> Response {
    let mut header_schema = ObjectBuilder::new()
        .schema_type(Type::String)
        .content_encoding("base64")
        .content_media_type("application/json")
        .build();
    // JSON Schema's `contentSchema` (OpenAPI 3.1), which utoipa has no field for.
    header_schema.extensions.get_or_insert_with(Default::default).insert(
        "contentSchema".to_owned(),
        serde_json::json!({ "$ref": format!("#/components/schemas/{ENVELOPE}") }),
    );
    ResponseBuilder::new()
        .description(
            "Payment Required (x402): the request carries no valid payment. The `payment-required` \
             header holds the envelope (base64 of its JSON) naming the plan to pay with; send the \
             access token minted for it in the `payment-signature` header.",
        )
        .header(
            PAYMENT_REQUIRED,
            HeaderBuilder::new()
                .schema(Schema::Object(header_schema))
                .description(Some(format!(
                    "The x402 PaymentRequired envelope: standard base64 of its JSON (schema `{ENVELOPE}`)."
                )))
                .build(),
        )
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name(ERROR_BODY))).build(),
        )
        .build()
}

/// Adds the envelope's and the error body's schemas to the components.
fn add_schemas(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(|| ComponentsBuilder::new().build());
    components.schemas.entry(ENVELOPE.to_owned()).or_insert_with(|| envelope_schema().into());
    components.schemas.entry(ERROR_BODY.to_owned()).or_insert_with(|| error_schema().into());
}

fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).description(Some(description))
}

/// The schema of `wire::PaymentRequired`, with its field names on the wire.
pub(super) fn envelope_schema() -> Schema {
    let extra = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("version", string("Always \"1\".").enum_values(Some(["1"])))
        .required("version")
        .property("agentId", string("The agent the plan is used with."))
        .property("httpVerb", string("The HTTP method of the request."));
    let accepted = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("One accepted way to pay: a plan on a scheme and network."))
        .property(
            "scheme",
            string("The payment scheme.").enum_values(Some(["nvm:erc4337", "nvm:card-delegation"])),
        )
        .required("scheme")
        .property("network", string("`eip155:84532`, `eip155:8453`, `stripe`…"))
        .required("network")
        .property("planId", string("The plan id: a 256-bit decimal number, as a string."))
        .required("planId")
        .property("extra", extra);
    let resource = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("url", string("The request path, without the query string."))
        .required("url")
        .property("description", string("A human description of the resource."))
        .property("mimeType", string("The MIME type of the resource."));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("The x402 PaymentRequired envelope: which plans are accepted for which resource."))
        .property(
            "x402Version",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([2]))
                .description(Some("Always 2.")),
        )
        .required("x402Version")
        .property("error", string("Why the payment is required, when there is a reason to give."))
        .property("resource", resource)
        .required("resource")
        .property("accepts", ArrayBuilder::new().items(accepted))
        .required("accepts")
        .property(
            "extensions",
            ObjectBuilder::new().schema_type(Type::Object).description(Some("Always {}.")),
        )
        .build()
        .into()
}

/// The JSON body of a 402.
fn error_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("error", string("`Payment Required`."))
        .required("error")
        .property("message", string("Why: no token, an invalid one, a refused one…"))
        .required("message")
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::wire::envelope::EnvelopeBuilder;

    /// The property names of an object schema, nested ones as `a.b`.
    fn names(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
        let properties =
            value.get("properties").or_else(|| value.get("items").and_then(|i| i.get("properties")));
        if let Some(serde_json::Value::Object(properties)) = properties {
            for (name, schema) in properties {
                let path = format!("{prefix}{name}");
                out.insert(path.clone());
                names(schema, &format!("{path}."), out);
            }
        }
    }

    /// The keys of a JSON value, nested ones as `a.b` (arrays looked into).
    fn keys(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (name, inner) in map {
                    let path = format!("{prefix}{name}");
                    out.insert(path.clone());
                    keys(inner, &format!("{path}."), out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| keys(item, prefix, out)),
            _ => {}
        }
    }

    #[test]
    fn the_envelope_schema_names_the_wire_fields() {
        let envelope = EnvelopeBuilder::new("1", "eip155:84532")
            .url("/ask")
            .description("d")
            .mime_type("application/json")
            .agent_id("2")
            .http_verb("POST")
            .build();
        let mut wire = serde_json::to_value(&envelope).expect("serializable");
        wire["error"] = "why".into();
        let mut on_the_wire = BTreeSet::new();
        keys(&wire, "", &mut on_the_wire);
        let schema = serde_json::to_value(super::envelope_schema()).expect("serializable");
        let mut described = BTreeSet::new();
        names(&schema, "", &mut described);
        assert_eq!(described, on_the_wire);
    }
}
