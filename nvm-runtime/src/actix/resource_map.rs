//! The app's resources, read from actix-web's router: every registered resource with
//! its full pattern and name, for the pricing manifest and the OpenAPI marks.
//!
//! actix-web has no public iterator over its resource tree: the tree is read from the
//! `Debug` rendering of its `ResourceMap` ([`debug_tree`] parses it), each resource
//! found so confirmed by the router's public look-up. This is the most fragile code of
//! the crate, tied to the text of one actix-web version: its test names the version
//! when that text changes, and when the rendering has another shape the callers fall
//! back to [`named_pattern`].

use actix_web::HttpRequest;
use actix_web::dev::ResourceMap;

use super::route_table::pattern_samples;

/// A resource registered with the app: its full pattern (scope prefixes included, as
/// `HttpRequest::match_pattern` reports it) and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registered {
    pub(crate) pattern: String,
    pub(crate) name: Option<String>,
}

/// Every resource of the app, in registration order.
///
/// actix-web has no public iterator over its resource tree, so the tree is read from
/// the `Debug` rendering of the `ResourceMap` (its fields: `pattern`, a `ResourceDef`
/// with `name` and `patterns`, and `nodes`, the children of a scope). A resource found
/// so is kept only when the router's public look-up confirms it: some path the pattern
/// matches is routed to a resource with this full pattern (a pattern that no sample
/// path fits, such as `{id:\d{3}}`, is kept as read). `None` when the rendering does not
/// have that shape (a future actix-web): the caller then falls back to
/// [`named_pattern`].
pub(crate) fn resources(rmap: &ResourceMap) -> Option<Vec<Registered>> {
    let text = format!("{rmap:?}");
    let tree = debug_tree::parse(&text)?;
    let mut found = Vec::new();
    walk(&tree, "", &mut found, 0)?;
    Some(
        found
            .into_iter()
            .filter(|(resource, routed_as)| {
                let samples = pattern_samples(&resource.pattern);
                samples.is_empty()
                    || samples.iter().any(|s| rmap.match_pattern(s).as_deref() == Some(routed_as.as_str()))
            })
            .map(|(resource, _)| resource)
            .collect(),
    )
}

/// Collects the resources under `node` (a `ResourceMap`), with the full pattern the
/// router reports for each (the first of a resource's patterns).
fn walk(
    node: &debug_tree::Value<'_>,
    prefix: &str,
    found: &mut Vec<(Registered, String)>,
    depth: usize,
) -> Option<()> {
    use debug_tree::Value;
    if depth > 64 {
        return None;
    }
    let map = node.fields_of("ResourceMap")?;
    let def = Value::field(map, "pattern")?.fields_of("ResourceDef")?;
    let patterns: Vec<&str> = match Value::field(def, "patterns")?.named()? {
        ("Single", [pattern]) => vec![pattern.str()?],
        ("List", [Value::Seq(patterns)]) => patterns.iter().map(Value::str).collect::<Option<_>>()?,
        _ => return None,
    };
    let first = *patterns.first()?;
    match Value::field(map, "nodes")? {
        Value::Atom("None") => {
            let name = match Value::field(def, "name")? {
                Value::Atom("None") => None,
                other => match other.named()? {
                    ("Some", [name]) => Some(name.str()?.to_owned()),
                    _ => return None,
                },
            };
            for pattern in patterns {
                found.push((
                    Registered { pattern: format!("{prefix}{pattern}"), name: name.clone() },
                    format!("{prefix}{first}"),
                ));
            }
        }
        nodes => match nodes.named()? {
            ("Some", [Value::Seq(children)]) => {
                let prefix = format!("{prefix}{first}");
                for child in children {
                    walk(child, &prefix, found, depth + 1)?;
                }
            }
            _ => return None,
        },
    }
    Some(())
}

/// The full pattern of the resource named `name`, from the router's public look-up:
/// the URL actix-web builds for it (sample values in its dynamic segments) routed back
/// to a pattern. It finds one resource per name (actix-web keeps the last one
/// registered under a name), and only when one sample value (`1`, `a`, `100`, `x-1`)
/// fits every parameter of its pattern: the fallback of [`resources`].
pub(crate) fn named_pattern(req: &HttpRequest, name: &str) -> Option<String> {
    let rmap = req.resource_map();
    ["1", "a", "100", "x-1"].iter().find_map(|sample| {
        let url = rmap.url_for(req, name, std::iter::repeat(*sample)).ok()?;
        rmap.match_pattern(&percent_decoded(url.path()))
    })
}

/// `%XX` escapes decoded (a URL's path as the router matches it).
fn percent_decoded(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits are at most 0xff.
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the app routes some path to a resource with exactly this full `pattern`.
pub(crate) fn is_served(rmap: &ResourceMap, resources: Option<&[Registered]>, pattern: &str) -> bool {
    match resources {
        Some(resources) => resources.iter().any(|r| r.pattern == pattern),
        None => pattern_samples(pattern).iter().any(|s| rmap.match_pattern(s).as_deref() == Some(pattern)),
    }
}

/// A reader of Rust's `Debug` rendering (`Name { field: value }`, `Name(…)`, `[…]`,
/// `{k: v}`, strings, atoms), enough to walk a `ResourceMap`.
mod debug_tree {
    /// A rendered value.
    #[derive(Debug, PartialEq)]
    pub(super) enum Value<'a> {
        /// A string literal, unescaped.
        Str(String),
        /// A word, number or character literal: `None`, `true`, `3`, `'a'`, `(Weak)`'s
        /// `Weak`.
        Atom(&'a str),
        /// `[…]` or `(…)`.
        Seq(Vec<Value<'a>>),
        /// `{k: v, …}` (a `HashMap`; its entries are read, not kept).
        Map,
        /// `Name { field: value, … }`.
        Struct(&'a str, Vec<(&'a str, Value<'a>)>),
        /// `Name(…)`.
        Tuple(&'a str, Vec<Value<'a>>),
    }

    impl<'a> Value<'a> {
        /// The fields of a struct named `name`.
        pub(super) fn fields_of(&self, name: &str) -> Option<&[(&'a str, Value<'a>)]> {
            match self {
                Value::Struct(n, fields) if *n == name => Some(fields),
                _ => None,
            }
        }

        /// The field `name` of `fields`.
        pub(super) fn field<'v>(fields: &'v [(&'a str, Value<'a>)], name: &str) -> Option<&'v Value<'a>> {
            fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
        }

        /// A tuple's name and items.
        pub(super) fn named(&self) -> Option<(&'a str, &[Value<'a>])> {
            match self {
                Value::Tuple(name, items) => Some((name, items)),
                _ => None,
            }
        }

        /// A string's text.
        pub(super) fn str(&self) -> Option<&str> {
            match self {
                Value::Str(s) => Some(s),
                _ => None,
            }
        }
    }

    /// The value `text` renders, or `None` when it is not one well-formed value.
    pub(super) fn parse(text: &str) -> Option<Value<'_>> {
        let mut parser = Parser { text, pos: 0, depth: 0 };
        let value = parser.value()?;
        parser.skip_ws();
        (parser.pos == text.len()).then_some(value)
    }

    struct Parser<'a> {
        text: &'a str,
        pos: usize,
        depth: usize,
    }

    /// Characters that end a word.
    const STOPS: &[char] = &[' ', '\n', '\t', ',', ':', '{', '}', '[', ']', '(', ')', '"', '\''];

    impl<'a> Parser<'a> {
        fn rest(&self) -> &'a str {
            &self.text[self.pos..]
        }

        fn peek(&self) -> Option<char> {
            self.rest().chars().next()
        }

        fn skip_ws(&mut self) {
            let rest = self.rest();
            self.pos += rest.len() - rest.trim_start().len();
        }

        fn eat(&mut self, c: char) -> Option<()> {
            self.skip_ws();
            self.rest().starts_with(c).then(|| self.pos += c.len_utf8())
        }

        fn value(&mut self) -> Option<Value<'a>> {
            self.depth += 1;
            if self.depth > 256 {
                return None;
            }
            self.skip_ws();
            let value = match self.peek()? {
                '"' => Value::Str(self.string()?),
                '\'' => Value::Atom(self.char_literal()?),
                '[' => Value::Seq(self.items('[', ']')?),
                '(' => Value::Seq(self.items('(', ')')?),
                '{' => {
                    self.map()?;
                    Value::Map
                }
                _ => {
                    let word = self.word()?;
                    self.skip_ws();
                    match self.peek() {
                        Some('(') => Value::Tuple(word, self.items('(', ')')?),
                        Some('{') => Value::Struct(word, self.fields()?),
                        _ => Value::Atom(word),
                    }
                }
            };
            self.depth -= 1;
            Some(value)
        }

        /// A word: a name, a path (`a::b`), a number, `..`.
        fn word(&mut self) -> Option<&'a str> {
            let rest = self.rest();
            let mut end = 0;
            let mut chars = rest.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                if c == ':' && rest[i + 1..].starts_with(':') {
                    chars.next();
                    end = i + 2;
                    continue;
                }
                if STOPS.contains(&c) {
                    break;
                }
                end = i + c.len_utf8();
            }
            (end > 0).then(|| {
                self.pos += end;
                &rest[..end]
            })
        }

        /// `open item, item, … close`, a trailing comma allowed.
        fn items(&mut self, open: char, close: char) -> Option<Vec<Value<'a>>> {
            self.eat(open)?;
            let mut items = Vec::new();
            loop {
                if self.eat(close).is_some() {
                    return Some(items);
                }
                items.push(self.value()?);
                if self.eat(',').is_none() {
                    self.eat(close)?;
                    return Some(items);
                }
            }
        }

        /// `{key: value, …}`.
        fn map(&mut self) -> Option<()> {
            self.eat('{')?;
            loop {
                if self.eat('}').is_some() {
                    return Some(());
                }
                self.value()?;
                self.eat(':')?;
                self.value()?;
                if self.eat(',').is_none() {
                    return self.eat('}');
                }
            }
        }

        /// `{ name: value, …, .. }`.
        fn fields(&mut self) -> Option<Vec<(&'a str, Value<'a>)>> {
            self.eat('{')?;
            let mut fields = Vec::new();
            loop {
                if self.eat('}').is_some() {
                    return Some(fields);
                }
                self.skip_ws();
                let name = self.word()?;
                if name != ".." {
                    self.eat(':')?;
                    fields.push((name, self.value()?));
                }
                if self.eat(',').is_none() {
                    self.eat('}')?;
                    return Some(fields);
                }
            }
        }

        /// A string literal, unescaped.
        fn string(&mut self) -> Option<String> {
            self.eat('"')?;
            let mut out = String::new();
            let mut chars = self.rest().char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        self.pos += i + 1;
                        return Some(out);
                    }
                    '\\' => out.push(unescape(&mut chars)?),
                    c => out.push(c),
                }
            }
            None
        }

        /// A character literal, kept as written.
        fn char_literal(&mut self) -> Option<&'a str> {
            let rest = self.rest();
            let mut chars = rest.char_indices().skip(1);
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => {
                        self.pos += i + 1;
                        return Some(&rest[..=i]);
                    }
                    _ => {}
                }
            }
            None
        }
    }

    /// The character an escape stands for (after its `\\`).
    fn unescape(chars: &mut std::str::CharIndices<'_>) -> Option<char> {
        Some(match chars.next()?.1 {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            '0' => '\0',
            'u' => {
                let mut code = String::new();
                if chars.next()?.1 != '{' {
                    return None;
                }
                loop {
                    match chars.next()?.1 {
                        '}' => break,
                        c => code.push(c),
                    }
                }
                char::from_u32(u32::from_str_radix(&code, 16).ok()?)?
            }
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The actix-web version this crate is built with, from the workspace's lock file.
    fn actix_web_version() -> String {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
            .unwrap_or_default();
        lock.split("[[package]]")
            .find(|entry| entry.contains("name = \"actix-web\"\n"))
            .and_then(|entry| entry.lines().find_map(|line| line.strip_prefix("version = ")))
            .map_or_else(|| "unknown".to_owned(), |v| v.trim_matches('"').to_owned())
    }

    /// What `resources` and `named_pattern` read of a real app's router.
    #[test]
    fn resources_are_read_with_their_full_patterns() {
        use actix_web::{App, HttpResponse, test, web};

        async fn probe(req: HttpRequest) -> HttpResponse {
            let found = resources(req.resource_map()).map(|all| {
                all.into_iter()
                    .map(|r| format!("{} {}", r.pattern, r.name.unwrap_or_default()))
                    .collect::<Vec<_>>()
            });
            let named = ["m", "multi", "t", "none"].map(|name| named_pattern(&req, name));
            HttpResponse::Ok().body(format!("{found:?}\n{named:?}"))
        }
        let body = actix_web::rt::System::new().block_on(async {
            let app = test::init_service(
                App::new()
                    .service(
                        web::scope("/v1")
                            .service(web::resource("/m/{id}").name("m").to(HttpResponse::Ok))
                            .service(
                                web::scope("/{org}")
                                    .service(web::resource("/m/{id:\\d{3}}").name("m").to(HttpResponse::Ok)),
                            )
                            .service(
                                web::scope("/{team:[a-z]+}")
                                    .service(web::resource("/t/{n:\\d{3}}").name("t").to(HttpResponse::Ok)),
                            ),
                    )
                    .service(web::resource(["/a", "/b \"q\""]).name("multi").to(HttpResponse::Ok))
                    .route("/probe", web::get().to(probe)),
            )
            .await;
            test::call_and_read_body(&app, test::TestRequest::get().uri("/probe").to_request()).await
        });
        let body = String::from_utf8_lossy(&body);
        let (found, named) = body.split_once('\n').unwrap_or_default();
        assert!(
            found != "None",
            "the Debug rendering of actix-web {}'s ResourceMap is no longer read: the manifest \
             falls back to the router's look-up by name; update debug_tree and walk (resource_map.rs) \
             to the new text",
            actix_web_version()
        );
        assert_eq!(
            found,
            r#"Some(["/v1/m/{id} m", "/v1/{org}/m/{id:\\d{3}} m", "/v1/{team:[a-z]+}/t/{n:\\d{3}} t", "/a multi", "/b \"q\" multi", "/probe "])"#
        );
        // By the public look-up: one resource per name (the last registered), when one
        // sample value fits all its parameters.
        assert_eq!(named, r#"[Some("/v1/{org}/m/{id:\\d{3}}"), Some("/a"), None, None]"#);
    }

    #[test]
    fn debug_renderings_are_read() {
        use debug_tree::{Value, parse};
        let value =
            parse(r#"A { s: "x\"y\\z\u{e9}", n: None, t: Some([1, 'c', (Weak)]), m: {"k": B { .. }}, .. }"#);
        let Some(Value::Struct("A", fields)) = value else { panic!("{value:?}") };
        assert_eq!(Value::field(&fields, "s"), Some(&Value::Str("x\"y\\z\u{e9}".into())));
        assert_eq!(Value::field(&fields, "n"), Some(&Value::Atom("None")));
        let t = Value::field(&fields, "t").and_then(Value::named);
        assert!(matches!(t, Some(("Some", [Value::Seq(items)])) if items.len() == 3), "{t:?}");
        assert_eq!(Value::field(&fields, "m"), Some(&Value::Map));
        for broken in ["A {", "A { x }", "\"open", "[1, 2", "A(1) B"] {
            assert_eq!(parse(broken), None, "{broken}");
        }
    }
}
