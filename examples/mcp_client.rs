//! The buyer's MCP side: calls a paid MCP tool, pays its `PaymentRequired` result by
//! itself, and prints the answer and the receipt.
//!
//! Start the MCP example first, then run the line it prints, e.g.:
//!
//! ```text
//! NVM_API_KEY='local:eyJ…' NVM_BACKEND_URL=http://127.0.0.1:PORT \
//!   cargo run -p nvm-examples --example mcp_client -- http://127.0.0.1:3000/mcp ask '{"query":"hi"}'
//! ```
//!
//! `NVM_API_KEY` is the subscriber's key. The client opens an MCP session (on this
//! crate's `reqwest`), calls the tool unpaid, reads the `PaymentRequired`, mints an
//! access token, calls again with it in `_meta["x402/payment"]`, and prints the receipt.
//! It exits 1 when the answer is not a paid, settled result.

use nvm_runtime::client::mcp::{McpHttpClient, PayingTools};
use nvm_runtime::client::{PaymentOutcome, Subscriber};
use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "http://127.0.0.1:3000/mcp".to_owned());
    let tool = args.next().unwrap_or_else(|| "ask".to_owned());
    let arguments = args.next().unwrap_or_else(|| r#"{"query":"What is the meaning of life?"}"#.to_owned());
    let Ok(serde_json::Value::Object(arguments)) = serde_json::from_str(&arguments) else {
        fail(2, &format!("the tool's arguments are not a JSON object: {arguments}"));
    };
    let subscriber = Subscriber::from_env().unwrap_or_else(|error| {
        fail(2, &format!("{error}\n(run the MCP example: it prints the line to run this client with)"))
    });
    let config = StreamableHttpClientTransportConfig::with_uri(url.clone());
    let transport = StreamableHttpClientTransport::with_client(McpHttpClient::default(), config);
    let session = ().serve(transport).await.unwrap_or_else(|error| fail(1, &format!("{url}: {error}")));
    let mut call = CallToolRequestParams::new(tool.clone());
    call.arguments = Some(arguments);
    let paid = PayingTools::new(subscriber)
        .call(session.peer(), call)
        .await
        .unwrap_or_else(|error| fail(1, &error.to_string()));
    let text: Vec<&str> =
        paid.result.content.iter().filter_map(|c| c.as_text()).map(|t| t.text.as_str()).collect();
    println!("answer: {}", text.join("\n"));
    match paid.outcome {
        PaymentOutcome::Settled(receipt) if paid.result.is_error != Some(true) => {
            println!("credits redeemed: {}", receipt.credits_redeemed.unwrap_or_default());
            let remaining = receipt.remaining_balance.map(|a| a.to_string()).unwrap_or_default();
            println!("remaining balance: {remaining}");
            println!("transaction: {}", receipt.transaction);
        }
        // Anything else is not what a buyer paid for: say what happened, exit 1.
        outcome => fail(1, &format!("the tool {tool} answered without a settled payment: {outcome:?}")),
    }
    let _ = session.cancel().await;
}

fn fail(code: i32, message: &str) -> ! {
    eprintln!("mcp_client: {message}");
    std::process::exit(code)
}
