use nvm_runtime::{paid, PaymentContext};
use rmcp::handler::server::tool::ToolRouter;
use rmcp::{tool, tool_router};

#[derive(Clone)]
struct Agent {
    tool_router: ToolRouter<Agent>,
}

#[tool_router]
impl Agent {
    /// Settled after the body, cached, speculative, priced asynchronously: none of it fits a
    /// tool.
    #[paid(plan = "1", settle = "after_body", cache_control = "private, max-age=60", speculative = true, credits = async |_: &rmcp::model::JsonObject| 1)]
    #[tool]
    async fn ask(&self, payment: PaymentContext) -> String {
        format!("{:?}", payment.payer())
    }

    /// Not async.
    #[paid(plan = "1")]
    #[tool]
    fn sync_tool(&self) -> String {
        String::new()
    }

    /// A price in `tools/list` that `#[paid]` writes itself.
    #[paid(plan = "1")]
    #[tool(meta = rmcp::model::MetaObject::default())]
    async fn with_meta(&self) -> String {
        String::new()
    }
}

fn main() {
    let _ = Agent { tool_router: Agent::tool_router() }.tool_router;
}
