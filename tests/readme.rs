//! Every Rust snippet of the README, run as written, in a crate outside this workspace
//! (as a user's crate: `nvm-runtime` by path, the workspace's `Cargo.lock`, the shared
//! target directory, `--offline`):
//!
//! - each server snippet (one with `HttpServer::new`) is started as a process against
//!   a local facilitator (`NVM_API_KEY`, `NVM_BACKEND_URL`, `NVM_PLAN_ID`, `PORT=0`),
//!   then paid by the buyer snippet (one with `PayingClient::new`), which must exit 0
//!   with a settled receipt, and must exit non-zero on a route that is not paid;
//! - the snippets headed by a file name (`// src/lib.rs`, `// tests/paid.rs`,
//!   `# .cargo/config.toml`) are that file of the crate, whose `cargo test` must pass:
//!   the "Testing your app" recipe, outside the workspace.
//!
//! A snippet that fits none of these fails the test: a new one needs a way to run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nvm_runtime::local::LocalFacilitator;

/// A fenced block of the README: its info string (`rust,no_run`) and its text.
#[derive(Debug)]
struct Block {
    info: String,
    code: String,
}

fn readme_blocks() -> Vec<Block> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for line in readme.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some(Block { info: info.trim().to_owned(), code: String::new() }),
            (Some(_), Some("")) => blocks.extend(current.take()),
            (Some(block), _) => {
                block.code.push_str(line);
                block.code.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The file a block is, from its first line (`// tests/paid.rs`, `# .cargo/config.toml …`).
fn file_name(block: &Block) -> Option<String> {
    let first = block.code.lines().next()?;
    let name = first.strip_prefix("// ").or_else(|| first.strip_prefix("# "))?;
    let name = name.split_whitespace().next()?;
    (name.ends_with(".rs") || name.ends_with(".toml")).then(|| name.to_owned())
}

/// The target directory this test was built in: `<target>/<profile>/deps/readme-…`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

/// A child process, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cargo(scratch: &Path, args: &[&str]) -> Output {
    cargo_with(scratch, args, &[])
}

/// [`cargo`] with `vars` set.
fn cargo_with(scratch: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .args(args)
        .arg("--offline")
        .current_dir(scratch)
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("NVM_PLAN_ID")
        .env_remove("NVM_AGENT_ID")
        .env_remove("NVM_API_KEY")
        .env_remove("RUSTFLAGS")
        .envs(vars.iter().copied());
    command.output().expect("run cargo")
}

fn assert_ok(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts the server binary `name` against `local` and returns it with its URL.
fn start_server(bin: &Path, local: &LocalFacilitator) -> (Running, String) {
    let mut child = Command::new(bin)
        .env("NVM_API_KEY", local.builder_api_key())
        .env("NVM_BACKEND_URL", local.backend_url())
        .env("NVM_PLAN_ID", local.plan_id())
        .env("PORT", "0")
        .env_remove("NVM_ENVIRONMENT")
        .env_remove("NVM_AGENT_ID")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let stdout = child.stdout.take().expect("stdout");
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line =
            rx.recv_timeout(left).unwrap_or_else(|_| panic!("{} printed no URL in 30 s", bin.display()));
        if let Some(url) = line.strip_prefix("listening on ") {
            return (running, url.trim().to_owned());
        }
    }
}

fn run_buyer(bin: &Path, local: &LocalFacilitator, url: &str) -> Output {
    Command::new(bin)
        .arg(url)
        .env("NVM_API_KEY", local.subscriber_api_key())
        .env("NVM_BACKEND_URL", local.backend_url())
        .env_remove("NVM_ENVIRONMENT")
        .output()
        .expect("run the buyer")
}

#[test]
fn every_readme_snippet_runs_as_written_in_a_crate_of_its_own() {
    let started = Instant::now();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("workspace");
    let scratch = target_dir().join("readme-scratch").join("my-agent");
    let _ = std::fs::remove_dir_all(&scratch);
    for dir in ["src/bin", "tests", ".cargo"] {
        std::fs::create_dir_all(scratch.join(dir)).expect("scratch dirs");
    }
    // A user's crate, whose dependencies are the README's `Cargo.toml` block as written,
    // nvm-runtime taken by path instead of from git, under the versions of the
    // workspace's lock file, so nothing is downloaded.
    let dependencies = readme_blocks()
        .into_iter()
        .find(|b| b.info == "toml" && b.code.starts_with("# Cargo.toml"))
        .expect("the README's Cargo.toml block")
        .code;
    let git = r#"git = "https://github.com/nvm-paid/nvm-paid""#;
    assert!(
        dependencies.contains(git),
        "the README's dependencies take nvm-runtime from git: {dependencies}"
    );
    let runtime = format!("path = \"{}\"", workspace.join("nvm-runtime").display());
    let manifest = format!(
        "[package]\nname = \"my-agent\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n[workspace]\n\n{}",
        dependencies.replace(git, &runtime)
    );
    std::fs::write(scratch.join("Cargo.toml"), manifest).expect("Cargo.toml");
    std::fs::copy(workspace.join("Cargo.lock"), scratch.join("Cargo.lock")).expect("Cargo.lock");

    // Server binaries, each with its paid paths and what one buyer call there costs.
    let mut servers: Vec<(String, Vec<(&str, u64)>)> = Vec::new();
    let mut buyer = None;
    let mut files = Vec::new();
    for (i, block) in readme_blocks().iter().enumerate() {
        let is_rust = block.info.split(',').next() == Some("rust");
        let name = file_name(block);
        if let Some(name) = name.filter(|n| n.ends_with(".rs") || n.starts_with(".cargo/")) {
            std::fs::write(scratch.join(&name), &block.code).expect("write a snippet file");
            files.push(name);
        } else if !is_rust {
            continue;
        } else if block.code.contains("HttpServer::new") {
            let bin = format!("server_{i}");
            std::fs::write(scratch.join(format!("src/bin/{bin}.rs")), &block.code).expect("write a server");
            // `/ask` costs 1; the tour's `/generate` verifies 2 and charges them, its
            // `/translate` prices the buyer's one-word body at 1 (per 100 words).
            let mut paths = vec![("/ask", 1)];
            if block.code.contains("\"/generate\"") {
                paths.extend([("/generate", 2), ("/translate", 1)]);
            }
            servers.push((bin, paths));
        } else if block.code.contains("PayingClient::new") {
            assert!(buyer.is_none(), "two buyer snippets: say how the second one runs");
            std::fs::write(scratch.join("src/bin/buyer.rs"), &block.code).expect("write the buyer");
            buyer = Some("buyer".to_owned());
        } else if !block.code.contains("fn main") {
            // A configuration fragment (the "Production" section): compiled, with every
            // feature, as a doctest of nvm-runtime, whose front page this README is.
            continue;
        } else {
            panic!(
                "README snippet {i} ({}) is neither a server, the buyer, a file nor a fragment:\n{}",
                block.info, block.code
            );
        }
    }
    assert!(servers.len() >= 2, "the tour and the middleware servers: {servers:?}");
    let buyer = buyer.expect("the buyer snippet");
    for file in ["src/lib.rs", "tests/paid.rs", ".cargo/config.toml"] {
        assert!(files.iter().any(|f| f == file), "no README snippet is {file}: {files:?}");
    }

    let build = cargo(&scratch, &["build", "--bins", "--quiet"]);
    assert_ok("cargo build of the README's programs", &build);
    let bin_dir = target_dir().join("debug");

    // Each server, paid by the buyer as written.
    let local = LocalFacilitator::start().expect("local facilitator");
    for (server, paths) in &servers {
        let (_running, url) = start_server(&bin_dir.join(server), &local);
        for (path, credits) in paths {
            let before = local.balance(local.plan_id(), local.subscriber_address());
            let paid = run_buyer(&bin_dir.join(&buyer), &local, &format!("{url}{path}"));
            assert_ok(&format!("the buyer against {server}{path}"), &paid);
            let stdout = String::from_utf8_lossy(&paid.stdout);
            assert!(
                stdout.contains(&format!("200 OK: {credits} credits redeemed")),
                "{server}{path}: {stdout}"
            );
            let after = local.balance(local.plan_id(), local.subscriber_address());
            assert_eq!(after, before - credits, "{server}{path}");
        }

        // Not a paid 2xx: the buyer says so and exits non-zero.
        let unpaid = run_buyer(&bin_dir.join(&buyer), &local, &format!("{url}/nowhere"));
        assert!(!unpaid.status.success(), "{server}: the buyer exited 0 on a 404");
        let stderr = String::from_utf8_lossy(&unpaid.stderr);
        assert!(stderr.contains("404 Not Found, not a paid 2xx"), "{server}: {stderr}");
    }

    // The "Testing your app" recipe: `cargo test` of the crate.
    let tested = cargo(&scratch, &["test", "--quiet"]);
    assert_ok("cargo test of the README's tests/paid.rs", &tested);
    let stdout = String::from_utf8_lossy(&tested.stdout);
    assert!(stdout.contains("test result: ok. 2 passed"), "{stdout}");
    // The same test with the plan's variable forgotten: it fails, and says why.
    let forgot = cargo_with(&scratch, &["test", "--quiet"], &[("NVM_PLAN_ID", "")]);
    let output =
        format!("{}{}", String::from_utf8_lossy(&forgot.stdout), String::from_utf8_lossy(&forgot.stderr));
    assert!(!forgot.status.success(), "a test without its plan passed: {output}");
    assert!(
        output.contains("TestPayments: POST /ask answered 500") && output.contains("NVM_PLAN_ID"),
        "the failure does not say why: {output}"
    );
    eprintln!("the README's snippets, built and run in a crate of their own, in {:.1?}", started.elapsed());
}

/// The files a newcomer reads: the README, the rustdoc of both crates, the examples.
fn docs_and_examples() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").map_while(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "md") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut paths = vec![root.join("README.md")];
    for dir in ["nvm-runtime/src", "nvm-macros/src", "examples"] {
        walk(&root.join(dir), &mut paths);
    }
    paths.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).expect("read"))).collect()
}

/// A line without its indentation and comment marker (`///`, `//!`, `//`).
fn code_of(line: &str) -> &str {
    let line = line.trim_start();
    let line = ["///", "//!", "//"].iter().find_map(|m| line.strip_prefix(m)).unwrap_or(line);
    line.trim()
}

/// One story: `#[paid]` above the routing attribute, the environment variables of the
/// official SDKs only, and the README's two set-up commands (the crate docs are the
/// README) also at the top of the quick start.
#[test]
fn the_docs_and_examples_tell_one_story() {
    const ROUTING: [&str; 9] = [
        "#[get(",
        "#[post(",
        "#[put(",
        "#[delete(",
        "#[patch(",
        "#[head(",
        "#[route(",
        "#[routes]",
        "#[options(",
    ];
    const VARS: [&str; 6] = [
        "NVM_API_KEY",
        "NVM_ENVIRONMENT",
        "NVM_PLAN_ID",
        "NVM_AGENT_ID",
        "NVM_BACKEND_URL",
        "NVM_PENDING_SETTLEMENTS",
    ];
    let mut wrong = Vec::new();
    for (path, text) in docs_and_examples() {
        let lines: Vec<&str> = text.lines().collect();
        for (i, pair) in lines.windows(2).enumerate() {
            if ROUTING.iter().any(|r| code_of(pair[0]).starts_with(r))
                && code_of(pair[1]).starts_with("#[paid(")
            {
                wrong.push(format!("{}:{}: #[paid] below the routing attribute", path.display(), i + 2));
            }
        }
        for (i, line) in lines.iter().enumerate() {
            let mut rest = *line;
            while let Some(at) = rest.find("NVM_") {
                let name: String =
                    rest[at..].chars().take_while(|c| c.is_ascii_uppercase() || *c == '_').collect();
                if !VARS.contains(&name.as_str()) {
                    wrong.push(format!("{}:{}: unknown variable {name}", path.display(), i + 1));
                }
                rest = &rest[at + 4..];
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let commands: Vec<String> = readme_blocks()
        .into_iter()
        .filter(|b| b.info == "sh")
        .map(|b| b.code.trim().to_owned())
        .take(2)
        .collect();
    assert_eq!(
        commands,
        ["cargo run -p nvm-examples --example quickstart", "cargo test --workspace --all-features"]
    );
    let lib = std::fs::read_to_string(root.join("nvm-runtime/src/lib.rs")).expect("lib.rs");
    // The front page, with any feature set, is the README as build.rs writes it.
    assert!(
        lib.contains("#![doc = include_str!(concat!(env!(\"OUT_DIR\"), \"/front_page.md\"))]"),
        "the crate docs are not the front page build.rs writes"
    );
    let build = std::fs::read_to_string(root.join("nvm-runtime/build.rs")).expect("build.rs");
    assert!(
        build.contains("rerun-if-changed=README.md"),
        "build.rs does not write the front page from the README"
    );
    let manifest = std::fs::read_to_string(root.join("nvm-runtime/Cargo.toml")).expect("Cargo.toml");
    assert!(
        manifest.contains("[package.metadata.docs.rs]\nall-features = true"),
        "docs.rs builds without every feature"
    );
    let quickstart = std::fs::read_to_string(root.join("examples/quickstart.rs")).expect("quickstart.rs");
    assert!(
        quickstart.contains(&commands[0]),
        "the quick start does not say how to run it as the README does"
    );
}
