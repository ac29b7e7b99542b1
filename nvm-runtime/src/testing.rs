//! Test your own paid app offline (feature `local`): a running local facilitator, a
//! seller [`Payments`] pointed at it, your app served on loopback, and a buyer
//! ([`PayingClient`]) holding credits, in three lines.
//!
//! ```
//! use actix_web::{post, web, HttpResponse};
//! use nvm_runtime::testing::TestPayments;
//! use nvm_runtime::{paid, PaymentContext};
//!
//! #[paid(plan = nvm_runtime::local::DEMO_PLAN_ID, credits = 2)]
//! #[post("/ask")]
//! async fn ask(payment: PaymentContext) -> HttpResponse {
//!     HttpResponse::Ok().body(format!("paid by {}", payment.payer().unwrap_or("?")))
//! }
//!
//! # actix_web::rt::System::new().block_on(async {
//! let t = TestPayments::start().await;
//! let url = t.serve(|cfg: &mut web::ServiceConfig| { cfg.service(ask); });
//! let paid = t.buyer().send(t.buyer().http().post(format!("{url}/ask"))).await.unwrap();
//!
//! assert_eq!(paid.response.status(), 200);
//! assert_eq!(paid.receipt.unwrap().credits_redeemed, Some(2.into()));
//! assert_eq!(t.balance(), 98);
//! # });
//! ```
//!
//! The plan: [`TestPayments::start`] serves the plan named by `NVM_PLAN_ID` (with the
//! agent of `NVM_AGENT_ID`, when set), so a handler with `plan = env("NVM_PLAN_ID")`
//! is paid in tests exactly as in production; set them for `cargo test` in your
//! crate's `.cargo/config.toml` (`[env]`). Without `NVM_PLAN_ID`, it serves
//! [`DEMO_PLAN_ID`](crate::local::DEMO_PLAN_ID) and
//! [`DEMO_AGENT_ID`](crate::local::DEMO_AGENT_ID).

use actix_web::dev::ServerHandle;
use actix_web::web::ServiceConfig;
use actix_web::{App, HttpServer};

use crate::actix::Payments;
use crate::client::{PayingClient, Subscriber};
use crate::local::LocalFacilitator;
use crate::local::kit::{DEFAULT_CREDITS, LocalFacilitatorExt as _, PlanSpec};

/// A local facilitator, a seller [`Payments`] on it and a buyer holding 100 credits
/// on the plan; the apps it [`serve`](Self::serve)s and the
/// facilitator stop when it is dropped. See the [module docs](self).
///
/// ```
/// # actix_web::rt::System::new().block_on(async {
/// let t = nvm_runtime::testing::TestPayments::start().await;
/// assert_eq!(t.balance(), 100);
/// # });
/// ```
pub struct TestPayments {
    // Declared first, so dropped first: the apps stop before their facilitator.
    servers: std::sync::Mutex<Vec<ServerHandle>>,
    payments: Payments,
    plan_id: String,
    agent_id: String,
    local: LocalFacilitator,
}

impl std::fmt::Debug for TestPayments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPayments")
            .field("backend_url", &self.local.backend_url())
            .field("plan_id", &self.plan_id)
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

impl TestPayments {
    /// Starts the local facilitator on 127.0.0.1 (a free port), adds the plan of
    /// `NVM_PLAN_ID` (and the agent of `NVM_AGENT_ID`) when set, funds the buyer, and
    /// builds the seller's [`Payments`] on the facilitator. It does not run
    /// [`Payments::prepare`], which checks every `#[paid]` route linked into the test
    /// binary: call `t.payments().prepare().await` to test your app's start-up check.
    ///
    /// # Panics
    ///
    /// When the facilitator cannot start (no loopback port): a test helper fails the
    /// test rather than return an error.
    ///
    /// ```
    /// # actix_web::rt::System::new().block_on(async {
    /// let t = nvm_runtime::testing::TestPayments::start().await;
    /// assert!(t.facilitator().backend_url().starts_with("http://127.0.0.1:"));
    /// # });
    /// ```
    pub async fn start() -> TestPayments {
        let local = LocalFacilitator::start()
            .unwrap_or_else(|error| panic!("TestPayments: the local facilitator did not start: {error}"));
        let set = |var: &str| std::env::var(var).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let (plan_id, agent_id) = match set("NVM_PLAN_ID") {
            Some(plan) => {
                let mut spec = PlanSpec::crypto("TestPayments plan").id(plan);
                if let Some(agent) = set("NVM_AGENT_ID") {
                    spec = spec.agent(agent);
                }
                let plan = local.add_plan(spec);
                local.set_balance(&plan.plan_id, local.subscriber_address(), DEFAULT_CREDITS);
                let agent = plan.agent_ids.first().cloned().unwrap_or_default();
                (plan.plan_id, agent)
            }
            None => (local.plan_id().to_owned(), local.agent_id().to_owned()),
        };
        let payments = Payments::builder()
            .api_key(local.builder_api_key())
            .backend_url(local.backend_url())
            // A test that gets a 5xx says why, in its output (shown when it fails): the
            // message of a misconfigured route is otherwise only in the body.
            .on_payment_error(|req, error| {
                if error.status() >= 500 {
                    eprintln!(
                        "TestPayments: {} {} answered {}: {}",
                        req.method(),
                        req.path(),
                        error.status(),
                        crate::error::Report(error)
                    );
                }
                None
            })
            .build()
            .unwrap_or_else(|error| {
                panic!(
                    "TestPayments: the seller's configuration was refused: {}",
                    crate::error::Report(&error)
                )
            });
        TestPayments { servers: std::sync::Mutex::new(Vec::new()), payments, plan_id, agent_id, local }
    }

    /// The seller's configuration, for `App::new().app_data(t.payments())` when you
    /// build the server yourself.
    ///
    /// ```
    /// # actix_web::rt::System::new().block_on(async {
    /// let t = nvm_runtime::testing::TestPayments::start().await;
    /// let _app = actix_web::App::new().app_data(t.payments());
    /// # });
    /// ```
    pub fn payments(&self) -> Payments {
        self.payments.clone()
    }

    /// Serves an app made of `routes` (what your `App::configure` takes) with
    /// [`payments`](Self::payments) registered, on 127.0.0.1 (a free port, one
    /// worker), on the current actix-web runtime (`#[actix_web::test]`); it stops when
    /// `self` is dropped. Returns its URL, `http://127.0.0.1:PORT`.
    ///
    /// # Panics
    ///
    /// When no port of 127.0.0.1 can be bound.
    ///
    /// ```
    /// # actix_web::rt::System::new().block_on(async {
    /// use actix_web::{web, HttpResponse};
    ///
    /// let t = nvm_runtime::testing::TestPayments::start().await;
    /// let url = t.serve(|cfg: &mut web::ServiceConfig| {
    ///     cfg.route("/health", web::get().to(HttpResponse::Ok));
    /// });
    /// let health = t.buyer().send(t.buyer().http().get(format!("{url}/health"))).await.unwrap();
    /// assert_eq!(health.response.status(), 200);
    /// # });
    /// ```
    pub fn serve<F>(&self, routes: F) -> String
    where
        F: Fn(&mut ServiceConfig) + Clone + Send + 'static,
    {
        let payments = self.payments.clone();
        let server = HttpServer::new(move || App::new().app_data(payments.clone()).configure(routes.clone()))
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .unwrap_or_else(|error| panic!("TestPayments::serve: cannot bind 127.0.0.1:0: {error}"));
        let url = server.addrs().first().map(|addr| format!("http://{addr}")).unwrap_or_default();
        let server = server.run();
        self.servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(server.handle());
        actix_web::rt::spawn(server);
        url
    }

    /// A buyer paying with the facilitator's demo subscriber, who holds
    /// 100 credits on [`plan_id`](Self::plan_id) at start. Each call gives a new
    /// client for the same subscriber.
    ///
    /// # Panics
    ///
    /// Never in practice: the subscriber's key is the facilitator's own.
    ///
    /// ```
    /// # actix_web::rt::System::new().block_on(async {
    /// let t = nvm_runtime::testing::TestPayments::start().await;
    /// assert_eq!(t.buyer().subscriber().account(), t.facilitator().subscriber_address());
    /// # });
    /// ```
    pub fn buyer(&self) -> PayingClient {
        let subscriber = Subscriber::builder()
            .api_key(self.local.subscriber_api_key())
            .backend_url(self.local.backend_url())
            .build()
            .unwrap_or_else(|error| {
                panic!(
                    "TestPayments: the buyer's configuration was refused: {}",
                    crate::error::Report(&error)
                )
            });
        PayingClient::new(subscriber)
    }

    /// The buyer's credits on [`plan_id`](Self::plan_id) now.
    ///
    /// ```
    /// # actix_web::rt::System::new().block_on(async {
    /// let t = nvm_runtime::testing::TestPayments::start().await;
    /// t.set_balance(1);
    /// assert_eq!(t.balance(), 1);
    /// # });
    /// ```
    pub fn balance(&self) -> u64 {
        self.local.balance(&self.plan_id, self.local.subscriber_address())
    }

    /// Sets the buyer's credits on [`plan_id`](Self::plan_id) (0: every paid call is
    /// refused with a 402 `insufficient_balance`).
    ///
    /// ```
    /// # actix_web::rt::System::new().block_on(async {
    /// let t = nvm_runtime::testing::TestPayments::start().await;
    /// t.set_balance(0);
    /// assert_eq!(t.balance(), 0);
    /// # });
    /// ```
    pub fn set_balance(&self, credits: u64) {
        self.local.set_balance(&self.plan_id, self.local.subscriber_address(), credits);
    }

    /// The plan served: `NVM_PLAN_ID`'s, or the demo plan.
    ///
    /// ```
    /// # actix_web::rt::System::new().block_on(async {
    /// let t = nvm_runtime::testing::TestPayments::start().await;
    /// assert!(!t.plan_id().is_empty());
    /// # });
    /// ```
    pub fn plan_id(&self) -> &str {
        &self.plan_id
    }

    /// The local facilitator itself: its base URL (`NVM_BACKEND_URL` for a process you
    /// start), arm faults ([`inject`](LocalFacilitator::inject)), count its calls, add
    /// plans and subscribers.
    ///
    /// ```
    /// # actix_web::rt::System::new().block_on(async {
    /// use nvm_runtime::local::{Endpoint, Fault};
    ///
    /// let t = nvm_runtime::testing::TestPayments::start().await;
    /// t.facilitator().inject(Endpoint::Settle, Fault::Status(503));
    /// assert_eq!(t.facilitator().calls(Endpoint::Settle), 0);
    /// # });
    /// ```
    pub fn facilitator(&self) -> &LocalFacilitator {
        &self.local
    }
}

impl Drop for TestPayments {
    fn drop(&mut self) {
        for handle in self.servers.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            // Sends the stop command; the server's task ends on its own.
            drop(handle.stop(false));
        }
    }
}
