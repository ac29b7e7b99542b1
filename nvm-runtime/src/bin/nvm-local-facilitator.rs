//! `nvm-local-facilitator`: the Nevermined backend's x402 endpoints on loopback, for
//! development and tests that run offline.
//!
//! Prints one JSON line first, `{"backendUrl","builderApiKey","subscriberApiKey",
//! "planId","agentId"}`, then serves until killed. `--latency-ms N` delays every answer
//! by N ms, to measure a seller as it runs against the hosted backend.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue};
use clap::{CommandFactory as _, Parser};
use nvm_runtime::__private::local::{DEFAULT_CREDITS, LocalFacilitatorExt as _, start_on};

/// The command line.
#[derive(Debug, PartialEq, Eq, Parser)]
#[command(
    name = "nvm-local-facilitator",
    about = "Serves the Nevermined x402 endpoints (permissions, verify, settle, plan metadata) on \
             127.0.0.1 over an in-memory ledger.",
    after_help = "On start it prints one JSON line on stdout:\n  \
                  {\"backendUrl\",\"builderApiKey\",\"subscriberApiKey\",\"planId\",\"agentId\"}\n\
                  and serves until killed. Point the official SDKs at it with NVM_BACKEND_URL=<backendUrl>."
)]
struct Options {
    /// Port to bind on 127.0.0.1 (0: any free port)
    #[arg(long, value_name = "N", default_value_t = 0)]
    port: u16,
    /// Starting credits of the demo subscriber
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CREDITS)]
    credits: u64,
    /// Delay every answer by N milliseconds, as a remote backend's round trip would
    #[arg(long = "latency-ms", value_name = "N", default_value_t = 0)]
    latency_ms: u64,
}

/// `error` with the usage line, which clap shows for some refusals (an unknown
/// argument) and not others (a missing or bad value): every refusal shows it.
fn with_usage(mut error: clap::Error) -> clap::Error {
    if error.use_stderr() && error.get(ContextKind::Usage).is_none() {
        error.insert(ContextKind::Usage, ContextValue::StyledStr(Options::command().render_usage()));
    }
    error
}

fn main() -> ExitCode {
    // `--help` prints to stdout and exits 0; a bad command line prints the error and the
    // usage to stderr and exits 2.
    let options = Options::try_parse().map_err(with_usage).unwrap_or_else(|error| error.exit());
    let local = match start_on(options.port) {
        Ok(local) => local,
        Err(error) => {
            eprintln!("nvm-local-facilitator: cannot listen on 127.0.0.1:{}: {error}", options.port);
            return ExitCode::FAILURE;
        }
    };
    local.set_balance(local.plan_id(), local.subscriber_address(), options.credits);
    local.set_latency(Duration::from_millis(options.latency_ms));
    let line = match serde_json::to_string(local.info()) {
        Ok(line) => line,
        Err(error) => {
            eprintln!("nvm-local-facilitator: cannot print the connection details: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    drop(stdout);
    let latency = if options.latency_ms > 0 {
        format!(", every answer delayed {} ms", options.latency_ms)
    } else {
        String::new()
    };
    eprintln!(
        "nvm-local-facilitator: serving on {} (plan {}, agent {}{latency}); stop with Ctrl-C",
        local.backend_url(),
        local.plan_id(),
        local.agent_id()
    );
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("nvm-local-facilitator").chain(args.iter().copied()))
    }

    fn refused(args: &[&str]) -> ErrorKind {
        parse(args).expect_err("refused").kind()
    }

    #[test]
    fn the_command_is_well_formed() {
        Options::command().debug_assert();
    }

    #[test]
    fn parses_flags() {
        assert_eq!(parse(&[]).unwrap(), Options { port: 0, credits: DEFAULT_CREDITS, latency_ms: 0 });
        assert_eq!(DEFAULT_CREDITS, 100);
        assert_eq!(
            parse(&["--port", "8080", "--credits=5"]).unwrap(),
            Options { port: 8080, credits: 5, latency_ms: 0 }
        );
        assert_eq!(refused(&["--port"]), ErrorKind::InvalidValue);
        assert_eq!(refused(&["--port", "70000"]), ErrorKind::ValueValidation);
        assert_eq!(refused(&["--port", "seventy"]), ErrorKind::ValueValidation);
        assert!(parse(&["--credits", "-1"]).is_err());
        assert_eq!(refused(&["--verbose"]), ErrorKind::UnknownArgument);
        assert_eq!(refused(&["8080"]), ErrorKind::UnknownArgument);
    }

    #[test]
    fn parses_the_latency() {
        assert_eq!(parse(&["--latency-ms", "40"]).unwrap().latency_ms, 40);
        assert_eq!(
            parse(&["--latency-ms=250", "--port", "1"]).unwrap(),
            Options { port: 1, credits: DEFAULT_CREDITS, latency_ms: 250 }
        );
        assert_eq!(parse(&["--latency-ms", "0"]).unwrap().latency_ms, 0);
        assert_eq!(refused(&["--latency-ms"]), ErrorKind::InvalidValue);
        assert_eq!(refused(&["--latency-ms", "fast"]), ErrorKind::ValueValidation);
        assert_eq!(refused(&["--latency-ms", "1.5"]), ErrorKind::ValueValidation);
        assert!(parse(&["--latency-ms", "-5"]).is_err());
    }

    #[test]
    fn help_lists_every_option_with_its_default() {
        for flag in ["--help", "-h"] {
            let error = parse(&[flag]).expect_err("help is an early exit");
            assert_eq!(error.kind(), ErrorKind::DisplayHelp, "{flag}");
            let help = error.to_string();
            for option in ["--port <N>", "--credits <N>", "--latency-ms <N>", "-h, --help"] {
                assert!(help.contains(option), "{option} in {help}");
            }
            assert!(help.contains("[default: 0]") && help.contains("[default: 100]"), "{help}");
            assert!(help.contains("\"backendUrl\""), "{help}");
        }
    }

    #[test]
    fn every_refusal_shows_the_usage_once() {
        for args in [&["--bogus"][..], &["--port"], &["--port", "seventy"], &["--credits", "-3"], &["x"]] {
            let error = with_usage(parse(args).expect_err("refused"));
            assert_eq!(error.exit_code(), 2, "{args:?}");
            let text = error.to_string();
            assert_eq!(text.matches("Usage: nvm-local-facilitator [OPTIONS]").count(), 1, "{args:?}: {text}");
            assert!(text.starts_with("error: "), "{text}");
        }
        let help = with_usage(parse(&["--help"]).expect_err("an early exit"));
        assert_eq!(help.exit_code(), 0);
        assert_eq!(help.get(ContextKind::Usage), None, "help is left as it is");
    }
}
