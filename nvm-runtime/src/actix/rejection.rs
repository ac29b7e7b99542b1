//! [`Rejection`]: the `#[paid]` extractor's error, the response a refused request gets.

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use actix_web::web::Bytes;
use actix_web::{HttpResponse, ResponseError};

use crate::error::Refusal;

/// Why a `#[paid]` handler did not run: the flow's refusal (when it refused the
/// payment) and the response it renders to, which
/// [`ResponseError::error_response`] rebuilds on every call.
pub(crate) struct Rejection {
    refusal: Option<Refusal>,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Rejection {
    /// A rejection answered by `response`; its body is kept as bytes (a hook's
    /// replacement response must have a buffered body).
    pub(crate) fn new(refusal: Option<Refusal>, response: HttpResponse) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let body = actix_web::body::MessageBody::try_into_bytes(response.into_body()).unwrap_or_else(|_| {
            tracing::warn!("a payment error response with a streaming body is sent without its body");
            Bytes::new()
        });
        Rejection { refusal, status, headers, body }
    }
}

impl std::fmt::Debug for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejection").field("status", &self.status).field("refusal", &self.refusal).finish()
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.refusal {
            Some(refusal) => write!(f, "payment not accepted ({}): {}", self.status, refusal.error()),
            None => write!(f, "payment not accepted ({})", self.status),
        }
    }
}

impl ResponseError for Rejection {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::with_body(self.status, self.body.clone());
        *response.headers_mut() = self.headers.clone();
        response.map_into_boxed_body()
    }
}
