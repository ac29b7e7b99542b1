//! The HTTP side: an actix-web server on its own thread, with its own actix `System`,
//! serving the ledger's endpoints on 127.0.0.1.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use actix_web::dev::{ServerHandle, Service as _};
use actix_web::http::StatusCode;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde::de::DeserializeOwned;

use super::bodies::{FacilitatorBody, PermissionsBody};
use super::faults::Faults;
use super::gateway::{self, Gateway, GatewayEndpoint};
use super::keys;
use super::ledger::{ApiError, Reply, State, codes};
use crate::wire::Endpoint;

/// Request bodies larger than this are refused (tokens are at most 16 KiB).
const BODY_LIMIT: usize = 256 * 1024;

/// A running server: stopped and joined when dropped.
#[derive(Debug)]
pub(crate) struct Running {
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
    pub(crate) addr: SocketAddr,
    faults: Arc<Faults>,
    gateway: Arc<Gateway>,
}

impl Running {
    /// Stops the server and waits for its thread.
    pub(crate) fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.faults.release();
            self.gateway.faults.release();
            // `stop` sends the command at once; its future only waits for completion,
            // which joining the thread does too.
            drop(self.handle.stop(false));
            if thread.join().is_err() {
                tracing::warn!("the local facilitator's server thread panicked");
            }
            tracing::debug!(addr = %self.addr, "local facilitator stopped");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds 127.0.0.1:`port` and serves `state` on a new thread.
pub(crate) fn spawn(
    state: Arc<State>,
    faults: Arc<Faults>,
    gateway: Arc<Gateway>,
    port: u16,
) -> io::Result<Running> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let addr = listener.local_addr()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<ServerHandle>>();
    let server_faults = web::Data::from(Arc::clone(&faults));
    let latency = Arc::clone(&faults);
    let gateway_data = web::Data::from(Arc::clone(&gateway));
    let thread = std::thread::Builder::new().name("nvm-local-facilitator".into()).spawn(move || {
        let system = actix_web::rt::System::new();
        system.block_on(async move {
            let data = web::Data::from(state);
            let server = HttpServer::new(move || {
                let latency = Arc::clone(&latency);
                App::new()
                    // Every answer waits the configured latency first: a timer, not a
                    // blocked worker, so concurrent calls wait side by side.
                    .wrap_fn(move |req, service| {
                        let delay = latency.latency();
                        let call = service.call(req);
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            call.await
                        }
                    })
                    .app_data(data.clone())
                    .app_data(server_faults.clone())
                    .app_data(web::PayloadConfig::new(BODY_LIMIT))
                    .route(Endpoint::Permissions.path(), web::post().to(permissions))
                    .route(Endpoint::Verify.path(), web::post().to(verify))
                    .route(Endpoint::Settle.path(), web::post().to(settle))
                    .route(Endpoint::Plans.path(), web::get().to(plan))
                    .route("/api/v1/protocol/plans/{plan_id}/balance/{holder}", web::get().to(plan_balance))
                    // The stand-in LLM observability gateway.
                    .app_data(gateway_data.clone())
                    .route(GatewayEndpoint::ChatCompletions.path(), web::post().to(gateway::chat_completions))
                    .route(GatewayEndpoint::Log.path(), web::post().to(gateway::log))
                    .default_service(web::to(not_found))
            })
            .workers(2)
            .disable_signals()
            .shutdown_timeout(1)
            .listen(listener);
            let server = match server {
                Ok(server) => server.run(),
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(server.handle()));
            if let Err(error) = server.await {
                tracing::error!(error = %crate::error::Report(&error), "the local facilitator's server failed");
            }
        });
    })?;
    match ready_rx.recv() {
        Ok(Ok(handle)) => {
            tracing::info!(%addr, "local facilitator listening");
            Ok(Running { handle, thread: Some(thread), addr, faults, gateway })
        }
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other("the local facilitator's server thread exited before it started"))
        }
    }
}

fn respond(reply: Reply) -> HttpResponse {
    match reply {
        Reply::Ok(value) => HttpResponse::Ok().json(value),
        Reply::Error(error) => error_response(&error),
    }
}

fn error_response(error: &ApiError) -> HttpResponse {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    HttpResponse::build(status).json(error.to_json())
}

/// The account of the request's API key, or the 401 to answer.
fn authorize(state: &State, req: &HttpRequest) -> Result<String, ApiError> {
    let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    keys::check_bearer(&state.secret, header).map_err(|why| {
        tracing::debug!(path = req.path(), why = why.message(), "refused an API key");
        ApiError::new(
            401,
            codes::UNAUTHORIZED,
            why.message(),
            "use a key printed by this local facilitator (builderApiKey or subscriberApiKey)",
        )
    })
}

fn parse<T: DeserializeOwned>(req: &HttpRequest, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            codes::BAD_REQUEST,
            format!("the body of {} {} is not the expected JSON: {e}", req.method(), req.path()),
            "see the nvm_runtime::wire docs, §4 and §5, for the request bodies",
        )
    })
}

/// Authenticates, parses the body, and hands both to `call`.
fn handle<T: DeserializeOwned>(
    state: &State,
    req: &HttpRequest,
    body: &[u8],
    call: impl FnOnce(&State, &str, &T) -> Reply,
) -> HttpResponse {
    let reply = authorize(state, req)
        .and_then(|caller| parse::<T>(req, body).map(|body| (caller, body)))
        .map(|(caller, body)| call(state, &caller, &body));
    match reply {
        Ok(reply) => respond(reply),
        Err(error) => error_response(&error),
    }
}

async fn permissions(
    state: web::Data<State>,
    faults: web::Data<Faults>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    state.count(Endpoint::Permissions);
    let call = || handle::<PermissionsBody>(&state, &req, &body, State::permissions);
    faults.around(Endpoint::Permissions, call).await
}

async fn verify(
    state: web::Data<State>,
    faults: web::Data<Faults>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    state.count(Endpoint::Verify);
    let call = || handle::<FacilitatorBody>(&state, &req, &body, State::verify);
    faults.around(Endpoint::Verify, call).await
}

async fn settle(
    state: web::Data<State>,
    faults: web::Data<Faults>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    state.count(Endpoint::Settle);
    let call = || handle::<FacilitatorBody>(&state, &req, &body, State::settle);
    faults.around(Endpoint::Settle, call).await
}

async fn plan(state: web::Data<State>, faults: web::Data<Faults>, path: web::Path<String>) -> HttpResponse {
    state.count(Endpoint::Plans);
    faults.around(Endpoint::Plans, || respond(state.plan_metadata(&path))).await
}

async fn plan_balance(state: web::Data<State>, path: web::Path<(String, String)>) -> HttpResponse {
    let (plan_id, holder) = path.into_inner();
    respond(state.plan_balance(&plan_id, &holder))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    error_response(&ApiError::new(
        404,
        codes::NOT_FOUND,
        format!("the local facilitator has no endpoint {} {}", req.method(), req.path()),
        "it serves POST /api/v1/x402/{permissions,verify,settle}, GET /api/v1/protocol/plans/{id}, and the stand-in LLM gateway's POST /jawn/v1/gateway/oai/v1/chat/completions and /jawn/v1/trace/custom/v1/log",
    ))
}
