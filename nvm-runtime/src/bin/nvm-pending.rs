//! `nvm-pending`: the operator's command over a seller's pending-settlement journal.
//! Lists the settlements of unknown outcome (and those in flight), shows one, and
//! resolves one as burned or not burned: the buyer's retry of that call then gets its
//! answer, or runs (and pays) afresh.
//!
//! ```text
//! nvm-pending --file pending-settlements.jsonl list
//! nvm-pending --redis redis://127.0.0.1:6379 show <ID>
//! nvm-pending --file pending-settlements.jsonl close <ID> burned
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nvm_runtime::{PendingSettlement, PendingSettlements, Resolution, SettlementStatus};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "nvm-pending",
    about = "Lists, shows and resolves the pending settlements of a seller's journal.",
    after_help = "The journal is a file (--file, or NVM_PENDING_SETTLEMENTS) or Redis (--redis, with the \
                  `redis` feature). Resolve a record once you know from the facilitator or your books \
                  whether its credits were burned."
)]
struct Options {
    /// The journal file (default: $NVM_PENDING_SETTLEMENTS)
    #[arg(long, value_name = "PATH", conflicts_with = "redis")]
    file: Option<String>,
    /// The Redis server holding the journal (`redis://host:port`)
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The key prefix of the seller's RedisStore, when it set one
    #[arg(long, value_name = "PREFIX", requires = "redis")]
    prefix: Option<String>,
    /// Print records as JSON lines
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The settlements of unknown outcome (with --all, those in flight and those deferred,
    /// not sent yet, too)
    List {
        /// Also the settlements in flight
        #[arg(long)]
        all: bool,
    },
    /// One record and where it stands
    Show {
        /// The record's id (the buyer's receipt names it: pendingSettlementId)
        id: String,
    },
    /// Resolves an open record: `burned` (the buyer's retry gets the answer) or
    /// `not-burned` (the buyer's retry pays afresh)
    Close {
        /// The record's id
        id: String,
        /// `burned` or `not-burned`
        resolution: Resolution,
    },
}

fn main() -> ExitCode {
    let options = Options::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start: {error}")),
    };
    runtime.block_on(run(options))
}

async fn run(options: Options) -> ExitCode {
    let (journal, name) = match open(&options) {
        Ok(opened) => opened,
        Err(message) => return fail(&message),
    };
    let result = match &options.command {
        Command::List { all } => list(&journal, &name, *all, options.json).await,
        Command::Show { id } => match journal.get(id).await {
            Ok(Some((record, status))) => {
                print(&record, status, options.json);
                Ok(ExitCode::SUCCESS)
            }
            Ok(None) => Err(format!("{name}: no record {id}")),
            Err(error) => Err(format!("{name}: {error}")),
        },
        Command::Close { id, resolution } => match journal.close(id, *resolution).await {
            Ok(true) => {
                println!("{id}: resolved as {resolution}");
                Ok(ExitCode::SUCCESS)
            }
            Ok(false) => Err(format!(
                "{name}: no open record {id} (see `nvm-pending list --all`; a record is resolved once)"
            )),
            Err(error) => Err(format!("{name}: {error}")),
        },
    };
    result.unwrap_or_else(|message| fail(&message))
}

/// The journal the options name, and what to call it in messages (its file, or its
/// Redis server and key prefix).
fn open(options: &Options) -> Result<(PendingSettlements, String), String> {
    if let Some(url) = &options.redis {
        let name = match &options.prefix {
            Some(prefix) => format!("{url} (prefix {prefix})"),
            None => url.clone(),
        };
        return redis(url, options.prefix.as_deref()).map(|journal| (journal, name));
    }
    let path = options
        .file
        .clone()
        .or_else(|| std::env::var("NVM_PENDING_SETTLEMENTS").ok().filter(|p| !p.trim().is_empty()))
        .ok_or("name the journal: --file PATH (or NVM_PENDING_SETTLEMENTS), or --redis URL")?;
    if !std::path::Path::new(&path).exists() {
        return Err(format!("{path}: no such journal file"));
    }
    let journal = PendingSettlements::file(&path).map_err(|error| format!("{path}: {error}"))?;
    Ok((journal, path))
}

#[cfg(feature = "redis")]
fn redis(url: &str, prefix: Option<&str>) -> Result<PendingSettlements, String> {
    let store = nvm_runtime::store::RedisStore::open(url).map_err(|error| error.to_string())?;
    let store = match prefix {
        Some(prefix) => store.prefix(prefix),
        None => store,
    };
    Ok(PendingSettlements::redis(&store))
}

#[cfg(not(feature = "redis"))]
fn redis(_: &str, _: Option<&str>) -> Result<PendingSettlements, String> {
    Err("this nvm-pending was built without Redis: install it with `--features cli,redis`".to_owned())
}

async fn list(journal: &PendingSettlements, name: &str, all: bool, json: bool) -> Result<ExitCode, String> {
    let failed = |error: std::io::Error| format!("{name}: {error}");
    let statuses: &[SettlementStatus] = if all {
        &[SettlementStatus::Unknown, SettlementStatus::Settling, SettlementStatus::Deferred]
    } else {
        &[SettlementStatus::Unknown]
    };
    let mut records: Vec<(PendingSettlement, SettlementStatus)> = Vec::new();
    for status in statuses {
        let listed = journal.list(*status).await.map_err(failed)?;
        records.extend(listed.into_iter().map(|r| (r, *status)));
    }
    for line in journal.unreadable_lines().await.map_err(failed)? {
        eprintln!("nvm-pending: {line}");
    }
    for (record, status) in &records {
        print(record, *status, json);
    }
    if !json {
        eprintln!("{} record(s) in {name}", records.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn print(record: &PendingSettlement, status: SettlementStatus, json: bool) {
    let status = match status {
        SettlementStatus::Settling => "settling".to_owned(),
        SettlementStatus::Deferred => "deferred".to_owned(),
        SettlementStatus::Unknown => "unknown".to_owned(),
        SettlementStatus::Resolved(resolution) => format!("resolved: {resolution}"),
        _ => "other".to_owned(),
    };
    if json {
        let mut value = serde_json::to_value(record).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.remove("resume");
            object.remove("held");
            object.insert("status".to_owned(), status.into());
        }
        println!("{value}");
        return;
    }
    println!(
        "{}\t{status}\t{} credit(s)\tplan {}\tpayer {}\t{} {}\tagentRequestId {}\trecordedAt {}",
        record.id,
        record.amount,
        record.plan_id,
        record.payer.as_deref().unwrap_or("-"),
        record.method,
        record.path,
        record.agent_request_id.as_deref().unwrap_or("-"),
        record.recorded_at,
    );
}

fn fail(message: &str) -> ExitCode {
    eprintln!("nvm-pending: {message}");
    ExitCode::FAILURE
}
