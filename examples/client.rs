//! The buyer's side: pays a protected endpoint by itself and prints the receipt.
//!
//! Start the quick start first, then run the line it prints, e.g.:
//!
//! ```text
//! NVM_API_KEY='local:eyJ…' NVM_BACKEND_URL=http://127.0.0.1:PORT \
//!   cargo run -p nvm-examples --example client -- http://127.0.0.1:3000/ask
//! ```
//!
//! `NVM_API_KEY` is the subscriber's key (with a `sandbox:`/`live:` key, the Nevermined
//! backend is used). The client sends the request, receives the 402, decodes the
//! envelope, mints an access token, retries with it, and prints the receipt. It exits 1
//! when the answer is not a paid 2xx (free, refused, failed, or its settlement failed).

use nvm_runtime::client::{PayingClient, PaymentOutcome, Subscriber};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:3000/ask".to_owned());
    let subscriber = match Subscriber::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!(
                "client: {}\n(run the quick start: it prints the line to run this client with)",
                nvm_examples::report(&error)
            );
            std::process::exit(2);
        }
    };
    let client = PayingClient::new(subscriber);
    let request = client
        .http()
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"query":"What is the meaning of life?"}"#);
    match client.send(request).await {
        Ok(paid) => {
            let status = paid.response.status();
            let outcome = paid.outcome;
            let body = paid.response.text().await.unwrap_or_default();
            println!("status: {status}");
            println!("body: {body}");
            match outcome {
                PaymentOutcome::Settled(receipt) if status.is_success() => {
                    println!("credits redeemed: {}", receipt.credits_redeemed.unwrap_or_default());
                    let remaining = receipt.remaining_balance.map(|a| a.to_string()).unwrap_or_default();
                    println!("remaining balance: {remaining}");
                    println!("transaction: {}", receipt.transaction);
                }
                // Anything else is not what a buyer paid for: say what happened, exit 1.
                outcome => {
                    eprintln!("client: {url} answered {status}, not a paid 2xx: {outcome:?}");
                    std::process::exit(1);
                }
            }
        }
        Err(error) => {
            eprintln!("client: {}", nvm_examples::report(&error));
            std::process::exit(1);
        }
    }
}
