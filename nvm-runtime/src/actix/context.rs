//! `PaymentContext`: the handler's view of the request's payment.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError};

use super::respond::json_error;
use super::state::attached;
use crate::flow::Meter;
use crate::flow::{PaymentState, Verified};
use crate::observability::{Gateway, Observability, ObservabilityError};
use crate::wire::{AccessToken, PaymentRequired, VerifyResponse};

/// The payment of the current request, as a handler argument.
///
/// By the time the handler body runs, the payment is verified: the context holds the
/// token (shown only as a hash in `Debug`), plan, agent, payer, credits verified and the
/// facilitator's request data. [`PaymentContext::charge`] settles a usage-based amount
/// instead of the verified one.
///
/// ```
/// use actix_web::{post, HttpResponse, Responder};
/// use nvm_runtime::{paid, PaymentContext};
///
/// #[paid(plan = "1234", credits = 10)]
/// #[post("/summarize")]
/// async fn summarize(payment: PaymentContext) -> impl Responder {
///     let used = 3; // the work actually done
///     payment.charge(used).expect("3 ≤ 10 verified credits");
///     HttpResponse::Ok().body(format!("paid by {:?}", payment.payer()))
/// }
/// ```
///
/// On a handler without `#[paid]` (and outside a `PaymentMiddleware` route) the
/// extractor fails with a 500 whose message says so.
#[derive(Clone)]
pub struct PaymentContext {
    state: Arc<PaymentState>,
    /// The seller's LLM observability gateway (`None` without a registered `Payments`).
    gateway: Option<Gateway>,
}

/// Why [`PaymentContext::charge`] refused an amount: more than was verified (the
/// subscriber never agreed to pay it), or any amount on a free request (nothing was
/// verified). Its message says which, with the amounts.
///
/// ```
/// use nvm_runtime::PaymentContext;
///
/// fn charge_usage(payment: &PaymentContext, used: u64) -> Result<(), actix_web::Error> {
///     // e.g. "cannot charge 9 credits: only 5 were verified for this request"
///     payment.charge(used).map_err(actix_web::error::ErrorInternalServerError)
/// }
/// # let _ = charge_usage;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct ChargeError(ChargeProblem);

/// The cases of a [`ChargeError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ChargeProblem {
    #[error("cannot charge {requested} credits: only {verified} were verified for this request")]
    MoreThanVerified { requested: u64, verified: u64 },
    #[error("cannot charge {0} credits: this request is free (its credits resolved to 0)")]
    Free(u64),
}

impl PaymentContext {
    fn verified(&self) -> Option<&Verified> {
        self.state.verified.get()
    }

    /// The access token. Never log it; its `Debug` shows only a hash.
    pub fn token(&self) -> Option<&AccessToken> {
        self.verified().map(|v| &v.token)
    }

    /// The plan paid with.
    pub fn plan_id(&self) -> Option<&str> {
        self.envelope().and_then(PaymentRequired::first).map(|a| a.plan_id.as_str())
    }

    /// The agent, when the route names one.
    pub fn agent_id(&self) -> Option<&str> {
        self.envelope().and_then(PaymentRequired::first).and_then(|a| a.extra.agent_id.as_deref())
    }

    /// The subscriber's address, as the facilitator reported it.
    pub fn payer(&self) -> Option<&str> {
        self.verification().and_then(|v| v.payer.as_deref())
    }

    /// The credits verified for this request; 0 when the request is free (its credits
    /// resolved to 0): nothing verified, nothing settled.
    pub fn credits(&self) -> u64 {
        self.verified().map_or(0, |v| v.credits)
    }

    /// The facilitator's id for this request, which links verify to settle.
    pub fn agent_request_id(&self) -> Option<&str> {
        self.verification().and_then(VerifyResponse::request_id)
    }

    /// The envelope that was advertised and verified.
    fn envelope(&self) -> Option<&PaymentRequired> {
        self.verified().map(|v| &v.envelope)
    }

    /// The facilitator's whole verify response.
    pub(crate) fn verification(&self) -> Option<&VerifyResponse> {
        self.verified().map(|v| &v.verification)
    }

    /// Settles `credits` instead of the verified amount when the handler succeeds
    /// (usage-based billing). Never more than was verified; the last call wins; 0 burns
    /// nothing.
    pub fn charge(&self, credits: u64) -> Result<(), ChargeError> {
        let verified = self.verified().ok_or(ChargeError(ChargeProblem::Free(credits)))?;
        if credits > verified.credits {
            let problem = ChargeProblem::MoreThanVerified { requested: credits, verified: verified.credits };
            return Err(ChargeError(problem));
        }
        self.state.set_charge(credits);
        Ok(())
    }

    /// The amount that will be settled if the handler succeeds.
    pub fn charged(&self) -> u64 {
        self.state.amount_due()
    }

    /// A meter for usage-based billing of this request, capped at the verified credits
    /// (0 on a free request: everything is refused). Once a meter is taken, what is
    /// settled is what was metered (a total of 0 settles nothing), not the route's price.
    /// It is `Send + 'static`: move it into a streamed body's generator; on a route
    /// settled after the body, the settlement waits for the body to end.
    pub fn meter(&self) -> Meter {
        self.state.meter(self.credits())
    }

    /// The LLM observability gateway settings of this request (base URL and
    /// `Helicone-*` headers, as the official SDKs' `with_openai`): LLM calls sent with
    /// them are logged against this paid request. The
    /// [`observability`](crate::observability) module shows them whole.
    ///
    /// ```
    /// use actix_web::{post, HttpResponse};
    /// use nvm_runtime::{paid, PaymentContext};
    ///
    /// #[paid(plan = "1234", credits = 10)]
    /// #[post("/ask")]
    /// async fn ask(payment: PaymentContext) -> HttpResponse {
    ///     match payment.observability() {
    ///         Ok(gateway) => HttpResponse::Ok().body(gateway.chat_completions_url()),
    ///         Err(error) => HttpResponse::InternalServerError().body(error.to_string()),
    ///     }
    /// }
    /// ```
    pub fn observability(&self) -> Result<Observability, ObservabilityError> {
        match (&self.gateway, self.verification()) {
            (Some(gateway), Some(verification)) => gateway.for_request(verification.agent_request.as_ref()),
            _ => Err(crate::observability::ObservabilityProblem::NotPaid.into()),
        }
    }
}

impl std::fmt::Debug for PaymentContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentContext")
            .field("token", &self.token())
            .field("plan_id", &self.plan_id())
            .field("agent_id", &self.agent_id())
            .field("payer", &self.payer())
            .field("credits", &self.credits())
            .field("charged", &self.charged())
            .field("agent_request_id", &self.agent_request_id())
            .finish()
    }
}

/// The extractor's error on a handler that is not paid.
#[derive(Debug, thiserror::Error)]
#[error(
    "PaymentContext is only available in handlers protected by #[paid(...)] or by a PaymentMiddleware route; add #[paid(plan = \"…\")] to this handler or remove the PaymentContext argument"
)]
pub struct NotPaid;

impl ResponseError for NotPaid {
    fn error_response(&self) -> HttpResponse {
        tracing::error!("{self}");
        json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", &self.to_string())
    }
}

/// A `#[paid]` MCP tool (or one of a `PaidTools` table) takes `PaymentContext` as an
/// argument, as an HTTP handler does.
#[cfg(feature = "mcp")]
impl<S> rmcp::handler::server::common::FromContextPart<rmcp::handler::server::tool::ToolCallContext<'_, S>>
    for PaymentContext
{
    fn from_context_part(
        context: &mut rmcp::handler::server::tool::ToolCallContext<'_, S>,
    ) -> Result<Self, rmcp::ErrorData> {
        let extensions = &context.request_context.extensions;
        let payments =
            extensions.get::<http::request::Parts>().and_then(|p| p.extensions.get::<super::Payments>());
        let gateway = payments.map(|p| p.gateway().clone());
        match extensions.get::<Arc<PaymentState>>() {
            Some(state) => Ok(PaymentContext { state: Arc::clone(state), gateway }),
            None => {
                tracing::error!("{NotPaid}");
                Err(rmcp::ErrorData::internal_error(NotPaid.to_string(), None))
            }
        }
    }
}

impl FromRequest for PaymentContext {
    type Error = NotPaid;
    type Future = std::future::Ready<Result<Self, NotPaid>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let gateway = || super::Payments::from_request(req).map(|p| p.gateway().clone());
        std::future::ready(
            attached(req).map(|state| PaymentContext { state, gateway: gateway() }).ok_or(NotPaid),
        )
    }
}
