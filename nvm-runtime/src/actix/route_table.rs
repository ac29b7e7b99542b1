//! The routes table of `PaymentMiddleware`, matched with the router's own rules.
//!
//! A key is `"METHOD /path"`, where the path is an actix-web resource pattern
//! (`/reports/{id}`, `/files/{tail}*`, `/orders/{id:\d+}`; `:id` is an alias of `{id}`)
//! written in full (scope prefixes included). A request is matched on the path the
//! router matches (percent-decoded, as `req.match_info()` holds it), so an encoded
//! character can never slip past the table.
//!
//! Which entry applies to a request:
//!
//! 1. an entry without dynamic segments whose path is the request's path;
//! 2. the entry whose pattern is the pattern of the resource the router picks for the
//!    path (the same pattern up to parameter names): `/items/{id}` protects the
//!    resource `/items/{item}`, but not a resource `/items/special` registered before it;
//! 3. an entry whose pattern names no registered resource and matches the path (fail
//!    closed: `/items/{id}` still protects `/items/7` served by `/items/{tail}*`).
//!
//! A path that matches no registered resource as it is (`/ask/`, `//ask`) can only
//! reach a handler through a `NormalizePath` inside the middleware; its merged and
//! trimmed forms are matched too. `HEAD` is matched as `GET` when no `HEAD` entry
//! exists. An entry that can match no registered resource is reported when the
//! table first sees the app's routes.

use actix_web::dev::{ResourceDef, ResourceMap};

use crate::error::{ConfigError, ConfigProblem};

/// One parsed key of the table.
#[derive(Debug, Clone)]
pub(crate) struct RouteKey {
    /// Upper-case method.
    pub(crate) method: String,
    /// The key as written, for messages.
    pub(crate) text: String,
    /// The pattern with `:name` segments rewritten to `{name}`.
    def: ResourceDef,
    /// The pattern with parameter names erased, to compare with registered patterns.
    shape: String,
    /// No dynamic segment: the key names exactly one path.
    is_static: bool,
}

impl RouteKey {
    /// Parses `"METHOD /path"`.
    pub(crate) fn parse(key: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigProblem::InvalidRouteKey { key: key.to_owned(), why: why.to_owned() };
        let (method, path) = key.trim().split_once(char::is_whitespace).ok_or_else(|| bad("no method"))?;
        let path = path.trim();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(bad("the method is not a word").into());
        }
        if !path.starts_with('/') {
            return Err(bad("the path does not start with `/`").into());
        }
        let pattern = alias_params(path);
        check_braces(&pattern).map_err(bad)?;
        // The router's own parser; it panics on a bad regex segment, which `check_braces`
        // cannot see: that panic becomes an error here.
        let def = std::panic::catch_unwind(|| ResourceDef::new(pattern.as_str()))
            .map_err(|_| bad("a `{name:regex}` segment is not a valid regular expression"))?;
        Ok(RouteKey {
            method: method.to_ascii_uppercase(),
            text: format!("{} {path}", method.to_ascii_uppercase()),
            is_static: !pattern.contains('{'),
            shape: shape(&pattern),
            def,
        })
    }
}

/// `/reports/:id` → `/reports/{id}`.
fn alias_params(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment.strip_prefix(':') {
            Some(name) if !name.is_empty() => format!("{{{name}}}"),
            _ => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Refuses unbalanced or empty `{…}` segments before the router's parser sees them.
fn check_braces(pattern: &str) -> Result<(), &'static str> {
    let mut depth = 0usize;
    let mut start = 0usize;
    for (i, c) in pattern.char_indices() {
        match c {
            '{' => {
                if depth == 0 {
                    start = i;
                }
                depth += 1;
            }
            '}' => {
                depth = depth.checked_sub(1).ok_or("a `}` closes no `{`")?;
                if depth == 0 && pattern[start + 1..i].split(':').next().is_none_or(str::is_empty) {
                    return Err("a `{}` segment has no name: write `{id}`");
                }
            }
            _ => {}
        }
    }
    if depth == 0 { Ok(()) } else { Err("a `{` is never closed") }
}

/// A pattern with its parameter names erased: `/a/{id:\d+}/{rest}*` → `/a/{:\d+}/{}*`.
pub(crate) fn shape(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut depth = 0usize;
    let mut in_name = false;
    for c in pattern.chars() {
        match c {
            '{' => {
                if depth == 0 {
                    out.push('{');
                    in_name = true;
                } else {
                    out.push(c);
                }
                depth += 1;
            }
            '}' => {
                depth = depth.saturating_sub(1);
                in_name = false;
                out.push('}');
            }
            ':' if depth == 1 && in_name => {
                in_name = false;
                out.push(':');
            }
            _ if in_name => {}
            _ => out.push(c),
        }
    }
    out
}

/// The forms of `path` that a `NormalizePath` inside the middleware may route: merged
/// slashes, trimmed and with a trailing slash.
fn normalized_forms(path: &str) -> [String; 3] {
    let mut merged = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    let trimmed = match merged.trim_end_matches('/') {
        "" => "/".to_owned(),
        t => t.to_owned(),
    };
    let slashed = if trimmed == "/" { trimmed.clone() } else { format!("{trimmed}/") };
    [merged, trimmed, slashed]
}

/// What the table knows about the app's routes, learned from its resource map.
#[derive(Debug, Clone)]
pub(crate) struct Anchors {
    /// Per entry: whether a registered resource has the entry's pattern.
    anchored: Vec<bool>,
}

impl Anchors {
    /// Checks every entry against the app's routes: an entry that can match no
    /// registered resource is an error naming it.
    pub(crate) fn learn(keys: &[RouteKey], rmap: &ResourceMap) -> Result<Self, ConfigError> {
        let mut anchored = Vec::with_capacity(keys.len());
        let mut dead = Vec::new();
        for key in keys {
            let samples = samples(&key.def);
            let patterns: Vec<String> = samples.iter().filter_map(|s| rmap.match_pattern(s)).collect();
            anchored.push(patterns.iter().any(|p| shape(p) == key.shape));
            if patterns.is_empty() {
                dead.push(key.text.clone());
            }
        }
        if dead.is_empty() {
            Ok(Anchors { anchored })
        } else {
            Err(ConfigProblem::UnmatchedRoutes(dead).into())
        }
    }
}

/// Paths the pattern matches, with sample values in its dynamic segments; empty when no
/// sample fits its regular expressions (or the pattern does not parse).
pub(crate) fn pattern_samples(pattern: &str) -> Vec<String> {
    match std::panic::catch_unwind(|| ResourceDef::new(pattern)) {
        Ok(def) => samples(&def),
        Err(_) => Vec::new(),
    }
}

/// Paths the key matches, with sample values in its dynamic segments.
fn samples(def: &ResourceDef) -> Vec<String> {
    ["1", "a", "x-1", "1/2"]
        .iter()
        .filter_map(|value| {
            let mut path = String::new();
            let built = def.resource_path_from_iter(&mut path, std::iter::repeat(*value));
            (built && def.is_match(&path)).then_some(path)
        })
        .collect()
}

/// The table, its anchors and the app's routes: what a look-up needs.
#[derive(Clone, Copy)]
pub(crate) struct Lookup<'a> {
    pub(crate) keys: &'a [RouteKey],
    pub(crate) anchors: &'a Anchors,
    pub(crate) rmap: &'a ResourceMap,
}

impl Lookup<'_> {
    /// The index of the entry that applies to `method` and the router's `path`.
    pub(crate) fn find(self, method: &str, path: &str) -> Option<usize> {
        match self.for_method(method, path) {
            None if method == "HEAD" => self.for_method("GET", path),
            found => found,
        }
    }

    fn for_method(self, method: &str, path: &str) -> Option<usize> {
        if let Some(found) = self.on_path(method, path) {
            return Some(found);
        }
        if self.rmap.has_resource(path) {
            return None;
        }
        normalized_forms(path)
            .iter()
            .filter(|form| form.as_str() != path)
            .find_map(|form| self.on_path(method, form))
    }

    fn on_path(self, method: &str, path: &str) -> Option<usize> {
        let anchored = &self.anchors.anchored;
        let candidates = || self.keys.iter().enumerate().filter(|(_, k)| k.method == method);
        if let Some((i, _)) = candidates().find(|(_, k)| k.is_static && k.def.is_match(path)) {
            return Some(i);
        }
        if let Some(pattern) = self.rmap.match_pattern(path) {
            let routed = shape(&pattern);
            if let Some((i, _)) = candidates().find(|(i, k)| anchored[*i] && k.shape == routed) {
                return Some(i);
            }
        }
        candidates().find(|(i, k)| !anchored[*i] && k.def.is_match(path)).map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_erase_names_only() {
        assert_eq!(shape("/a/{id}/b"), "/a/{}/b");
        assert_eq!(shape(r"/a/{id:\d+}"), r"/a/{:\d+}");
        assert_eq!(shape("/f/{tail}*"), "/f/{}*");
        assert_eq!(shape(r"/x/{n:[a-z]{2}}"), r"/x/{:[a-z]{2}}");
        assert_eq!(shape("/static"), "/static");
    }

    #[test]
    fn keys_accept_both_parameter_forms() {
        let colon = RouteKey::parse("get /reports/:id").map_err(|e| e.to_string());
        let braces = RouteKey::parse("GET /reports/{id}").map_err(|e| e.to_string());
        assert_eq!(colon.as_ref().map(|k| &k.shape), braces.as_ref().map(|k| &k.shape));
        for bad in ["GET /a/{", "GET /a/}", "GET /a/{}", r"GET /a/{id:(}", "/ask", "GET ask"] {
            assert!(RouteKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn normalized_forms_merge_and_trim() {
        assert_eq!(normalized_forms("//a///b/"), ["/a/b/".to_owned(), "/a/b".to_owned(), "/a/b/".to_owned()]);
        assert_eq!(normalized_forms("//"), ["/".to_owned(), "/".to_owned(), "/".to_owned()]);
    }
}
