//! A request's payment state, kept in its extensions: attached by a `PaymentMiddleware`
//! route (or the `#[paid]` extractor) and read by the handler's `PaymentContext`, the
//! settlement and the rendering of a refusal.

use std::sync::Arc;

use actix_web::{HttpMessage, HttpRequest};

use crate::flow::PaymentState;

/// Creates the payment state of `req` and stores it in the request's extensions.
pub(crate) fn attach(req: &HttpRequest) -> Arc<PaymentState> {
    let state = Arc::new(PaymentState::default());
    req.extensions_mut().insert(Arc::clone(&state));
    state
}

/// The state already attached to `req` (by a `PaymentMiddleware` route), if any.
pub(crate) fn attached(req: &HttpRequest) -> Option<Arc<PaymentState>> {
    req.extensions().get::<Arc<PaymentState>>().cloned()
}
