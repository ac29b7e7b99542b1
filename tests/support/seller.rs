//! A paid seller in a process of its own, for the crash test: `POST /paid` (`#[paid]`)
//! and `POST /mw/content` (a `PaymentMiddleware` table), 2 credits each, on the backend,
//! key and pending-settlement journal of its environment (`NVM_API_KEY`,
//! `NVM_BACKEND_URL`, `NVM_PENDING_SETTLEMENTS`). It prepares (recovering what a killed
//! predecessor left in flight), then prints `listening on http://127.0.0.1:PORT`. With
//! `NVM_TEST_SELLER_DEFERRED` set, every route's settlement is deferred.

use actix_web::{App, HttpServer, web};
use nvm_runtime::{DeferredSettlement, PaymentMiddleware, Payments, RouteConfig, SettlementStatus};
use nvm_tests::{CREDITS, DEMO_AGENT_ID, DEMO_PLAN_ID, Runs, middleware_content, paid_content};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    if std::env::var_os("NVM_TEST_SELLER_LOG").is_some() {
        tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    }
    let deferred = std::env::var_os("NVM_TEST_SELLER_DEFERRED").is_some();
    let built = Payments::builder_from_env().and_then(|builder| match deferred {
        true => {
            builder.deferred_settlement(DeferredSettlement::new().everywhere().max_exposure(1_000)).build()
        }
        false => builder.build(),
    });
    let payments = match built {
        Ok(payments) => payments,
        Err(error) => {
            eprintln!("nvm-test-seller: {error}");
            std::process::exit(2);
        }
    };
    let table = PaymentMiddleware::new(payments.clone())
        .route("POST /mw/content", RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(CREDITS));
    if let Err(error) = payments.prepare().await {
        eprintln!("nvm-test-seller: {error}");
        std::process::exit(2);
    }
    let report = payments.pending_settlements().list(SettlementStatus::Unknown).await?;
    let runs = web::Data::new(Runs::default());
    let server = HttpServer::new(move || {
        App::new().app_data(payments.clone()).app_data(runs.clone()).service(paid_content).service(
            web::scope("/mw").wrap(table.clone()).route("/content", web::post().to(middleware_content)),
        )
    })
    .workers(1)
    .bind(("127.0.0.1", 0))?;
    println!("listening on http://{} ({} pending)", server.addrs()[0], report.len());
    server.run().await
}
