//! What `#[paid]` costs at compile time: `cargo check` of a crate with 200 `#[paid]`
//! handlers against the same crate with 200 plain ones.
//!
//! ```text
//! cargo run --release -p nvm-examples --example compile_bench
//! cargo run --release -p nvm-examples --example compile_bench -- --handlers 200 --rounds 7
//! ```
//!
//! It writes a small workspace under `target/compile-bench/` (two crates that differ only
//! by `#[paid(...)]` above each handler, both depending on `nvm-runtime` by path and on
//! the workspace's `actix-web` version, with the workspace's `Cargo.lock`) and one target
//! directory shared by both, so the dependencies are checked once. Then, warm, it touches
//! and re-checks each crate in alternation, and prints the medians and their ratio; also
//! net of cargo's own fixed cost (a `cargo check` with nothing to do).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

const USAGE: &str = "usage: compile_bench [--handlers N] [--rounds N]\n\
  --handlers  handlers per crate (default 200)\n\
  --rounds    timed checks of each crate, alternating (default 7)";

/// The plan id written in the generated handlers (any literal does for `cargo check`).
const PLAN: &str = "80918427023170428029540261117198154464497879145267720259488529685089104529015";

struct Settings {
    handlers: usize,
    rounds: usize,
}

fn parse_args() -> Result<Settings, String> {
    let mut settings = Settings { handlers: 200, rounds: 7 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).ok_or(format!("{name} needs a value"));
        let number = |text: String, max: usize| {
            text.parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or(format!("`{text}` is not a number from 1 to {max}"))
        };
        match name.as_str() {
            "--handlers" => settings.handlers = number(value()?, 5000)?,
            "--rounds" => settings.rounds = number(value()?, 50)?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(settings)
}

fn main() {
    let settings = match parse_args() {
        Ok(settings) => settings,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("compile_bench: {message}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if message.is_empty() { 0 } else { 2 });
        }
    };
    if let Err(error) = run(&settings) {
        eprintln!("compile_bench: {error}");
        std::process::exit(1);
    }
}

/// The workspace root (the parent of this example's package).
fn workspace_root() -> PathBuf {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR"));
    examples.parent().unwrap_or(examples).to_path_buf()
}

fn run(settings: &Settings) -> Result<(), String> {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bench = target.join("compile-bench");
    let runtime = root.join("nvm-runtime");
    generate(&bench, &root, &runtime, settings.handlers)
        .map_err(|e| format!("writing {}: {e}", bench.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let check = |package: &str| -> Result<Duration, String> {
        let started = Instant::now();
        let output = Command::new(&cargo)
            .args(["check", "--quiet", "--lib", "-p", package])
            .current_dir(&bench)
            .env("CARGO_TARGET_DIR", bench.join("target"))
            .output()
            .map_err(|e| format!("running cargo: {e}"))?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            return Err(format!(
                "cargo check -p {package} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(elapsed)
    };
    let touch = |crate_dir: &str| -> Result<(), String> {
        let lib = bench.join(crate_dir).join("src/lib.rs");
        std::fs::File::options()
            .write(true)
            .open(&lib)
            .and_then(|f| f.set_modified(SystemTime::now()))
            .map_err(|e| format!("touching {}: {e}", lib.display()))
    };

    println!(
        "nvm-paid compile bench: cargo check of {} #[paid] handlers vs {} plain ones",
        settings.handlers, settings.handlers
    );
    println!("machine: {}", nvm_examples::machine::cpus());
    println!("crates: {} (shared target dir {})", bench.display(), bench.join("target").display());
    let started = Instant::now();
    check(PAID)?;
    check(PLAIN)?;
    println!(
        "first check of both crates (their dependencies too, when not checked yet): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // One untimed warm pass each, then the timed rounds.
    for (dir, package) in [("paid", PAID), ("plain", PLAIN)] {
        touch(dir)?;
        check(package)?;
    }
    let mut paid = Vec::new();
    let mut plain = Vec::new();
    let mut noop = Vec::new();
    for round in 0..settings.rounds {
        // Alternate which goes first, so neither always follows the other.
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for is_paid in order {
            let (dir, package) = if is_paid { ("paid", PAID) } else { ("plain", PLAIN) };
            touch(dir)?;
            let time = check(package)?;
            if is_paid { paid.push(time) } else { plain.push(time) }
        }
        noop.push(check(PLAIN)?);
        println!(
            "round {}/{}: paid {:.2} s, plain {:.2} s, nothing to do {:.2} s",
            round + 1,
            settings.rounds,
            secs(paid[round]),
            secs(plain[round]),
            secs(noop[round])
        );
    }
    let (p, q, n) = (median(&paid), median(&plain), median(&noop));
    println!("\nmedians over {} rounds (warm, `touch src/lib.rs && cargo check`):", settings.rounds);
    println!("  {} #[paid] handlers: {:.2} s", settings.handlers, p);
    println!("  {} plain handlers:   {:.2} s", settings.handlers, q);
    println!("  cargo with nothing to do: {:.2} s", n);
    let ratio = p / q;
    println!("ratio paid/plain: {ratio:.3}");
    if p > n && q > n {
        println!(
            "ratio net of cargo's fixed cost: {:.3}; per #[paid] handler: +{:.2} ms",
            (p - n) / (q - n),
            (p - q) * 1000.0 / settings.handlers as f64
        );
    }
    Ok(())
}

const PAID: &str = "nvm-compile-bench-paid";
const PLAIN: &str = "nvm-compile-bench-plain";

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(values: &[Duration]) -> f64 {
    let mut v: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Writes the two crates (only when their text changed, so a rerun stays warm) and the
/// workspace's lock file.
fn generate(bench: &Path, root: &Path, runtime: &Path, handlers: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(bench)?;
    write_if_changed(
        &bench.join("Cargo.toml"),
        "# Generated by `cargo run --release -p nvm-examples --example compile_bench`.\n\
         [workspace]\nresolver = \"3\"\nmembers = [\"paid\", \"plain\"]\n",
    )?;
    // The workspace's versions, so both crates build what the project builds.
    let lock = std::fs::read_to_string(root.join("Cargo.lock"))?;
    write_if_changed(&bench.join("Cargo.lock"), &lock)?;
    for (dir, package, paid) in [("paid", PAID, true), ("plain", PLAIN, false)] {
        let manifest = format!(
            "[package]\nname = \"{package}\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
             [dependencies]\n\
             nvm-runtime = {{ path = \"{runtime}\", default-features = false }}\n\
             actix-web = {{ version = \"4.11\", default-features = false, features = [\"macros\"] }}\n",
            runtime = runtime.display().to_string().replace('\\', "/"),
        );
        std::fs::create_dir_all(bench.join(dir).join("src"))?;
        write_if_changed(&bench.join(dir).join("Cargo.toml"), &manifest)?;
        write_if_changed(&bench.join(dir).join("src/lib.rs"), &source(handlers, paid))?;
    }
    Ok(())
}

fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(path, text)
}

/// `handlers` handlers, each `#[get("/hN")]`, with `#[paid(...)]` above it when `paid`
/// (the order the README writes), and a `configure` that registers them all.
fn source(handlers: usize, paid: bool) -> String {
    let mut out = String::from(
        "//! Generated by compile_bench.\n\nuse actix_web::{get, web};\n#[allow(unused_imports)]\nuse nvm_runtime::paid;\n\n",
    );
    for i in 0..handlers {
        if paid {
            out.push_str(&format!("#[paid(plan = \"{PLAN}\", credits = 1)]\n"));
        }
        out.push_str(&format!("#[get(\"/h{i}\")]\n"));
        out.push_str(&format!("pub async fn h{i}() -> &'static str {{\n    \"{i}\"\n}}\n\n"));
    }
    out.push_str("/// Registers every handler.\npub fn configure(cfg: &mut web::ServiceConfig) {\n");
    for i in 0..handlers {
        out.push_str(&format!("    cfg.service(h{i});\n"));
    }
    out.push_str("}\n");
    out
}
