//! Writes the crate's front page, `$OUT_DIR/front_page.md` (`src/lib.rs` includes it),
//! from the README: the same guide with any feature set.
//!
//! - A region between a line `<!-- repository-only -->` and a line
//!   `<!-- /repository-only -->` is left out (blank lines in its place, so that a line of
//!   the page, as a failing doctest names it, is that line of the README): commands that
//!   work only in a checkout of the repository, links that resolve only there.
//! - A fenced block whose info string names features (`rust,no_run,feature=mcp`, one
//!   `feature=NAME` per feature) is a doctest when every feature it names is on, and is
//!   shown but not compiled (`rust,ignore`) when one is off.
//!
//! It fails the build on a marker it cannot place, on a feature the manifest does not
//! declare, and on a repository-only command (`-p nvm-…`, `.ci/`) left on the front page.

use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::path::Path;

const OPEN: &str = "<!-- repository-only -->";
const CLOSE: &str = "<!-- /repository-only -->";
const FENCE: &str = "```";
/// What only works in a checkout of the repository.
const REPOSITORY_ONLY: [&str; 2] = ["-p nvm-", ".ci/"];

fn main() {
    println!("cargo:rerun-if-changed=README.md");
    println!("cargo:rerun-if-changed=Cargo.toml");
    let dir = env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&dir);
    let read = |name: &str| {
        fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
    };
    let declared = declared_features(&read("Cargo.toml"));
    let is_on = |feature: &str| {
        env::var_os(format!("CARGO_FEATURE_{}", feature.to_uppercase().replace('-', "_"))).is_some()
    };
    let page = front_page(&read("README.md"), &declared, is_on).unwrap_or_else(|e| panic!("README.md: {e}"));
    let out = env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out).join("front_page.md");
    fs::write(&out, page).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

/// The names of the manifest's `[features]` table.
fn declared_features(manifest: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_features = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        } else if line.starts_with('[') && !line.starts_with("[\"") {
            in_features = line == "[features]";
        } else if let Some((name, _)) = line.split_once('=').filter(|_| in_features) {
            let name = name.trim().trim_matches('"');
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The README as the front page of a build whose features `is_on` tells.
fn front_page(
    readme: &str,
    declared: &BTreeSet<String>,
    is_on: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let mut page = String::with_capacity(readme.len());
    let mut repository_only: Option<usize> = None;
    let mut in_fence = false;
    for (i, line) in readme.lines().enumerate() {
        let n = i + 1;
        if in_fence {
            in_fence = line.trim_end() != FENCE;
        } else if line.trim() == OPEN {
            if let Some(open) = repository_only {
                return Err(format!("line {n}: {OPEN} inside the region opened on line {open}"));
            }
            repository_only = Some(n);
            page.push('\n');
            continue;
        } else if line.trim() == CLOSE {
            if repository_only.take().is_none() {
                return Err(format!("line {n}: {CLOSE} without {OPEN}"));
            }
            page.push('\n');
            continue;
        } else if let Some(info) = line.strip_prefix(FENCE) {
            in_fence = true;
            if repository_only.is_none() {
                page.push_str(FENCE);
                page.push_str(
                    &fence_info(info.trim(), declared, &is_on).map_err(|e| format!("line {n}: {e}"))?,
                );
                page.push('\n');
                continue;
            }
        }
        if repository_only.is_none() {
            if let Some(command) = REPOSITORY_ONLY.iter().find(|c| line.contains(*c)) {
                return Err(format!(
                    "line {n}: `{command}` works only in a checkout of the repository; put it between \
                     {OPEN} and {CLOSE}, or say it as a user runs it: {line}"
                ));
            }
            page.push_str(line);
        }
        page.push('\n');
    }
    if let Some(open) = repository_only {
        return Err(format!("line {open}: {OPEN} never closed"));
    }
    if in_fence {
        return Err("a code block never closed".to_owned());
    }
    Ok(page)
}

/// A fence's info string without its `feature=NAME` words: as written when every feature
/// it names is on, `rust,ignore` when one is off.
fn fence_info(
    info: &str,
    declared: &BTreeSet<String>,
    is_on: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let words: Vec<&str> = info.split(',').map(str::trim).collect();
    let features: Vec<&str> = words.iter().filter_map(|w| w.strip_prefix("feature=")).collect();
    if features.is_empty() {
        return Ok(info.to_owned());
    }
    if words.first() != Some(&"rust") {
        return Err(format!("`feature=` marks a Rust block (```rust,no_run,feature=NAME), not ```{info}"));
    }
    if let Some(unknown) = features.iter().find(|f| !declared.contains(**f)) {
        return Err(format!("feature `{unknown}` is not in nvm-runtime's [features] ({declared:?})"));
    }
    let all_on = features.iter().all(|f| is_on(f));
    let kept = words.iter().filter(|w| {
        !w.starts_with("feature=")
            && (all_on || !["ignore", "no_run", "should_panic", "compile_fail"].contains(*w))
    });
    let mut kept: Vec<&str> = kept.copied().collect();
    if !all_on {
        kept.push("ignore");
    }
    Ok(kept.join(","))
}
