//! Paying from a web page on another origin: the CORS settings `fetch` needs to read a
//! 402's envelope and a receipt, and to send a token.
//!
//! A browser hides every response header from a cross-origin script except a few
//! (`content-type`, `cache-control`, …), and refuses to send a non-standard request
//! header such as `payment-signature` until a preflight `OPTIONS` allows it. So a page on
//! `https://app.example` that pays an API on `https://api.example` needs the API to
//! answer with:
//!
//! - `Access-Control-Expose-Headers` listing [`EXPOSED_HEADERS`]: `payment-required` (the
//!   envelope of a 402), `payment-response` (the receipt), `idempotent-replayed` (a
//!   replayed answer);
//! - `Access-Control-Allow-Headers` (on the preflight) listing [`ALLOWED_REQUEST_HEADERS`]:
//!   `payment-signature` (the token), `idempotency-key`, `content-type` (a JSON body).
//!
//! With `actix-cors`, `payment_cors` adds both lists to a `Cors` you
//! configure (feature `cors`); with another CORS layer, give it the two constants.
//!
//! The CORS middleware must wrap the paid routes from the outside (`App::wrap`, or the
//! `wrap` of a scope around them), never sit inside them: the 402 is answered before a
//! `#[paid]` handler runs (and by a [`PaymentMiddleware`](crate::PaymentMiddleware) before
//! anything it wraps), so only a layer outside sees it and gives it the CORS headers; a
//! 402 without them reaches the page as an opaque network error.

use crate::wire::{
    IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE,
};

/// The `actix-cors` this crate is built with (0.7), re-exported (feature `cors`) so that
/// the [`Cors`](actix_cors::Cors) you build is the very type [`payment_cors`] takes,
/// whatever `actix-cors` your own crate depends on (two versions are two different
/// crates to the compiler):
///
/// ```
/// use nvm_runtime::actix::cors::{actix_cors::Cors, payment_cors};
///
/// let cors = payment_cors(Cors::default().allowed_origin("https://app.example").allowed_methods(["POST"]));
/// # drop(cors);
/// ```
#[cfg(feature = "cors")]
pub use actix_cors;

/// The response headers a paying page must be able to read: the value of
/// `Access-Control-Expose-Headers` (with your own).
///
/// ```
/// use nvm_runtime::actix::cors::EXPOSED_HEADERS;
///
/// assert_eq!(EXPOSED_HEADERS.join(", "), "payment-required, payment-response, idempotent-replayed");
/// ```
pub const EXPOSED_HEADERS: [&str; 3] = [PAYMENT_REQUIRED, PAYMENT_RESPONSE, IDEMPOTENT_REPLAYED];

/// The request headers a paying page sends: the value of `Access-Control-Allow-Headers`
/// of a preflight (with your own).
///
/// ```
/// use nvm_runtime::actix::cors::ALLOWED_REQUEST_HEADERS;
///
/// assert_eq!(ALLOWED_REQUEST_HEADERS.join(", "), "payment-signature, idempotency-key, content-type");
/// ```
pub const ALLOWED_REQUEST_HEADERS: [&str; 3] = [PAYMENT_SIGNATURE, IDEMPOTENCY_KEY, "content-type"];

/// `cors` with the payment headers added (feature `cors`): [`EXPOSED_HEADERS`] exposed to
/// the page and [`ALLOWED_REQUEST_HEADERS`] allowed in its requests. Everything else stays as you set
/// it: the origins, the methods (`Cors::default()` allows none: list your paid routes'
/// methods, or a preflight is refused), credentials, max age. A `Cors` that already
/// exposes or allows any header (`Cors::permissive()`, `expose_any_header()`,
/// `allow_any_header()`) keeps doing so.
///
/// Wrap it around the paid routes from the outside, so that a 402 carries the CORS
/// headers too (see the [module](self) docs):
///
/// ```
/// use actix_cors::Cors;
/// use actix_web::{App, HttpResponse, post};
/// use nvm_runtime::actix::cors::payment_cors;
/// use nvm_runtime::paid;
///
/// #[paid(plan = "1234", credits = 1)]
/// #[post("/ask")]
/// async fn ask() -> HttpResponse {
///     HttpResponse::Ok().body("42")
/// }
///
/// let cors = Cors::default().allowed_origin("https://app.example").allowed_methods(["GET", "POST"]);
/// let app = App::new().wrap(payment_cors(cors)).service(ask);
/// # drop(app);
/// ```
///
/// Then a script on `https://app.example` pays like any x402 client:
///
/// ```js
/// let answer = await fetch(url, { method: "POST" });
/// if (answer.status === 402) {
///   const envelope = JSON.parse(atob(answer.headers.get("payment-required")));
///   const token = await yourTokenService(envelope.accepts[0]); // the buyer's key stays server-side
///   answer = await fetch(url, { method: "POST", headers: { "payment-signature": token } });
/// }
/// const receipt = JSON.parse(atob(answer.headers.get("payment-response")));
/// ```
#[cfg(feature = "cors")]
pub fn payment_cors(cors: actix_cors::Cors) -> actix_cors::Cors {
    // `actix-cors` turns an "any header" setting into a list when a header is added, so
    // adding ours to `Cors::permissive()` would narrow it to ours. Its settings are
    // private; its `Debug` (derived) shows them, and the tests below pin that form.
    let settings = format!("{cors:?}");
    let mut cors = cors;
    if !settings.contains("expose_headers: All") {
        cors = cors.expose_headers(EXPOSED_HEADERS);
    }
    if !settings.contains("allowed_headers: All") {
        cors = cors.allowed_headers(ALLOWED_REQUEST_HEADERS);
    }
    cors
}

#[cfg(all(test, feature = "cors"))]
mod tests {
    use actix_cors::Cors;
    use actix_web::http::{Method, StatusCode, header};
    use actix_web::{App, HttpResponse, test, web};

    use super::*;

    /// The answers of an app wrapped in `cors`: a preflight for a paid `POST` with a token,
    /// and a 402 to a cross-origin request.
    async fn exchange(cors: Cors) -> (Answer, Answer) {
        let app = test::init_service(App::new().wrap(cors).route(
            "/ask",
            web::post().to(|| async {
                HttpResponse::PaymentRequired()
                    .insert_header((PAYMENT_REQUIRED, "e30="))
                    .insert_header(("x-other", "1"))
                    .finish()
            }),
        ))
        .await;
        let preflight = test::TestRequest::default()
            .method(Method::OPTIONS)
            .uri("/ask")
            .insert_header((header::ORIGIN, "https://app.example"))
            .insert_header((header::ACCESS_CONTROL_REQUEST_METHOD, "POST"))
            .insert_header((header::ACCESS_CONTROL_REQUEST_HEADERS, "payment-signature, content-type"))
            .to_request();
        let preflight = test::call_service(&app, preflight).await;
        let request = test::TestRequest::post()
            .uri("/ask")
            .insert_header((header::ORIGIN, "https://app.example"))
            .to_request();
        let refused = test::call_service(&app, request).await;
        (
            Answer(preflight.status(), preflight.headers().clone()),
            Answer(refused.status(), refused.headers().clone()),
        )
    }

    /// A response's status and headers.
    struct Answer(StatusCode, header::HeaderMap);

    impl Answer {
        fn status(&self) -> StatusCode {
            self.0
        }

        fn headers(&self) -> &header::HeaderMap {
            &self.1
        }
    }

    fn names(response: &Answer, name: header::HeaderName) -> Vec<String> {
        let value =
            response.headers().get(name).map(|v| v.to_str().expect("an ASCII header").to_ascii_lowercase());
        let mut names: Vec<String> =
            value.iter().flat_map(|v| v.split(',')).map(|n| n.trim().to_owned()).collect();
        names.sort();
        names
    }

    #[actix_web::test]
    async fn a_restrictive_cors_gains_the_payment_headers_and_nothing_else() {
        let cors = Cors::default().allowed_origin("https://app.example").allowed_methods(["POST"]);
        let (preflight, refused) = exchange(payment_cors(cors)).await;
        assert_eq!(preflight.status(), StatusCode::OK);
        assert_eq!(
            names(&preflight, header::ACCESS_CONTROL_ALLOW_HEADERS),
            ["content-type", "idempotency-key", "payment-signature"]
        );
        assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(
            refused.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(),
            "https://app.example"
        );
        assert_eq!(
            names(&refused, header::ACCESS_CONTROL_EXPOSE_HEADERS),
            ["idempotent-replayed", "payment-required", "payment-response"]
        );
    }

    #[actix_web::test]
    async fn the_users_own_headers_are_kept() {
        let cors = Cors::default()
            .allowed_origin("https://app.example")
            .allowed_methods(["POST"])
            .allowed_header(header::AUTHORIZATION)
            .expose_headers(["x-request-id"]);
        let (preflight, refused) = exchange(payment_cors(cors)).await;
        assert!(
            names(&preflight, header::ACCESS_CONTROL_ALLOW_HEADERS).contains(&"authorization".to_owned())
        );
        assert!(names(&refused, header::ACCESS_CONTROL_EXPOSE_HEADERS).contains(&"x-request-id".to_owned()));
        assert!(
            names(&refused, header::ACCESS_CONTROL_EXPOSE_HEADERS).contains(&"payment-required".to_owned())
        );
    }

    #[actix_web::test]
    async fn any_header_stays_any_header() {
        // Permissive: every request header allowed (echoed), every response header exposed.
        let (preflight, refused) = exchange(payment_cors(Cors::permissive())).await;
        assert_eq!(preflight.status(), StatusCode::OK);
        assert_eq!(
            names(&preflight, header::ACCESS_CONTROL_ALLOW_HEADERS),
            ["content-type", "payment-signature"]
        );
        let exposed = names(&refused, header::ACCESS_CONTROL_EXPOSE_HEADERS);
        assert!(exposed.contains(&"x-other".to_owned()) && exposed.contains(&"payment-required".to_owned()));

        let cors = Cors::default()
            .allowed_origin("https://app.example")
            .allowed_methods(["POST"])
            .allow_any_header()
            .expose_any_header();
        let (preflight, refused) = exchange(payment_cors(cors)).await;
        assert_eq!(preflight.status(), StatusCode::OK);
        assert!(names(&refused, header::ACCESS_CONTROL_EXPOSE_HEADERS).contains(&"x-other".to_owned()));
        // The settings form `payment_cors` reads.
        let settings = format!("{:?}", Cors::permissive());
        assert!(
            settings.contains("expose_headers: All") && settings.contains("allowed_headers: All"),
            "{settings}"
        );
        let settings = format!("{:?}", Cors::default());
        assert!(!settings.contains("expose_headers: All") && !settings.contains("allowed_headers: All"));
    }
}
