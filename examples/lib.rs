//! Helpers shared by the examples: read the settings from the environment, or start
//! the embedded local facilitator when no `NVM_API_KEY` is set.

/// An error and its causes, `"a: b: c"`: what the examples print when they stop on an
/// error (a [`ConfigError`](nvm_runtime::error::ConfigError)'s cause, for instance why a
/// journal file could not be opened, is its `source()`).
pub fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub mod settings {
    //! Where the examples' plan, agent and backend come from.

    use std::sync::OnceLock;

    use nvm_runtime::Payments;
    use nvm_runtime::local::LocalFacilitator;

    static PLAN_ID: OnceLock<String> = OnceLock::new();
    static AGENT_ID: OnceLock<String> = OnceLock::new();

    /// The plan id in use (set by [`from_env`]).
    pub fn plan_id() -> &'static str {
        PLAN_ID.get().map_or("", String::as_str)
    }

    /// The agent id in use, or `""` when there is none (set by [`from_env`]).
    pub fn agent_id() -> &'static str {
        AGENT_ID.get().map_or("", String::as_str)
    }

    /// `PORT`, default 3000.
    pub fn port() -> u16 {
        std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(3000)
    }

    /// Exits with code 2 and a message naming the fix when the example cannot listen on
    /// `127.0.0.1:port`: in use, the message says that `PORT` picks the port.
    pub fn exit_bind_failed(example: &str, port: u16, error: &std::io::Error) -> ! {
        eprintln!("{example}: {}", bind_failed_message(example, port, error));
        std::process::exit(2);
    }

    /// What [`exit_bind_failed`] prints after the example's name.
    pub fn bind_failed_message(example: &str, port: u16, error: &std::io::Error) -> String {
        let retry = format!("PORT={} cargo run -p nvm-examples --example {example}", port.wrapping_add(1));
        if error.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "127.0.0.1:{port} is already in use (another server, or this example still running). \
                 The environment variable PORT picks the port: {retry} (PORT=0 picks a free one)"
            )
        } else {
            format!(
                "cannot listen on 127.0.0.1:{port}: {error}. The environment variable PORT picks the port: {retry}"
            )
        }
    }

    /// The configuration an example runs with.
    #[derive(Debug)]
    pub struct Setup {
        /// The seller's configuration.
        pub payments: Payments,
        /// The embedded facilitator, when no `NVM_API_KEY` is set.
        pub local: Option<LocalFacilitator>,
    }

    /// [`from_env`], or a message on stderr and exit code 2 naming the example.
    pub fn from_env_or_exit(example: &str) -> Setup {
        from_env().unwrap_or_else(|message| {
            eprintln!("{example}: {message}");
            std::process::exit(2);
        })
    }

    /// `payments.prepare()` (plans fetched before any traffic), or a message on stderr
    /// and exit code 2 naming the example.
    pub async fn prepare_or_exit(example: &str, payments: &Payments) {
        if let Err(error) = payments.prepare().await {
            eprintln!("{example}: {}", crate::report(&error));
            std::process::exit(2);
        }
    }

    /// Reads `NVM_API_KEY` and `NVM_PLAN_ID` (and `NVM_AGENT_ID`), or starts the embedded
    /// local facilitator when no key is set.
    pub fn from_env() -> Result<Setup, String> {
        let has_key = std::env::var("NVM_API_KEY").is_ok_and(|k| !k.trim().is_empty());
        if has_key {
            let payments = Payments::from_env().map_err(|e| crate::report(&e))?;
            let plan = std::env::var("NVM_PLAN_ID")
                .ok()
                .filter(|p| !p.trim().is_empty())
                .ok_or("NVM_API_KEY is set but NVM_PLAN_ID is not: export NVM_PLAN_ID=<your plan id>")?;
            let _ = PLAN_ID.set(plan);
            let _ = AGENT_ID.set(std::env::var("NVM_AGENT_ID").unwrap_or_default());
            return Ok(Setup { payments, local: None });
        }
        let local = LocalFacilitator::start().map_err(|e| format!("starting the local facilitator: {e}"))?;
        let payments = Payments::builder()
            .api_key(local.builder_api_key())
            .backend_url(local.backend_url())
            .build()
            .map_err(|e| crate::report(&e))?;
        let _ = PLAN_ID.set(local.plan_id().to_owned());
        let _ = AGENT_ID.set(local.agent_id().to_owned());
        Ok(Setup { payments, local: Some(local) })
    }

    impl Setup {
        /// What to print at start-up: where the server is, and with the local facilitator
        /// three curl lines to paste (402, mint, pay).
        pub fn banner(&self, url: &str) -> String {
            self.banner_for(url, "POST /ask: 1 credit, GET /health, GET /pricing", "/ask")
        }

        /// What the MCP example prints: where the server is, and with the local
        /// facilitator the curl lines of an MCP session that calls a paid tool (unpaid,
        /// then paid with a token in the `Authorization` header).
        pub fn mcp_banner(&self, url: &str) -> String {
            let mut out = self.banner_for(
                url,
                "POST /ask: 1 credit, POST /mcp: tools ask (1 credit) and summarize (by detail)",
                "/ask",
            );
            if self.local.is_none() {
                return out;
            }
            let headers =
                "-H 'content-type: application/json' -H 'accept: application/json, text/event-stream'";
            out.push_str(&format!(
                "\n\
                 # MCP: 4. open a session (initialize, then initialized)\n\
                 SID=$(curl -si -X POST {url}/mcp {headers} -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"curl\",\"version\":\"1\"}}}}}}' | grep -i '^mcp-session-id:' | cut -d' ' -f2 | tr -d '\\r')\n\
                 curl -s -X POST {url}/mcp {headers} -H \"mcp-session-id: $SID\" -d '{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}}'\n\
                 \n\
                 # MCP: 5. call the tool without paying: isError, the PaymentRequired in structuredContent\n\
                 curl -s -X POST {url}/mcp {headers} -H \"mcp-session-id: $SID\" -d '{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{{\"name\":\"ask\",\"arguments\":{{\"query\":\"hello\"}}}}}}'\n\
                 \n\
                 # MCP: 6. pay (the token of step 2; or its decoded JSON in params._meta[\"x402/payment\"]): the answer, receipts in _meta\n\
                 curl -s -X POST {url}/mcp {headers} -H \"mcp-session-id: $SID\" -H \"authorization: Bearer $TOKEN\" -d '{{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{{\"name\":\"ask\",\"arguments\":{{\"query\":\"hello\"}}}}}}'\n\
                 \n\
                 # Or let the Rust MCP client do all of it (session, 402 result, mint, pay, receipt):\n\
                 NVM_API_KEY='{key}' NVM_BACKEND_URL={backend} cargo run -p nvm-examples --example mcp_client -- {url}/mcp ask '{{\"query\":\"hello\"}}'\n",
                key = self.local.as_ref().map_or("", |l| l.subscriber_api_key()),
                backend = self.local.as_ref().map_or("", |l| l.backend_url()),
            ));
            out
        }

        /// [`Setup::banner`] for another set of routes; `paid_path` is the one the curl
        /// lines call.
        pub fn banner_for(&self, url: &str, routes: &str, paid_path: &str) -> String {
            let mut out = format!("Agent listening on {url}  ({routes})\n");
            let Some(local) = &self.local else {
                out.push_str(&format!("Using the Nevermined backend at {}\n", self.payments.backend_url()));
                return out;
            };
            let accepted = serde_json::json!({
                "accepted": {
                    "scheme": "nvm:erc4337",
                    "network": "eip155:84532",
                    "planId": local.plan_id(),
                    "extra": {"version": "1", "agentId": local.agent_id()},
                }
            });
            out.push_str(&format!(
                "Local facilitator at {backend} (a demo subscriber holds {credits} credits)\n\
                 \n\
                 # 1. Ask without paying: 402 and a payment-required header\n\
                 curl -si -X POST {url}{paid_path} -H 'content-type: application/json' -d '{{\"query\":\"hello\"}}'\n\
                 \n\
                 # 2. Mint an access token as the subscriber\n\
                 TOKEN=$(curl -s -X POST {backend}/api/v1/x402/permissions -H 'authorization: Bearer {key}' -H 'content-type: application/json' -d '{body}' | sed -E 's/.*\"accessToken\":\"([^\"]+)\".*/\\1/'); echo \"$TOKEN\"\n\
                 \n\
                 # 3. Ask again, paying: 200 and a payment-response receipt\n\
                 curl -si -X POST {url}{paid_path} -H 'content-type: application/json' -H \"payment-signature: $TOKEN\" -d '{{\"query\":\"hello\"}}'\n\
                 \n\
                 # Or let the client example do all of it:\n\
                 NVM_API_KEY='{key}' NVM_BACKEND_URL={backend} cargo run -p nvm-examples --example client -- {url}{paid_path}\n",
                backend = local.backend_url(),
                credits = local.balance(local.plan_id(), local.subscriber_address()),
                key = local.subscriber_api_key(),
                body = accepted,
            ));
            out
        }
    }
}

/// What the benchmarks print about the machine they ran on.
pub mod machine {
    /// `"2 CPUs (AMD EPYC)"`: the CPU count and model, from `/proc/cpuinfo`.
    pub fn cpus() -> String {
        let cpus = std::thread::available_parallelism().map_or(0, usize::from);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown CPU", |(_, m)| m.trim())
            .to_owned();
        format!("{cpus} CPUs ({model})")
    }
}
