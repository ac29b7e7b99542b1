//! The facilitator client against servers that fail: a dead port, a hung server, an
//! HTML gateway page, truncated JSON, a 500 and a refusal. Each is told apart ("the
//! facilitator said no" versus "the facilitator is unavailable") within the timeout.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use nvm_runtime::__private::backend::Facilitator;
use nvm_runtime::__private::wire::EnvelopeBuilder;
use nvm_runtime::__private::wire::FacilitatorRequest;
use nvm_runtime::error::FacilitatorError;

const TIMEOUT: Duration = Duration::from_millis(400);
// header {"alg":"none"}, payload {"sub":"0xabc","o11y":"k"}
const KEY: &str = "local:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.";

/// A one-purpose HTTP server on 127.0.0.1 answering every connection with `answer`
/// (or never, for `None`), for as long as the test runs.
fn server(answer: Option<&'static str>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { break };
            let _ = read_request(&mut stream);
            match answer {
                Some(answer) => {
                    let _ = stream.write_all(answer.as_bytes());
                }
                None => held.push(stream), // hang: keep the connection open, say nothing
            }
        }
    });
    url
}

/// A complete HTTP/1.1 answer with the right length.
fn answer(status: &str, content_type: &str, body: &str) -> &'static str {
    let text = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    Box::leak(text.into_boxed_str())
}

fn read_request(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 8192];
    let _ = stream.read(&mut buf)?;
    Ok(())
}

fn client(url: &str) -> Facilitator {
    Facilitator::new(url, &KEY.parse().expect("key"), TIMEOUT).expect("client")
}

fn request() -> FacilitatorRequest {
    FacilitatorRequest {
        payment_required: EnvelopeBuilder::new("1", "eip155:84532").url("/ask").build(),
        x402_access_token: "token".into(),
        max_amount: Some(1.into()),
        agent_request_id: None,
    }
}

async fn verify_and_settle(url: &str) -> [(Result<(), FacilitatorError>, Duration); 2] {
    let client = client(url);
    let started = Instant::now();
    let verify = client.verify(&request()).await.map(drop);
    let verify_took = started.elapsed();
    let started = Instant::now();
    let settle = client.settle(&request()).await.map(drop);
    [(verify, verify_took), (settle, started.elapsed())]
}

fn assert_unavailable(url: &str, results: [(Result<(), FacilitatorError>, Duration); 2], what: &str) {
    for (result, took) in results {
        let error = result.expect_err(what);
        assert!(error.is_unavailable(), "{what}: {error:?} ({url})");
        assert!(took < TIMEOUT + Duration::from_millis(300), "{what} took {took:?}");
    }
}

#[actix_web::test]
async fn a_dead_port_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let results = verify_and_settle(&url).await;
    assert!(
        // Refused before anything was sent: unavailable, no status, nothing carried out.
        matches!(&results[0].0, Err(e) if e.is_unavailable() && e.status().is_none() && !e.may_have_been_carried_out()),
        "{:?}",
        results[0]
    );
    assert_unavailable(&url, results, "dead port");
}

#[actix_web::test]
async fn a_hung_server_times_out_within_the_bound() {
    let url = server(None);
    let results = verify_and_settle(&url).await;
    for (result, took) in &results {
        assert!(
            matches!(result, Err(e) if e.is_unavailable() && e.status().is_none()
                && std::error::Error::source(e).is_some_and(|why| why.to_string() == format!("no answer within {TIMEOUT:?}"))),
            "{result:?}"
        );
        assert!(*took >= TIMEOUT, "returned before the timeout: {took:?}");
    }
    assert_unavailable(&url, results, "hung server");
}

#[actix_web::test]
async fn an_html_gateway_page_is_unavailable() {
    let url =
        server(Some(answer("502 Bad Gateway", "text/html", "<html><body>502 Bad Gateway</body></html>")));
    let results = verify_and_settle(&url).await;
    assert!(
        matches!(&results[1].0, Err(e) if e.is_unavailable() && e.status() == Some(502) && e.message().is_none()),
        "{:?}",
        results[1]
    );
    assert_unavailable(&url, results, "HTML 502");
}

#[actix_web::test]
async fn truncated_json_and_html_with_200_are_unavailable() {
    for body in [r#"{"isValid":tr"#, "<html>ok</html>"] {
        let url = server(Some(answer("200 OK", "application/json", body)));
        let results = verify_and_settle(&url).await;
        assert!(matches!(&results[0].0, Err(e) if e.is_unavailable() && e.status() == Some(200)), "{body}");
        assert_unavailable(&url, results, body);
    }
}

#[actix_web::test]
async fn a_500_is_unavailable_but_a_refusal_is_the_payments_fault() {
    let url = server(Some(answer("500 Internal Server Error", "application/json", "{}")));
    assert_unavailable(&url, verify_and_settle(&url).await, "500");

    let body = r#"{"code":"BCK.X402.0059","message":"token already used","httpStatus":400}"#;
    let url = server(Some(answer("400 Bad Request", "application/json", body)));
    let error = client(&url).settle(&request()).await.unwrap_err();
    assert!(!error.is_unavailable(), "{error:?}");
    assert_eq!(error.code(), Some("BCK.X402.0059"));
}

/// Every way a settle call can end, sorted into what the seller can know: settled,
/// declined, refused (nothing can have been burned) or unknown (the request may have
/// been carried out; its answer did not come back whole).
#[actix_web::test]
async fn settle_outcomes_tell_refused_from_unknown() {
    use nvm_runtime::__private::backend::SettleOutcome;

    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        url
    };
    let json = "application/json";
    let settled = r#"{"success":true,"transaction":"0x1","creditsRedeemed":"1"}"#;
    let declined = r#"{"success":false,"errorReason":"insufficient_balance","transaction":""}"#;
    let spent = r#"{"code":"BCK.X402.0059","message":"token already used","httpStatus":400}"#;
    let cases: Vec<(&str, String, &str)> = vec![
        ("success", server(Some(answer("200 OK", json, settled))), "settled"),
        ("success:false", server(Some(answer("200 OK", json, declined))), "declined"),
        ("4xx with a code", server(Some(answer("400 Bad Request", json, spent))), "refused"),
        ("our key refused", server(Some(answer("401 Unauthorized", json, r#"{"message":"no"}"#))), "refused"),
        ("connection refused", dead, "refused"),
        ("no answer (timeout)", server(None), "unknown"),
        ("closed without answering", server(Some("")), "unknown"),
        ("500", server(Some(answer("500 Internal Server Error", json, "{}"))), "unknown"),
        ("502 html", server(Some(answer("502 Bad Gateway", "text/html", "<html>bad</html>"))), "unknown"),
        ("503", server(Some(answer("503 Service Unavailable", json, "{}"))), "unknown"),
        ("504", server(Some(answer("504 Gateway Timeout", json, "{}"))), "unknown"),
        ("truncated JSON", server(Some(answer("200 OK", json, r#"{"success":tr"#))), "unknown"),
        (
            "truncated body",
            server(Some(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"succ",
            )),
            "unknown",
        ),
        (
            "4xx without the error envelope",
            server(Some(answer("404 Not Found", "text/html", "<p>no</p>"))),
            "unknown",
        ),
    ];
    for (cause, url, want) in cases {
        let outcome = client(&url).settle_outcome(&request()).await;
        let got = match &outcome {
            SettleOutcome::Settled(_) => "settled",
            SettleOutcome::Declined(_) => "declined",
            SettleOutcome::Refused(_) => "refused",
            SettleOutcome::Unknown(_) => "unknown",
            _ => "other",
        };
        assert_eq!(got, want, "{cause}: {outcome:?}");
    }
}
