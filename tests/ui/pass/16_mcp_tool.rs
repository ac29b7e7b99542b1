use nvm_runtime::{paid, PaymentContext};
use rmcp::handler::server::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::JsonObject;
use rmcp::{schemars, tool, tool_router};

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Query {
    query: String,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct Answer {
    words: usize,
}

const PRICE: u64 = 3;

fn by_words(args: &JsonObject) -> u64 {
    args.get("query").and_then(|q| q.as_str()).map_or(1, |q| q.split_whitespace().count() as u64)
}

#[derive(Clone)]
struct Agent {
    tool_router: ToolRouter<Agent>,
}

#[tool_router]
impl Agent {
    /// Every argument form of the HTTP attribute that fits a tool; a renamed tool with a
    /// `Json` output keeps its schema.
    #[paid(plan = env("NVM_PLAN_ID"), agent = "7", credits = PRICE, description = "Count words")]
    #[tool(name = "count_words")]
    async fn count(&self, Parameters(q): Parameters<Query>) -> Json<Answer> {
        Json(Answer { words: q.query.split_whitespace().count() })
    }

    /// Priced by a function of the arguments, charged by usage.
    #[paid(plan = "1", credits = by_words)]
    #[tool]
    async fn priced(&self, Parameters(q): Parameters<Query>, payment: PaymentContext) -> Result<String, String> {
        payment.charge(1).map_err(|e| e.to_string())?;
        Ok(q.query)
    }

    /// Priced by a closure of the arguments.
    #[paid(plan = "1", credits = |args: &JsonObject| args.len() as u64)]
    #[tool]
    async fn closure(&self) -> String {
        String::new()
    }
}

fn main() {
    let router = Agent { tool_router: Agent::tool_router() }.tool_router;
    let tool = router.get("count_words").expect("renamed");
    assert!(tool.output_schema.is_some());
    assert_eq!(tool.meta.as_ref().and_then(|m| m.get("nevermined/price")).map(|p| p["credits"].clone()), Some("3".into()));
}
