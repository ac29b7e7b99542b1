//! An agent that sells the same answers over HTTP and as MCP tools, from one actix-web
//! app and one payment configuration.
//!
//! ```text
//! cargo run -p nvm-examples --example mcp
//! ```
//!
//! - `POST /ask` with `{"query": "..."}`: paid HTTP, 1 credit.
//! - `POST /mcp`: the MCP endpoint (streamable HTTP), with two paid tools:
//!   - `ask` (`{"query": "..."}`): 1 credit, fixed;
//!   - `summarize` (`{"text": "...", "detail": 1..5}`): priced by its arguments, 1 credit
//!     per detail level (it charges 1 credit less from inside when the text is short).
//!
//! With no `NVM_API_KEY` set, it starts the embedded local facilitator and prints how to
//! call both surfaces with curl (the JSON-RPC requests, the token in
//! `_meta["x402/payment"]`). With `NVM_API_KEY` and `NVM_PLAN_ID` it uses that backend.
//! The port comes from `PORT` (default 3000).

use actix_web::{App, HttpResponse, HttpServer, Responder, post, web};
use nvm_examples::settings;
use nvm_runtime::mcp::McpService;
use nvm_runtime::{PaymentContext, paid};
use rmcp::handler::server::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{JsonObject, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
struct Query {
    /// The question.
    query: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Summarize {
    /// The text to summarize.
    text: String,
    /// How detailed the summary is, 1 to 5 (1 credit each).
    detail: u64,
}

/// What `summarize` costs: its detail level, 1 to 5.
fn by_detail(args: &JsonObject) -> u64 {
    args.get("detail").and_then(serde_json::Value::as_u64).unwrap_or(1).clamp(1, 5)
}

/// The agent's MCP server: one per MCP session.
#[derive(Clone)]
struct Agent {
    tool_router: ToolRouter<Agent>,
}

#[tool_router]
impl Agent {
    fn new() -> Self {
        Agent { tool_router: Self::tool_router() }
    }

    /// Answers a question.
    #[paid(plan = settings::plan_id(), agent = settings::agent_id(), credits = 1)]
    #[tool]
    async fn ask(&self, Parameters(q): Parameters<Query>, payment: PaymentContext) -> String {
        format!("You asked: {}. The answer is 42 (paid by {}).", q.query, payment.payer().unwrap_or("?"))
    }

    /// Summarizes a text, at the detail asked for.
    #[paid(plan = settings::plan_id(), agent = settings::agent_id(), credits = by_detail)]
    #[tool]
    async fn summarize(&self, Parameters(s): Parameters<Summarize>, payment: PaymentContext) -> String {
        let words: Vec<&str> = s.text.split_whitespace().collect();
        if words.len() < 10 {
            // A short text is cheaper than its detail level: charge one credit less.
            let _ = payment.charge(payment.credits().saturating_sub(1).max(1));
        }
        let keep = (words.len() * s.detail.clamp(1, 5) as usize).div_ceil(10).max(1);
        words.into_iter().take(keep).collect::<Vec<_>>().join(" ")
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Agent {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// The same answer over plain HTTP, 1 credit.
#[paid(plan = settings::plan_id(), agent = settings::agent_id(), credits = 1, description = "Ask the agent")]
#[post("/ask")]
async fn ask(q: web::Json<Query>, payment: PaymentContext) -> impl Responder {
    HttpResponse::Ok().json(serde_json::json!({
        "answer": format!("You asked: {}. The answer is 42.", q.query),
        "payer": payment.payer(),
    }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let setup = settings::from_env_or_exit("mcp");
    let port = settings::port();
    settings::prepare_or_exit("mcp", &setup.payments).await;
    let mcp = McpService::new(|| Ok(Agent::new())).server_name("example-agent");
    let server = HttpServer::new({
        let payments = setup.payments.clone();
        move || App::new().app_data(payments.clone()).service(ask).service(mcp.resource("/mcp"))
    })
    // An MCP answer is an SSE stream written in parts: without this, each part waits for
    // the client's delayed ACK of the one before (Nagle's algorithm): 40 ms a tool call.
    .tcp_nodelay(true)
    .bind(("127.0.0.1", port))
    .unwrap_or_else(|error| settings::exit_bind_failed("mcp", port, &error));
    let url = format!("http://{}", server.addrs()[0]);
    println!("{}", setup.mcp_banner(&url));
    server.run().await
}
