//! Where `#[paid]` stands in its source file: at module level (or in a function body), or
//! inside an `impl` or `trait` block.
//!
//! An attribute macro sees only its item, not the block around it, so this is read from
//! the source file the compiler reports for the attribute: the file is lexed once (per
//! compilation, cached by path, length and modification time) into its brace blocks,
//! and the attribute's position is looked up among them. Only an answer the file states
//! plainly counts; anything else (no local file, remapped paths, tokens made by another
//! macro) is [`Context::Unknown`], and `#[paid]` then behaves as it always did.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The block a `#[paid]` function is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Context {
    /// A module or a function body: where actix-web's routing attributes work.
    Free,
    /// An `impl` block: the function is an associated function.
    Impl,
    /// A `trait` block.
    Trait,
    /// Not known (no source file, or the attribute's text is not where the file says).
    Unknown,
}

impl Context {
    /// Is the function an associated item (of an `impl` or a `trait`)?
    pub(crate) fn is_associated(self) -> bool {
        matches!(self, Context::Impl | Context::Trait)
    }

    /// The block, for messages: "an `impl` block" or "a `trait` block".
    pub(crate) fn block(self) -> &'static str {
        match self {
            Context::Trait => "a `trait` block",
            _ => "an `impl` block",
        }
    }

    /// The context of the attribute this macro was called for (the compiler's call site).
    pub(crate) fn of_call_site() -> Context {
        let span = proc_macro::Span::call_site();
        let Some(file) = span.local_file() else {
            return Context::Unknown;
        };
        // Tokens made by another macro may report a position that is not theirs: the
        // position counts only when the text there is this attribute.
        if !span.source_text().is_some_and(|text| text.contains("paid")) {
            return Context::Unknown;
        }
        let start = span.start();
        // `line` counts from 1 and `column` from 1 (in characters); blocks count columns
        // from 0.
        let position = Position { line: start.line(), column: start.column().saturating_sub(1) };
        match blocks_of(&file) {
            Some(blocks) => context_at(&blocks, position),
            None => Context::Unknown,
        }
    }
}

/// A place in a source file: line from 1, column in characters from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    line: usize,
    column: usize,
}

/// A `{ … }` block of the file: what opened it, and where its braces are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    kind: Context,
    open: Position,
    close: Position,
}

/// The innermost block around `position` decides; outside every block is module level.
fn context_at(blocks: &[Block], position: Position) -> Context {
    blocks
        .iter()
        .filter(|block| block.open < position && position < block.close)
        .max_by_key(|block| block.open)
        .map_or(Context::Free, |block| block.kind)
}

/// One lexed file, kept while its length and modification time stay the same.
struct Lexed {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    blocks: Arc<[Block]>,
}

/// The files lexed in this compilation (handlers of one file are expanded together, so
/// a handful covers a crate).
static FILES: Mutex<Vec<Lexed>> = Mutex::new(Vec::new());

/// How many lexed files are kept.
const KEPT_FILES: usize = 8;

/// The blocks of `path`, lexed once per version of the file.
fn blocks_of(path: &Path) -> Option<Arc<[Block]>> {
    let metadata = std::fs::metadata(path).ok()?;
    let (len, modified) = (metadata.len(), metadata.modified().ok());
    let mut files = FILES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(lexed) = files.iter().find(|lexed| lexed.path == path)
        && lexed.len == len
        && lexed.modified == modified
    {
        return Some(Arc::clone(&lexed.blocks));
    }
    let source = std::fs::read_to_string(path).ok()?;
    let blocks: Arc<[Block]> = lex_blocks(&source).into();
    files.retain(|lexed| lexed.path != path);
    if files.len() >= KEPT_FILES {
        files.remove(0);
    }
    files.push(Lexed { path: path.to_path_buf(), len, modified, blocks: Arc::clone(&blocks) });
    Some(blocks)
}

/// One open brace block while lexing: its kind, where it opened, and the state of the
/// item being read inside it.
struct Frame {
    kind: Context,
    open: Position,
    /// `(` and `[` nesting inside this block: keywords in there (attributes, `pub(crate)`,
    /// arguments) do not start an item.
    groups: usize,
    /// The first keyword of the item being read, once seen.
    head: Option<Head>,
}

/// What the first keyword of an item says about the block it opens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Head {
    Impl,
    Trait,
    Other,
}

/// Lexes Rust source into its brace blocks, skipping comments, strings and character
/// literals. A block is an `impl` (or `trait`) block when the item before its `{` starts
/// with `impl` (or `trait`), after attributes, visibility and `unsafe`/`default`/`auto`.
/// Unbalanced braces (a file that does not lex) close what they can.
fn lex_blocks(source: &str) -> Vec<Block> {
    let chars: Vec<char> = source.chars().collect();
    let mut blocks = Vec::new();
    let mut stack =
        vec![Frame { kind: Context::Free, open: Position { line: 0, column: 0 }, groups: 0, head: None }];
    let (mut i, mut line, mut line_start) = (0, 1, 0);
    let position = |i: usize, line: usize, line_start: usize| Position { line, column: i - line_start };
    // Advances over `chars[i]`, counting lines.
    macro_rules! step {
        () => {{
            if chars[i] == '\n' {
                line += 1;
                line_start = i + 1;
            }
            i += 1;
        }};
    }
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                i += 2;
                let mut depth = 1;
                while i < chars.len() && depth > 0 {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        step!();
                    }
                }
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                        if i >= chars.len() {
                            break;
                        }
                    }
                    step!();
                }
                i += 1;
            }
            '\'' => {
                // A character literal ('x', '\n', '\u{..}') or a lifetime ('a).
                if next == Some('\\') {
                    // The quote, the backslash and the escaped character, then to the end.
                    i += 3;
                    while i < chars.len() && chars[i] != '\'' && chars[i] != '\n' {
                        i += 1;
                    }
                    i += 1;
                } else if chars.get(i + 2) == Some(&'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            c if c == '_' || c.is_alphabetic() => {
                let start = i;
                while i < chars.len() && (chars[i] == '_' || chars[i].is_alphanumeric()) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
                if matches!(word.as_str(), "r" | "br" | "cr") && chars.get(i + hashes) == Some(&'"') {
                    // A raw string: ends at a quote followed by as many hashes.
                    i += hashes + 1;
                    while i < chars.len() {
                        if chars[i] == '"'
                            && chars[i + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes
                        {
                            i += hashes + 1;
                            break;
                        }
                        step!();
                    }
                    continue;
                }
                if word == "r" && hashes == 1 {
                    // A raw identifier (`r#type`): never a keyword.
                    i += 1;
                    while i < chars.len() && (chars[i] == '_' || chars[i].is_alphanumeric()) {
                        i += 1;
                    }
                    read_word(stack.last_mut(), "");
                    continue;
                }
                read_word(stack.last_mut(), &word);
            }
            '(' | '[' => {
                if let Some(frame) = stack.last_mut() {
                    frame.groups += 1;
                }
                i += 1;
            }
            ')' | ']' => {
                if let Some(frame) = stack.last_mut() {
                    frame.groups = frame.groups.saturating_sub(1);
                }
                i += 1;
            }
            ';' => {
                if let Some(frame) = stack.last_mut().filter(|frame| frame.groups == 0) {
                    frame.head = None;
                }
                i += 1;
            }
            '{' => {
                let kind = match stack.last() {
                    Some(frame) if frame.groups == 0 => match frame.head {
                        Some(Head::Impl) => Context::Impl,
                        Some(Head::Trait) => Context::Trait,
                        _ => Context::Free,
                    },
                    _ => Context::Free,
                };
                stack.push(Frame { kind, open: position(i, line, line_start), groups: 0, head: None });
                i += 1;
            }
            '}' => {
                if stack.len() > 1 {
                    if let Some(frame) = stack.pop() {
                        blocks.push(Block {
                            kind: frame.kind,
                            open: frame.open,
                            close: position(i, line, line_start),
                        });
                    }
                    if let Some(parent) = stack.last_mut().filter(|frame| frame.groups == 0) {
                        parent.head = None;
                    }
                }
                i += 1;
            }
            _ => step!(),
        }
    }
    blocks
}

/// Notes a word read at the current level: the first keyword of an item, skipping those
/// that may precede `impl` or `trait`.
fn read_word(frame: Option<&mut Frame>, word: &str) {
    let Some(frame) = frame else { return };
    if frame.groups > 0 || frame.head.is_some() {
        return;
    }
    frame.head = match word {
        "pub" | "unsafe" | "default" | "auto" => None,
        "impl" => Some(Head::Impl),
        "trait" => Some(Head::Trait),
        _ => Some(Head::Other),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The context of the first `#[paid` in `source`.
    fn context_of(source: &str) -> Context {
        let blocks = lex_blocks(source);
        let offset = source.find("#[paid").expect("a #[paid] in the source");
        let before = &source[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |last| last.chars().count());
        context_at(&blocks, Position { line, column })
    }

    #[test]
    fn module_level_and_function_bodies_are_free() {
        assert_eq!(context_of("#[paid(plan = \"p\")]\n#[get(\"/\")]\nasync fn h() {}"), Context::Free);
        assert_eq!(context_of("mod m {\n    #[paid(plan = \"p\")]\n    async fn h() {}\n}"), Context::Free);
        assert_eq!(
            context_of("impl A {\n    fn setup() {\n        #[paid(plan = \"p\")] async fn h() {}\n    }\n}"),
            Context::Free
        );
        assert_eq!(context_of("impl A {}\n#[paid(plan = \"p\")]\nasync fn h() {}"), Context::Free);
        assert_eq!(
            context_of("fn f() -> impl Sized {}\n#[paid(plan = \"p\")]\nasync fn h() {}"),
            Context::Free
        );
    }

    #[test]
    fn impl_and_trait_blocks_are_associated() {
        assert_eq!(
            context_of("impl Agent {\n    #[paid(plan = \"p\")]\n    async fn h() {}\n}"),
            Context::Impl
        );
        assert_eq!(
            context_of("impl<T: Fn() -> u8> Agent<T> { #[paid(plan = \"p\")] async fn h() {} }"),
            Context::Impl
        );
        assert_eq!(
            context_of(
                "#[cfg(test)]\npub(crate) unsafe impl Send for A {\n#[paid(plan = \"p\")] async fn h() {}\n}"
            ),
            Context::Impl
        );
        assert_eq!(
            context_of("pub trait T {\n    #[paid(plan = \"p\")]\n    async fn h() {}\n}"),
            Context::Trait
        );
        assert_eq!(
            context_of("mod m { struct S { a: u8 } impl S { #[paid(plan = \"p\")] async fn h() {} } }"),
            Context::Impl
        );
    }

    #[test]
    fn braces_in_comments_strings_and_chars_do_not_count() {
        let source = "// impl X {\n/* { /* } */ */\nconst S: &str = \"{ impl\";\nconst R: &str = r#\"}\"#;\n\
                      const C: char = '{';\nconst D: char = '\\'';\nfn f<'a>(x: &'a str) {}\nimpl r#A {\n    \
                      #[paid(plan = \"p\")]\n    async fn h() {}\n}";
        assert_eq!(context_of(source), Context::Impl);
        let source =
            "const S: &str = \"}\";\nstruct A { b: [u8; 2] }\n#[paid(plan = \"p\")]\nasync fn h() {}";
        assert_eq!(context_of(source), Context::Free);
    }

    #[test]
    fn unbalanced_sources_do_not_panic() {
        for source in ["}}}", "{{{", "impl {", "\"unterminated", "r#\"raw", "'", "/* open"] {
            let _ = lex_blocks(source);
        }
    }

    /// A generated source: nested blocks of every kind, noise with braces in comments,
    /// strings and character literals, and one `#[paid]` somewhere.
    #[derive(Clone, Debug)]
    enum Node {
        /// A block opened by this header, holding these nodes.
        Block(&'static str, Vec<Node>),
        /// Text with no block of its own.
        Noise(&'static str),
        /// The attribute whose context is asked.
        Paid,
    }

    /// Headers, with the context their block gives.
    const HEADERS: [(&str, Context); 10] = [
        ("mod m", Context::Free),
        ("impl Agent", Context::Impl),
        ("impl<T: Fn() -> u8> Tr for Vec<T> where T: Copy", Context::Impl),
        ("pub(crate) unsafe impl Send for A", Context::Impl),
        ("#[cfg(all())] impl A", Context::Impl),
        ("pub trait T", Context::Trait),
        ("fn f() -> impl Sized", Context::Free),
        ("async fn g<'a>(x: &'a str)", Context::Free),
        ("const C: u8 = ", Context::Free),
        ("let x = call(|y| y)", Context::Free),
    ];

    const NOISE: [&str; 9] = [
        "// a { comment } impl X {\n",
        "/* nested /* { */ } */",
        "const S: &str = \"{ \\\" impl {\";",
        "const R: &str = r#\"}\"{\"#;",
        "const C: char = '{';",
        "const Q: char = '\\'';",
        "struct P { a: [u8; 2] }",
        "fn h<'b>(v: &'b u8) -> u8 { *v }",
        "let r#impl = 1;",
    ];

    fn node() -> impl proptest::strategy::Strategy<Value = Node> {
        use proptest::prelude::*;
        let leaf = prop_oneof![(0..NOISE.len()).prop_map(|i| Node::Noise(NOISE[i]))];
        leaf.prop_recursive(4, 24, 4, |inner| {
            ((0..HEADERS.len()), proptest::collection::vec(inner, 0..4))
                .prop_map(|(h, nodes)| Node::Block(HEADERS[h].0, nodes))
        })
    }

    /// Puts `Paid` into the tree at the `at`-th place (counting blocks and the top).
    fn place_paid(nodes: &mut Vec<Node>, at: &mut usize) -> bool {
        if *at == 0 {
            let middle = nodes.len() / 2;
            nodes.insert(middle, Node::Paid);
            return true;
        }
        *at -= 1;
        for node in nodes.iter_mut() {
            if let Node::Block(_, children) = node
                && place_paid(children, at)
            {
                return true;
            }
        }
        false
    }

    /// Writes the tree and returns the expected context of the `#[paid]` in it.
    fn render(nodes: &[Node], context: Context, out: &mut String) -> Option<Context> {
        let mut found = None;
        for node in nodes {
            match node {
                Node::Noise(text) => out.push_str(text),
                Node::Paid => {
                    out.push_str("#[paid(plan = \"p\")]\n#[get(\"/\")]\nasync fn h() {}");
                    found = Some(context);
                }
                Node::Block(header, children) => {
                    let kind = HEADERS.iter().find(|(h, _)| h == header).map_or(Context::Free, |(_, k)| *k);
                    out.push_str(header);
                    out.push_str(" {\n");
                    found = render(children, kind, out).or(found);
                    out.push_str("\n}");
                    if header.ends_with("= ") || header.starts_with("let") {
                        out.push(';');
                    }
                }
            }
            out.push('\n');
        }
        found
    }

    proptest::proptest! {
        /// Whatever the nesting and the noise, the innermost block around `#[paid]` decides.
        #[test]
        fn the_innermost_block_decides(mut nodes in proptest::collection::vec(node(), 0..5), at in 0usize..16) {
            let mut place = at;
            if !place_paid(&mut nodes, &mut place) {
                nodes.push(Node::Paid);
            }
            let mut source = String::new();
            let expected = render(&nodes, Context::Free, &mut source);
            proptest::prop_assert_eq!(Some(context_of(&source)), expected, "{}", source);
        }
    }
}
