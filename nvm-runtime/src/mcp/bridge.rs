//! The MCP endpoint inside the actix-web app: rmcp's streamable HTTP server, reached
//! through an actix-web resource. actix-web speaks `http` 0.2 and rmcp `http` 1: the
//! request's method, URI, headers and body are carried over by bytes, and the answer
//! (JSON, or an SSE stream) goes back chunk by chunk, unbuffered.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use http_body_util::{BodyDataStream, Full};
use rmcp::ServerHandler;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use super::call::Settings;
use crate::actix::Payments;

/// The most bytes of one MCP request read by default: 4 MiB.
pub(crate) const DEFAULT_MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;

/// An rmcp server (its tools paid with `#[paid]` or [`PaidTools`](super::PaidTools))
/// served by the actix-web app, at the path of [`McpService::resource`].
///
/// Serve it with `HttpServer::tcp_nodelay(true)`: rmcp writes an answer as an SSE
/// stream, in parts (a priming event, the answer, the end of the chunked body), and with
/// Nagle's algorithm on (actix-web's default) each part waits for the client's delayed
/// ACK of the one before: about 40 ms added to every tool call on Linux.
///
/// Every call reaches the tools with the app's [`Payments`] (registered once with
/// `App::app_data`, as for the paid HTTP routes), the HTTP headers of the request that
/// carried it, and the settings of this service (the server's name in the logical
/// resource URLs, where an access token may come from besides `_meta`).
///
/// ```
/// use actix_web::App;
/// use nvm_runtime::mcp::McpService;
/// use nvm_runtime::Payments;
/// use rmcp::{ServerHandler, tool, tool_handler, tool_router, handler::server::tool::ToolRouter};
///
/// #[derive(Clone)]
/// struct Agent { tool_router: ToolRouter<Agent> }
///
/// #[tool_router]
/// impl Agent {
///     /// Says hello.
///     #[tool]
///     async fn hello(&self) -> String { "hello".to_owned() }
/// }
///
/// #[tool_handler(router = self.tool_router)]
/// impl ServerHandler for Agent {}
///
/// # fn app(payments: Payments) {
/// let mcp = McpService::new(|| Ok(Agent { tool_router: Agent::tool_router() })).server_name("my-agent");
/// let _app = App::new().app_data(payments).service(mcp.resource("/mcp"));
/// # }
/// ```
pub struct McpService<S> {
    inner: Arc<StreamableHttpService<S, LocalSessionManager>>,
    settings: Arc<Settings>,
    max_body: usize,
}

impl<S> Clone for McpService<S> {
    fn clone(&self) -> Self {
        McpService {
            inner: Arc::clone(&self.inner),
            settings: Arc::clone(&self.settings),
            max_body: self.max_body,
        }
    }
}

impl<S> std::fmt::Debug for McpService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpService")
            .field("server_name", &self.settings.server_name)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl<S: ServerHandler + Send + 'static> McpService<S> {
    /// A service making one `S` per MCP session with `factory`, on rmcp's default
    /// streamable HTTP settings (sessions, SSE answers, requests from `localhost`,
    /// `127.0.0.1` and `::1` only: see [`McpService::with_config`] to serve other
    /// hosts).
    pub fn new(factory: impl Fn() -> Result<S, std::io::Error> + Send + Sync + 'static) -> Self {
        Self::with_config(factory, StreamableHttpServerConfig::default())
    }

    /// A service with rmcp's streamable HTTP settings `config` (allowed hosts, JSON
    /// answers instead of SSE, stateless mode, keep-alive).
    pub fn with_config(
        factory: impl Fn() -> Result<S, std::io::Error> + Send + Sync + 'static,
        config: StreamableHttpServerConfig,
    ) -> Self {
        let manager = Arc::new(LocalSessionManager::default());
        McpService {
            inner: Arc::new(StreamableHttpService::new(factory, manager, config)),
            settings: Arc::new(Settings::default()),
            max_body: DEFAULT_MAX_REQUEST_BODY,
        }
    }
}

impl<S> McpService<S> {
    /// The server's name in the logical resource URL of each tool,
    /// `mcp://<name>/tools/<tool>` (default `mcp-server`, as Nevermined's MCP paywall).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.settings).server_name = name.into();
        self
    }

    /// The HTTP headers an access token is read from when the call's
    /// `_meta["x402/payment"]` has none, first non-empty wins; a `Bearer ` prefix is
    /// removed. Default: `authorization` (Nevermined's older MCP buyers). An empty list
    /// reads `_meta` only.
    pub fn token_headers<I, H>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = H>,
        H: AsRef<str>,
    {
        Arc::make_mut(&mut self.settings).token_headers =
            headers.into_iter().map(|h| h.as_ref().to_ascii_lowercase()).collect();
        self
    }

    /// The most bytes of one MCP request (default 4 MiB); a longer one is answered 413.
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }
}

impl<S: ServerHandler + Send + 'static> McpService<S> {
    /// The actix-web resource serving MCP at `path` (`POST`, and `GET`/`DELETE` for
    /// sessions): `App::new().service(mcp.resource("/mcp"))`.
    pub fn resource(&self, path: &str) -> actix_web::Resource {
        let service = self.clone();
        web::resource(path).route(web::route().to(move |req: HttpRequest, payload: web::Payload| {
            let service = service.clone();
            async move { service.handle(req, payload).await }
        }))
    }

    /// Serves one HTTP request of the MCP endpoint.
    async fn handle(&self, req: HttpRequest, payload: web::Payload) -> HttpResponse {
        let body = match payload.to_bytes_limited(self.max_body).await {
            Ok(Ok(body)) => body,
            Ok(Err(error)) => {
                return HttpResponse::BadRequest()
                    .body(format!("the request body could not be read: {error}"));
            }
            Err(_) => {
                return HttpResponse::PayloadTooLarge()
                    .body(format!("an MCP request is at most {} bytes", self.max_body));
            }
        };
        let mut request = http::Request::builder()
            .method(req.method().as_str())
            .uri(req.uri().to_string())
            .extension(Arc::clone(&self.settings));
        if let Some(payments) = Payments::from_request(&req) {
            request = request.extension(payments.clone());
        }
        for (name, value) in req.headers() {
            request = request.header(name.as_str(), value.as_bytes());
        }
        let request = match request.body(Full::new(body)) {
            Ok(request) => request,
            Err(error) => return HttpResponse::BadRequest().body(format!("unreadable MCP request: {error}")),
        };
        let closing = req.method() == actix_web::http::Method::DELETE;
        let (parts, body) = self.inner.handle(request).await.into_parts();
        let status = match StatusCode::from_u16(parts.status.as_u16()) {
            // A session closed: rmcp says 202, which MCP clients (the official Python
            // one) do not take for a success; 204 is what they expect.
            Ok(StatusCode::ACCEPTED) if closing => StatusCode::NO_CONTENT,
            Ok(status) => status,
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut response = HttpResponse::build(status);
        for (name, value) in &parts.headers {
            response.append_header((name.as_str(), value.as_bytes()));
        }
        response.streaming(BodyDataStream::new(body))
    }
}
