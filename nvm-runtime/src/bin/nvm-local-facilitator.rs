//! `nvm-local-facilitator`: the Nevermined backend's x402 endpoints on loopback, for
//! development and tests that run offline.
//!
//! Prints one JSON line first, `{"backendUrl","builderApiKey","subscriberApiKey",
//! "planId","agentId"}`, then serves until killed.

use std::io::Write as _;
use std::process::ExitCode;

use nvm_runtime::local::{DEFAULT_CREDITS, LocalFacilitator};

const USAGE: &str = "\
usage: nvm-local-facilitator [--port N] [--credits N]

Serves the Nevermined x402 endpoints (permissions, verify, settle, plan metadata) on
127.0.0.1 over an in-memory ledger, then prints one JSON line on stdout:
  {\"backendUrl\",\"builderApiKey\",\"subscriberApiKey\",\"planId\",\"agentId\"}
and serves until killed. Point the official SDKs at it with NVM_BACKEND_URL=<backendUrl>.

options:
  --port N       port to bind on 127.0.0.1 (default 0: any free port)
  --credits N    starting credits of the demo subscriber (default 100)
  -h, --help     print this help";

#[derive(Debug, PartialEq, Eq)]
struct Options {
    port: u16,
    credits: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Run(Options),
    Help,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut options = Options { port: 0, credits: DEFAULT_CREDITS };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.to_owned())),
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--port" | "--credits" => {
                let value = inline.or_else(|| args.next()).ok_or_else(|| format!("{flag} needs a value"))?;
                if flag == "--port" {
                    options.port = value
                        .parse()
                        .map_err(|_| format!("--port takes a port number (0-65535), not {value:?}"))?;
                } else {
                    options.credits = value
                        .parse()
                        .map_err(|_| format!("--credits takes a non-negative integer, not {value:?}"))?;
                }
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(Parsed::Run(options))
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(options)) => options,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("nvm-local-facilitator: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let local = match LocalFacilitator::builder().port(options.port).credits(options.credits).start() {
        Ok(local) => local,
        Err(error) => {
            eprintln!("nvm-local-facilitator: cannot listen on 127.0.0.1:{}: {error}", options.port);
            return ExitCode::FAILURE;
        }
    };
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
    eprintln!(
        "nvm-local-facilitator: serving on {} (plan {}, agent {}); stop with Ctrl-C",
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
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_flags() {
        assert_eq!(parse(args(&[])), Ok(Parsed::Run(Options { port: 0, credits: 100 })));
        assert_eq!(
            parse(args(&["--port", "8080", "--credits=5"])),
            Ok(Parsed::Run(Options { port: 8080, credits: 5 }))
        );
        assert_eq!(parse(args(&["--help"])), Ok(Parsed::Help));
        assert!(parse(args(&["--port"])).is_err());
        assert!(parse(args(&["--port", "70000"])).is_err());
        assert!(parse(args(&["--credits", "-1"])).is_err());
        assert!(parse(args(&["--verbose"])).is_err());
    }
}
