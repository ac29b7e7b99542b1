//! The request as the flow sees it: actix-web's `HttpRequest` and the seller's
//! `Payments` as the flow's [`Host`] (the token headers, the hooks), and the flow's
//! refusals turned into responses.

use actix_web::{HttpRequest, HttpResponse};

use super::payments::Payments;
use super::respond::render;
use crate::error::{ConfigError, Refusal};
use crate::flow::{self, Host, PendingSettlement};
use crate::wire::{PaymentRequired, SettleResponse, VerifyResponse};

/// A request and its configuration, as the flow sees them.
pub(crate) struct Exchange<'a> {
    pub(crate) payments: &'a Payments,
    pub(crate) req: &'a HttpRequest,
}

impl Host for Exchange<'_> {
    fn method(&self) -> &str {
        self.req.method().as_str()
    }

    fn path(&self) -> &str {
        self.req.path()
    }

    fn token_header(&self, index: usize) -> impl Iterator<Item = &[u8]> {
        let names = self.payments.token_headers();
        names.get(index).into_iter().flat_map(|name| self.req.headers().get_all(name)).map(|v| v.as_bytes())
    }

    fn before_verify(&self, envelope: &PaymentRequired) {
        self.payments.hooks().before_verify(self.req, envelope);
    }

    fn after_verify(&self, verification: &VerifyResponse) {
        self.payments.hooks().after_verify(self.req, verification);
    }

    fn after_settle(&self, credits: u64, receipt: &SettleResponse) {
        self.payments.hooks().after_settle(self.req, credits, receipt);
    }

    fn settlement_unknown(&self, record: &PendingSettlement) {
        self.payments.hooks().settlement_unknown(self.req, record);
    }
}

impl Exchange<'_> {
    /// `refusal` as the response to send.
    pub(crate) fn refuse(&self, refusal: Refusal) -> (Refusal, HttpResponse) {
        let response = render(self.payments, self.req, &refusal);
        (refusal, response)
    }

    /// The refusal of a misconfigured route.
    pub(crate) fn misconfigured(&self, error: ConfigError) -> (Refusal, HttpResponse) {
        self.refuse(flow::misconfigured(self.req.path(), error))
    }
}

/// Refused: the flow's reason and the response that says it.
pub(crate) type Refused = (Refusal, HttpResponse);
