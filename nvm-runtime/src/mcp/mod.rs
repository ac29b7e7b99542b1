//! Paid MCP tools (feature `mcp`), on the official Rust MCP SDK (`rmcp`), served by the
//! same actix-web app and the same payment flow as the paid HTTP routes.
//!
//! A tool is paid with `#[paid(…)]` written above rmcp's `#[tool]`, with the arguments
//! of the HTTP form (`plan`, `agent`, `credits`, `description`), or, for tools without
//! the attribute, with a [`PaidTools`] table wrapping the router. [`McpService`] serves
//! the rmcp server at a path of the app; the app's `Payments` (its facilitator,
//! idempotency store, pending-settlement journal and telemetry) is the one the paid
//! HTTP routes use.
//!
//! # The wire (x402's MCP transport, Nevermined's MCP paywall)
//!
//! - The buyer's payment comes in the call's `_meta["x402/payment"]`: the decoded x402
//!   `PaymentPayload`, a JSON object of at most 64 KiB, re-encoded (compact JSON,
//!   unpadded base64url) as the token the facilitator verifies. Without it, the token of
//!   an `Authorization: Bearer <token>` header is read (Nevermined's older buyers;
//!   [`McpService::token_headers`] changes or removes it).
//! - The resource is the logical URL `mcp://<server>/tools/<tool>`, `POST`
//!   ([`McpService::server_name`], default `mcp-server`).
//! - A call that is unpaid, or paid with a token that is malformed, invalid, spent or
//!   for another plan, gets a tool result with `isError: true`, the `PaymentRequired`
//!   object (`x402Version`, `resource`, `accepts`, and `error` saying why) in
//!   `structuredContent` and the same JSON as the text of `content[0]`. The tool does
//!   not run.
//! - The tool's full price is verified before it runs; a result that completes without
//!   `isError` is settled before it is sent, exactly once, and carries the receipts in
//!   its `_meta`: `x402/payment-response` (the facilitator's settle response) and
//!   `nevermined/credits` (`txHash`, `creditsRedeemed`, `remainingBalance`, `planId`,
//!   `subscriberAddress`, `success`).
//! - An `isError` result, a JSON-RPC error, a panic or a cancelled call is not settled.
//!   A settlement that fails withholds the tool's content: the `PaymentRequired` result,
//!   with the failed receipt in `_meta`. A settlement whose outcome is unknown is
//!   recorded in the pending-settlement journal, and answered without `accepts` (do not
//!   pay again).
//! - A call with an `Idempotency-Key` header, or an x402 `payment-identifier`
//!   (`_meta["x402/payment"].extensions["payment-identifier"].info.id`), runs and is
//!   charged once; its retries get the stored result and receipt, marked
//!   `_meta["nevermined/idempotent-replayed"]`.
//! - The configuration's hooks run for tool calls too (before and after verify, after
//!   settle, on an unknown settlement outcome), shown the HTTP request that carried the
//!   call with a [`ToolCall`] in its extensions; `on_payment_error` does not (a tool call
//!   has no HTTP response to replace: its refusal is the tool result).
//! - `tools/list` shows each paid tool's price in its `_meta["nevermined/price"]`:
//!   `planId`, `agentId` when set, and `credits` (a decimal string, or `"dynamic"`).

mod bridge;
pub(crate) mod call;
mod render;
pub(crate) mod tools;

pub use bridge::McpService;
pub use call::ToolCall;
pub(crate) use tools::terms;
pub use tools::{PaidTools, ToolConfig, manifest};
pub(crate) use tools::{PricedTool, tool_table};
