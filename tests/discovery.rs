//! Discovery: the pricing manifest lists every paid route of the app at the full path
//! actix-web routes it (scope prefixes included, once per mount), never the source
//! text of a credits closure; and the OpenAPI document of the same routes gets
//! `x-payment-info` and a 402 on exactly the paid operations. Checked against the
//! routes the app really serves, over HTTP on loopback.

use std::collections::BTreeSet;
use std::sync::Arc;

use actix_web::{HttpRequest, get, post, routes, web};
use nvm_runtime::actix::pricing::utoipa::OpenApi as _;
use nvm_runtime::actix::pricing::utoipa::openapi::path::OperationBuilder;
use nvm_runtime::actix::pricing::utoipa::openapi::{HttpMethod, OpenApi};
// `#[utoipa::path]` and `#[derive(utoipa::OpenApi)]` name `utoipa::…`: the crate
// nvm-runtime is built with.
use nvm_runtime::actix::pricing::{manifest_handler, utoipa};
use nvm_runtime::local::LocalFacilitator;
use nvm_runtime::paid;
use nvm_tests::{DEMO_AGENT_ID, DEMO_PLAN_ID, TestServer, http, payments_for, serve};

/// At the top level.
#[utoipa::path(post, path = "/ask")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 1, description = "Ask the agent")]
#[post("/ask")]
async fn ask() -> &'static str {
    "answer"
}

/// Mounted twice: in `/v1` and in `/v2`.
#[utoipa::path(get, path = "/v1/models")]
#[paid(plan = DEMO_PLAN_ID, credits = 2)]
#[get("/models")]
async fn models() -> &'static str {
    "models"
}

/// A path parameter with a pattern, in a nested scope with a parameter of its own.
#[utoipa::path(get, path = "/v1/orgs/{org}/models/{id}")]
#[paid(plan = DEMO_PLAN_ID, credits = 3, settle = "after_body")]
#[get("/models/{id:[0-9]+}")]
async fn model(path: web::Path<(String, u64)>) -> String {
    format!("{} {}", path.0, path.1)
}

/// Dynamic credits: a closure whose text must never be published.
#[utoipa::path(post, path = "/v1/generate")]
#[paid(plan = DEMO_PLAN_ID, credits = |req: &HttpRequest| (req.query_string().len() as u64).max(1) * 7)]
#[post("/generate")]
async fn generate() -> &'static str {
    "generated"
}

/// No routing attribute: registered by hand (at two paths), learned from the requests
/// it serves.
#[utoipa::path(post, path = "/tools/{tool}/run")]
#[paid(plan = DEMO_PLAN_ID, credits = 4)]
async fn by_hand() -> &'static str {
    "ran"
}

/// Two routing attributes: each resource has its own method.
#[utoipa::path(get, path = "/items")]
#[paid(plan = DEMO_PLAN_ID, credits = 5)]
#[routes]
#[get("/items")]
#[put("/archive/items")]
async fn items() -> &'static str {
    "items"
}

/// Not paid.
#[utoipa::path(get, path = "/health")]
#[get("/health")]
async fn health() -> &'static str {
    "ok"
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(ask, models, model, generate, by_hand, items, health))]
struct ApiDoc;

/// The closure's text, reversed so that this binary holds it only if the macro wrote
/// it: as the compact rendering and as the compiler's token rendering.
const CLOSURE_TEXT_REVERSED: [&str; 2] =
    ["46u sa )(nel.)(gnirts_yreuq.qer", "46u sa )( nel . )( gnirts_yreuq . qer"];

/// Every paid route of the app, as `(method, path, handler)`.
fn paid_routes() -> BTreeSet<(String, String, String)> {
    [
        ("POST", "/ask", "ask"),
        ("GET", "/v1/models", "models"),
        ("GET", "/v2/models", "models"),
        ("GET", "/v1/orgs/{org}/models/{id:[0-9]+}", "model"),
        ("POST", "/v1/generate", "generate"),
        ("POST", "/tools/{tool}/run", "by_hand"),
        ("PUT", "/jobs/{job}", "by_hand"),
        ("GET", "/items", "items"),
        ("PUT", "/archive/items", "items"),
    ]
    .into_iter()
    .map(|(m, p, h)| (m.to_owned(), p.to_owned(), h.to_owned()))
    .collect()
}

fn start() -> (Arc<LocalFacilitator>, TestServer) {
    let local = Arc::new(LocalFacilitator::start().expect("local facilitator"));
    let payments = payments_for(&local).build().expect("payments");
    let server = serve(Some(payments), |cfg: &mut web::ServiceConfig| {
        cfg.service(ask)
            .service(items)
            .service(health)
            .service(
                web::scope("/v1")
                    .service(models)
                    .service(generate)
                    .service(web::scope("/orgs/{org}").service(model)),
            )
            .service(web::scope("/v2").service(models))
            .route("/tools/{tool}/run", web::post().to(by_hand))
            .route("/jobs/{job}", web::put().to(by_hand))
            .service(web::scope("/meta").route("/pricing", web::get().to(manifest_handler)));
    });
    (local, server)
}

/// A concrete path of `pattern`: `7` in a `{name:regex}` segment, `x7` in another.
fn concrete(pattern: &str) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map(|i| open + i).expect("balanced");
        out.push_str(if rest[open..close].contains(':') { "7" } else { "x7" });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

async fn fetch_manifest(server: &TestServer) -> serde_json::Value {
    let response = http().get(server.at("/meta/pricing")).send().await.expect("the manifest answers");
    assert_eq!(response.status(), 200);
    response.json().await.expect("a JSON manifest")
}

#[actix_web::test]
async fn the_manifest_lists_every_paid_route_at_its_full_path_and_each_answers_402() {
    let (_local, server) = start();
    // The handler registered by hand is known once it has served a request, at each
    // path it is mounted at.
    let first = http().post(server.at("/tools/search/run")).send().await.unwrap();
    assert_eq!(first.status(), 402);
    let second = http().put(server.at("/jobs/7")).send().await.unwrap();
    assert_eq!(second.status(), 402);

    let body = fetch_manifest(&server).await;
    let routes = body["routes"].as_array().expect("routes");
    let listed: BTreeSet<(String, String, String)> = routes
        .iter()
        .map(|r| {
            let field = |name: &str| r[name].as_str().unwrap_or_else(|| panic!("{name} in {r}")).to_owned();
            (field("method"), field("path"), field("handler"))
        })
        .collect();
    assert_eq!(listed, paid_routes(), "{body:#}");
    assert_eq!(routes.len(), listed.len(), "one entry per route: {body:#}");

    // Every listed route is a paid route of this app: without a token, a 402.
    for (method, path, handler) in &listed {
        let url = server.at(&concrete(path));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = http().request(method.clone(), &url).send().await.unwrap();
        assert_eq!(response.status(), 402, "{method} {url} ({handler})");
        assert!(response.headers().contains_key("payment-required"), "{method} {url}");
    }
    // …and an unpaid one is not listed.
    assert_eq!(http().get(server.at("/health")).send().await.unwrap().status(), 200);

    let entry = |path: &str| routes.iter().find(|r| r["path"] == path).unwrap_or_else(|| panic!("{path}"));
    let asked = entry("/ask");
    assert_eq!(asked["plan"], DEMO_PLAN_ID, "{asked}");
    assert_eq!(asked["agent"], DEMO_AGENT_ID, "{asked}");
    assert_eq!(asked["credits"], 1, "{asked}");
    assert_eq!(asked["settle"], "default", "{asked}");
    assert_eq!(asked["description"], "Ask the agent", "{asked}");
    assert_eq!(entry("/v2/models")["credits"], 2);
    assert_eq!(entry("/v1/orgs/{org}/models/{id:[0-9]+}")["settle"], "after_body");
    assert_eq!(entry("/tools/{tool}/run")["credits"], 4);
    let generated = entry("/v1/generate");
    assert_eq!(generated["credits"], "dynamic", "{generated}");
    assert!(generated.get("agent").is_none(), "{generated}");
}

#[actix_web::test]
async fn no_credits_closure_is_published_or_compiled_in_as_text() {
    let (_local, server) = start();
    let body = fetch_manifest(&server).await.to_string();
    let needles: Vec<String> =
        CLOSURE_TEXT_REVERSED.iter().map(|text| text.chars().rev().collect()).collect();
    for needle in &needles {
        assert!(!body.contains(needle.as_str()), "{body}");
    }
    assert!(!body.contains("query_string"), "{body}");
    assert!(!body.to_ascii_lowercase().contains("source"), "{body}");

    // Not in the binary either: the seller's pricing logic is compiled, not stored.
    let exe = std::env::current_exe().expect("the test binary's path");
    let bytes = std::fs::read(&exe).expect("the test binary");
    assert!(bytes.len() > 100_000, "{} is not the test binary", exe.display());
    for needle in &needles {
        let found = bytes.windows(needle.len()).any(|window| window == needle.as_bytes());
        assert!(!found, "`{needle}` is in {}", exe.display());
    }
}

/// The operations of `doc` with `x-payment-info`, as `(method, path)`, with the info.
fn marked(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            if let Some(info) = operation.get("x-payment-info") {
                out.push((method.to_ascii_uppercase(), path.clone(), info.clone()));
            }
        }
    }
    out
}

#[actix_web::test]
async fn the_openapi_document_marks_exactly_the_paid_operations() {
    let (_local, server) = start();
    // `by_hand` is matched on the methods and paths of the requests it served.
    let first = http().post(server.at("/tools/search/run")).send().await.unwrap();
    assert_eq!(first.status(), 402);
    assert_eq!(http().put(server.at("/jobs/7")).send().await.unwrap().status(), 402);
    let manifest = fetch_manifest(&server).await;

    let mut doc: OpenApi = ApiDoc::openapi();
    // The second mount of `models`, the second routes of `items` and `by_hand`, and an operation no
    // handler serves, as utoipa-actix-web or a hand-written document would add them.
    doc.paths.add_path_operation(
        "/v2/models",
        vec![HttpMethod::Get],
        OperationBuilder::new().operation_id(Some("models")),
    );
    doc.paths.add_path_operation(
        "/archive/items",
        vec![HttpMethod::Put],
        OperationBuilder::new().operation_id(Some("items")),
    );
    doc.paths.add_path_operation(
        "/jobs/{job}",
        vec![HttpMethod::Put],
        OperationBuilder::new().operation_id(Some("by_hand")),
    );
    doc.paths.add_path_operation(
        "/v1/stats",
        vec![HttpMethod::Get],
        OperationBuilder::new().operation_id(Some("stats")),
    );
    // The table holds every `#[paid]` handler of the program: here also one of the
    // test helpers (`nvm_tests::paid_content`), which this app does not serve.
    let undocumented = nvm_runtime::actix::pricing::openapi(&mut doc);
    let ours: Vec<_> = undocumented.iter().filter(|r| r["handler"] != "paid_content").collect();
    assert!(ours.is_empty(), "{ours:?}");
    let json = serde_json::to_value(&doc).unwrap();

    // Exactly the paid routes (OpenAPI writes `{id}` where actix-web has `{id:[0-9]+}`).
    let found: BTreeSet<(String, String)> = marked(&json).into_iter().map(|(m, p, _)| (m, p)).collect();
    let expected: BTreeSet<(String, String)> =
        paid_routes().into_iter().map(|(m, p, _)| (m, p.replace("{id:[0-9]+}", "{id}"))).collect();
    assert_eq!(found, expected, "{json:#}");

    // Each with the manifest's terms and a 402 describing the envelope.
    let routes = manifest["routes"].as_array().unwrap();
    for (method, path, info) in marked(&json) {
        let entry = routes
            .iter()
            .find(|r| {
                r["method"] == method.as_str()
                    && r["path"].as_str().unwrap().replace("{id:[0-9]+}", "{id}") == path
            })
            .unwrap_or_else(|| panic!("{method} {path} in the manifest"));
        for key in ["plan", "credits", "settle"] {
            assert_eq!(info[key], entry[key], "{key} of {method} {path}: {info}");
        }
        assert_eq!(info.get("agent"), entry.get("agent"), "{method} {path}: {info}");
        let operation = &json["paths"][&path][method.to_ascii_lowercase()];
        let response = &operation["responses"]["402"];
        assert_eq!(
            response["headers"]["payment-required"]["schema"]["contentSchema"]["$ref"],
            "#/components/schemas/X402PaymentRequired",
            "{method} {path}: {response}"
        );
        assert_eq!(response["headers"]["payment-required"]["schema"]["contentEncoding"], "base64");
        assert!(response["content"]["application/json"]["schema"]["$ref"].is_string(), "{response}");
    }
    assert_eq!(json["paths"]["/v1/generate"]["post"]["x-payment-info"]["credits"], "dynamic");
    assert!(!json.to_string().contains("query_string"));

    // Unpaid operations are left as they were.
    for (path, method) in [("/health", "get"), ("/v1/stats", "get")] {
        let operation = &json["paths"][path][method];
        assert!(operation.get("x-payment-info").is_none(), "{path}: {operation}");
        assert!(operation["responses"].get("402").is_none(), "{path}: {operation}");
    }

    // The envelope's schema, with the wire's field names.
    let envelope = &json["components"]["schemas"]["X402PaymentRequired"];
    let required: BTreeSet<&str> =
        envelope["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(required, BTreeSet::from(["x402Version", "resource", "accepts"]), "{envelope}");
    let accepted = &envelope["properties"]["accepts"]["items"];
    assert_eq!(accepted["properties"]["planId"]["type"], "string", "{envelope}");
    assert!(json["components"]["schemas"]["X402Error"].is_object());

    // A paid 402 decodes to that envelope.
    let response = http().post(server.at("/ask")).send().await.unwrap();
    let header = response.headers()["payment-required"].to_str().unwrap().to_owned();
    let decoded = nvm_runtime::wire::PaymentRequired::from_header(&header).expect("an envelope");
    assert_eq!(decoded.accepts.first().map(|a| a.plan_id.as_str()), Some(DEMO_PLAN_ID));
}

#[test]
fn a_document_without_the_paid_routes_gets_them_back_as_undocumented() {
    let mut doc: OpenApi = utoipa::openapi::OpenApiBuilder::new()
        .info(utoipa::openapi::InfoBuilder::new().title("empty").version("1").build())
        .build();
    let undocumented = nvm_runtime::actix::pricing::openapi(&mut doc);
    let handlers: BTreeSet<&str> = undocumented.iter().filter_map(|r| r["handler"].as_str()).collect();
    assert_eq!(
        handlers,
        BTreeSet::from(["ask", "by_hand", "generate", "items", "model", "models", "paid_content"])
    );
    // Nothing to mark: the document is untouched (no components added).
    assert!(doc.components.is_none());
}
