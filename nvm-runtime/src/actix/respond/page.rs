//! The 402 as an HTML page, for a browser's navigation: whether a request prefers HTML
//! (its `Accept` header), and a small self-contained page saying what the endpoint
//! costs, with a link to the plan's checkout page in the Nevermined app.

use std::borrow::Cow;
use std::fmt::Write as _;

use actix_web::HttpRequest;
use actix_web::http::header::{ACCEPT, HeaderMap};

use crate::backend::Environment;
use crate::wire::PaymentRequired;

/// Whether `headers` ask for HTML rather than JSON: the `Accept` media ranges (every
/// `Accept` header, comma-separated, case-insensitive, spaces allowed) give `text/html` a
/// higher quality than `application/json`, each type taking the `q` of its most specific
/// matching range (`text/html` over `text/*` over `*/*`). `*/*` alone, no `Accept`, or
/// an unreadable one, is JSON; a range with a malformed `q` is ignored.
pub(super) fn prefers_html(headers: &HeaderMap) -> bool {
    let mut html = Preference::default();
    let mut json = Preference::default();
    let values = headers.get_all(ACCEPT).filter_map(|value| value.to_str().ok());
    for range in values.flat_map(|value| value.split(',')) {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim();
        let Some((kind, subtype)) = media.split_once('/') else { continue };
        let (kind, subtype) = (kind.trim(), subtype.trim());
        let mut quality = Some(1.0);
        for param in parts {
            let Some((name, value)) = param.split_once('=') else { continue };
            if name.trim().eq_ignore_ascii_case("q") {
                quality = parse_quality(value.trim());
            }
        }
        let Some(quality) = quality else { continue };
        html.offer(kind, subtype, "text", "html", quality);
        json.offer(kind, subtype, "application", "json", quality);
    }
    html.quality() > json.quality()
}

/// The quality a media type gets from the ranges seen so far: that of its most specific
/// match (0 when none matches).
#[derive(Default)]
struct Preference {
    /// (specificity: 1 `*/*`, 2 `type/*`, 3 exact; quality), 0 when nothing matched.
    best: (u8, f32),
}

impl Preference {
    fn offer(&mut self, kind: &str, subtype: &str, want_kind: &str, want_subtype: &str, quality: f32) {
        let specificity = match (kind, subtype) {
            ("*", "*") => 1,
            (k, "*") if k.eq_ignore_ascii_case(want_kind) => 2,
            (k, s) if k.eq_ignore_ascii_case(want_kind) && s.eq_ignore_ascii_case(want_subtype) => 3,
            _ => return,
        };
        let (best, best_quality) = self.best;
        if specificity > best || (specificity == best && quality > best_quality) {
            self.best = (specificity, quality);
        }
    }

    fn quality(&self) -> f32 {
        self.best.1
    }
}

/// An HTTP quality value, `0` to `1` with at most three decimals (`1`, `0.8`, `1.000`);
/// `None` when it is not one.
fn parse_quality(value: &str) -> Option<f32> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let well_formed = matches!(whole, "0" | "1")
        && fraction.len() <= 3
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && (whole == "0" || fraction.bytes().all(|b| b == b'0'));
    if !well_formed {
        return None;
    }
    value.parse().ok()
}

/// The Nevermined app's frontend of `environment`, as the official SDKs configure it:
/// `https://nevermined.app` for `sandbox` and `live` (one app serves both), and
/// `https://nevermined.dev` for the staging environments; none for `custom` (a backend
/// of the seller's own, such as the local facilitator, has no checkout page).
fn frontend_url(environment: Environment) -> Option<&'static str> {
    match environment {
        Environment::Sandbox | Environment::Live => Some("https://nevermined.app"),
        Environment::StagingSandbox | Environment::StagingLive => Some("https://nevermined.dev"),
        Environment::Custom => None,
    }
}

/// The checkout page of `plan_id` in the Nevermined app of `environment`, where a
/// person buys the plan's credits: `{frontend}/checkout/{plan_id}` ([`frontend_url`]).
fn checkout_url(environment: Environment, plan_id: &str) -> Option<String> {
    let mut url = format!("{}/checkout/", frontend_url(environment)?);
    // A plan id is decimal; anything else is percent-encoded into one path segment.
    for byte in plan_id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            url.push(char::from(byte));
        } else {
            let _ = write!(url, "%{byte:02X}");
        }
    }
    Some(url)
}

/// `text` with the five HTML-significant characters escaped (for text and attributes).
fn escape_html(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// The credits the request was asked (known once its route priced it; a route priced
/// by its body knows no price before reading it).
pub(super) fn asked(req: &HttpRequest) -> Option<u64> {
    crate::actix::state::attached(req).and_then(|state| state.asked())
}

const PAGE_STYLE: &str = "body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
background:#f4f5f7;color:#1d2430}main{max-width:34rem;margin:3rem auto;padding:2rem 2.25rem;background:#fff;\
border-radius:12px;box-shadow:0 1px 3px rgba(0,0,0,.12)}.status{margin:0;color:#8a5a00;font-weight:600;\
letter-spacing:.04em;text-transform:uppercase;font-size:.8rem}h1{margin:.35rem 0 1rem;font-size:1.5rem}\
.price{font-size:1.25rem;margin:0 0 1.25rem}dl{display:grid;grid-template-columns:auto 1fr;gap:.35rem 1rem;\
margin:0 0 1.5rem}dt{color:#5b6472}dd{margin:0;overflow-wrap:anywhere}code{font:.9em ui-monospace,monospace}\
.reason{margin:0 0 1.25rem;color:#8a1c1c}.buy{display:inline-block;padding:.65rem 1.25rem;border-radius:8px;\
background:#1f5eff;color:#fff;text-decoration:none;font-weight:600}.note{margin:1.5rem 0 0;color:#5b6472;\
font-size:.85rem}";

/// The HTML answer to a browser that opened a paid URL without paying: what the
/// endpoint costs, per accepted plan, with a link to the plan's checkout page. Every
/// value from the envelope is escaped; the page loads nothing.
pub(super) fn payment_page(
    envelope: &PaymentRequired,
    environment: Environment,
    credits: Option<u64>,
) -> String {
    let resource = &envelope.resource;
    let mut page = String::with_capacity(4096);
    let title = resource.description.as_deref().unwrap_or("This endpoint is paid");
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Payment required: {title}</title><style>{PAGE_STYLE}</style></head><body><main>\
         <p class=\"status\">402 · Payment required</p><h1>{title}</h1>",
        title = escape_html(title),
    );
    if let Some(reason) = &envelope.error {
        let _ = write!(page, "<p class=\"reason\">{}</p>", escape_html(reason));
    }
    for accepted in &envelope.accepts {
        match credits {
            Some(credits) => {
                let unit = if credits == 1 { "credit" } else { "credits" };
                let _ = write!(page, "<p class=\"price\"><strong>{credits} {unit}</strong> per request</p>");
            }
            None => page.push_str("<p class=\"price\">Priced per request, in the plan&#39;s credits</p>"),
        }
        page.push_str("<dl>");
        let endpoint = match &accepted.extra.http_verb {
            Some(verb) => format!("{verb} {}", resource.url),
            None => resource.url.clone(),
        };
        let _ = write!(page, "<dt>Endpoint</dt><dd><code>{}</code></dd>", escape_html(&endpoint));
        let _ = write!(page, "<dt>Plan</dt><dd><code>{}</code></dd>", escape_html(&accepted.plan_id));
        if let Some(agent) = &accepted.extra.agent_id {
            let _ = write!(page, "<dt>Agent</dt><dd><code>{}</code></dd>", escape_html(agent));
        }
        let _ = write!(
            page,
            "<dt>Payment</dt><dd>{} on {}</dd></dl>",
            escape_html(&accepted.scheme),
            escape_html(&accepted.network)
        );
        match checkout_url(environment, &accepted.plan_id) {
            Some(url) => {
                let _ = write!(
                    page,
                    "<p><a class=\"buy\" href=\"{}\">Buy credits on Nevermined</a></p>",
                    escape_html(&url)
                );
            }
            None => page.push_str(
                "<p class=\"note\">This server settles with a Nevermined backend of its own: buy credits \
                 for this plan where its seller sells them.</p>",
            ),
        }
    }
    page.push_str(
        "<p class=\"note\">Programs pay with the x402 protocol: read the <code>payment-required</code> \
         header of this answer, obtain an access token for the plan, and send it again in the \
         <code>payment-signature</code> header.</p></main></body></html>",
    );
    page
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;
    use crate::wire::envelope::EnvelopeBuilder;

    fn accept(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(ACCEPT, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn a_browser_navigation_prefers_html_and_programs_do_not() {
        let html = [
            // Chromium, Firefox, Safari opening a URL.
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/png,image/svg+xml,*/*;q=0.8",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "TEXT/HTML",
            " text/html ; q=1.0 ",
            "application/json;q=0.5, text/html",
            "text/*",
            "text/*;q=0.9, application/*;q=0.8",
            "text/html;level=1;q=0.9, application/json;q=0.1",
        ];
        for value in html {
            assert!(prefers_html(&accept(&[value])), "{value}");
        }
        let json = [
            "*/*",
            "application/json",
            "application/json, text/html",
            "text/html, application/json",
            "text/html;q=0.5, application/json",
            "text/html;q=0",
            "*/*;q=0.8, text/html;q=0",
            "application/*",
            "text/plain",
            "text/html;q=2",
            "text/html;q=abc",
            "text/html;q=0.1234",
            "text/html;q=1.5",
            "",
            ",,;;",
            "text",
            "text/html;q=",
        ];
        for value in json {
            assert!(!prefers_html(&accept(&[value])), "{value}");
        }
        assert!(!prefers_html(&HeaderMap::new()), "no Accept");
        // Several Accept headers are one list.
        assert!(prefers_html(&accept(&["application/json;q=0.1", "text/html"])));
        assert!(!prefers_html(&accept(&["text/html;q=0.1", "application/json"])));
        // An opaque (non-UTF-8) value is ignored, not a failure.
        let mut headers = accept(&["text/html"]);
        headers.append(ACCEPT, HeaderValue::from_bytes(b"\xff/\xfe").unwrap());
        assert!(prefers_html(&headers));
    }

    /// Every combination of case, spacing, quality spelling and order of an `Accept`
    /// that names `text/html` and `application/json`, with and without a `*/*` range:
    /// HTML exactly when its quality is strictly higher.
    #[test]
    fn quality_spelling_case_spacing_and_order_do_not_change_the_choice() {
        let qualities: [(&str, u16); 8] = [
            ("", 1000),
            ("1", 1000),
            ("1.0", 1000),
            ("1.000", 1000),
            ("0.9", 900),
            ("0.900", 900),
            ("0.5", 500),
            ("0", 0),
        ];
        let html_spellings = ["text/html", "TEXT/HTML", "Text/Html"];
        let json_spellings = ["application/json", "APPLICATION/JSON"];
        let separators = [",", ", ", " ,  "];
        let param_spellings = [";q=", "; q=", " ;Q=", ";  q="];
        let with_q = |media: &str, q: &str, param: &str| {
            if q.is_empty() { media.to_owned() } else { format!("{media}{param}{q}") }
        };
        let mut cases = 0;
        for (html_q, html_value) in qualities {
            for (json_q, json_value) in qualities {
                for (i, param) in param_spellings.iter().enumerate() {
                    let html = with_q(html_spellings[i % 3], html_q, param);
                    let json = with_q(json_spellings[i % 2], json_q, param);
                    let sep = separators[i % 3];
                    for wildcard in [None, Some("*/*;q=0.8")] {
                        let mut orders = vec![format!("{html}{sep}{json}"), format!("{json}{sep}{html}")];
                        if let Some(wildcard) = wildcard {
                            orders.push(format!("{wildcard}{sep}{html}{sep}{json}"));
                            orders.push(format!("{json}{sep}{wildcard}{sep}{html}"));
                        }
                        for value in orders {
                            let expected = html_value > json_value;
                            assert_eq!(prefers_html(&accept(&[&value])), expected, "{value}");
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 8 * 8 * 4 * 6);
    }

    #[test]
    fn checkout_links_go_to_the_environments_app() {
        let url = |environment, plan| checkout_url(environment, plan).unwrap_or_default();
        assert_eq!(url(Environment::Sandbox, "123"), "https://nevermined.app/checkout/123");
        assert_eq!(url(Environment::Live, "123"), "https://nevermined.app/checkout/123");
        assert_eq!(url(Environment::StagingSandbox, "9"), "https://nevermined.dev/checkout/9");
        assert_eq!(url(Environment::StagingLive, "9"), "https://nevermined.dev/checkout/9");
        assert_eq!(checkout_url(Environment::Custom, "7"), None, "a custom backend has no checkout page");
        // Anything but an id's characters stays inside one path segment.
        assert_eq!(
            url(Environment::Live, "1/../x?y=\"<z>"),
            "https://nevermined.app/checkout/1%2F..%2Fx%3Fy%3D%22%3Cz%3E"
        );
    }

    #[test]
    fn the_page_escapes_every_value_and_links_to_checkout() {
        let envelope = EnvelopeBuilder::new("42", "eip155:84532")
            .url("/ask")
            .http_verb("POST")
            .agent_id("7")
            .description("Ask <b>\"anything\"</b> & more")
            .build();
        let page = payment_page(&envelope, Environment::Sandbox, Some(3));
        assert!(page.contains("<strong>3 credits</strong> per request"), "{page}");
        let page = payment_page(&envelope, Environment::Sandbox, None);
        assert!(page.starts_with("<!doctype html>"), "{page}");
        assert!(page.contains("<h1>Ask &lt;b&gt;&quot;anything&quot;&lt;/b&gt; &amp; more</h1>"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(page.contains("<code>POST /ask</code>"), "{page}");
        assert!(page.contains("<code>42</code>"), "{page}");
        assert!(page.contains("href=\"https://nevermined.app/checkout/42\""), "{page}");
        // No price known (a route priced by its body): the page does not invent one.
        assert!(page.contains("Priced per request"), "{page}");
        // Self-contained: nothing to load.
        for external in ["<script", "<link", "<img", "src=", "url("] {
            assert!(!page.contains(external), "{external} in {page}");
        }
        let mut failed = envelope.clone();
        failed.error = Some("insufficient balance <1>".into());
        let page = payment_page(&failed, Environment::Sandbox, None);
        assert!(page.contains("<p class=\"reason\">insufficient balance &lt;1&gt;</p>"), "{page}");
    }

    #[test]
    fn escapes_the_five_characters_and_borrows_clean_text() {
        assert!(matches!(escape_html("plain 123"), Cow::Borrowed("plain 123")));
        assert_eq!(
            escape_html("<a href='x'>\"&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&quot;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn reads_quality_values_as_http_writes_them() {
        for (value, expected) in [
            ("1", Some(1.0)),
            ("1.", Some(1.0)),
            ("0.25", Some(0.25)),
            ("0.", Some(0.0)),
            ("1.000", Some(1.0)),
        ] {
            assert_eq!(parse_quality(value), expected, "{value}");
        }
        for value in ["", ".5", "1.001", "2", "-0", "0.1234", "0,5", "0.5x", "+1", "1e0"] {
            assert_eq!(parse_quality(value), None, "{value}");
        }
    }
}
