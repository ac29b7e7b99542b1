//! Expansion snapshots: the code `#[paid]` writes for each form of its arguments,
//! formatted with prettyplease and compared with `src/snapshots/*.snap` by insta.
//!
//! To accept a deliberate change: `INSTA_UPDATE=always cargo test -p nvm-macros`, then
//! read every changed snapshot.

use proc_macro2::TokenStream;

/// Expands `#[paid(args)]` on `item` and formats the result, with the outer function's
/// `body! { … }` shown as the block it becomes (the macro writes its tokens back in
/// braces), so that the snapshot reads as code.
fn expand(args: &str, item: &str) -> String {
    let args: TokenStream = args.parse().expect("args tokens");
    let item: TokenStream = item.parse().expect("item tokens");
    let expanded = crate::expand_paid(args, item, || crate::context::Context::Free);
    match syn::parse2::<syn::File>(expanded.clone()) {
        Ok(mut file) => {
            for item in &mut file.items {
                if let syn::Item::Fn(function) = item {
                    open_body(&mut function.block);
                }
            }
            prettyplease::unparse(&file)
        }
        Err(error) => panic!("the expansion does not parse ({error}):\n{expanded}"),
    }
}

/// Replaces a block made of one `…::body! { tokens }` with `{ { tokens } }`.
fn open_body(block: &mut syn::Block) {
    let [syn::Stmt::Macro(call)] = block.stmts.as_slice() else {
        panic!("the outer function's body is not one `body!` call");
    };
    assert!(call.mac.path.segments.last().is_some_and(|s| s.ident == "body"), "not `body!`");
    let tokens = &call.mac.tokens;
    let inner: syn::Block = syn::parse2(quote::quote!({ #tokens })).expect("the body parses as a block");
    block.stmts = vec![syn::Stmt::Expr(
        syn::Expr::Block(syn::ExprBlock { attrs: vec![], label: None, block: inner }),
        None,
    )];
}

macro_rules! snapshot {
    ($name:ident, $args:expr, $item:expr $(,)?) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(expand($args, $item));
        }
    };
}

snapshot!(
    settled_after_the_body,
    r#"plan = "1234", credits = 10, settle = "after_body""#,
    r#"async fn chat(payment: PaymentContext) -> HttpResponse { stream(payment.meter()) }"#,
);

snapshot!(
    privately_cacheable,
    r#"plan = "1234", cache_control = "private, max-age=60""#,
    r#"async fn report() -> impl Responder { "the report" }"#,
);

snapshot!(
    literal_plan_fixed_credits,
    r#"plan = "1234", credits = 3"#,
    r#"async fn ask() -> impl Responder { "answer" }"#,
);

snapshot!(
    env_plan_with_routing_and_docs,
    r#"plan = env("NVM_PLAN_ID"), credits = 1"#,
    r#"
    /// Answers a question.
    ///
    /// Costs one credit.
    #[post("/ask")]
    pub async fn ask(web::Json(q): web::Json<Query>, payment: PaymentContext) -> impl Responder {
        payment.charge(1).ok();
        HttpResponse::Ok().json(q)
    }
    "#,
);

snapshot!(
    expression_plan_and_agent,
    r#"plan = config::plan_id(), agent = env("NVM_AGENT_ID")"#,
    r#"async fn ask() -> &'static str { "answer" }"#,
);

snapshot!(
    literal_agent_and_envelope_fields,
    r#"plan = "1234", agent = "5678", scheme = "nvm:card-delegation", network = "stripe",
       description = "A question answered", mime_type = "application/json",
       resource = "https://api.example.com/ask""#,
    r#"#[actix_web::get("/ask")] pub(crate) async fn ask() -> String { String::new() }"#,
);

snapshot!(
    credits_zero_is_free,
    r#"plan = "1234", credits = 0"#,
    r#"async fn free() -> &'static str { "free" }"#,
);

snapshot!(credits_const, r#"plan = "1234", credits = PRICE"#, r#"async fn ask() -> &'static str { "" }"#,);

snapshot!(
    credits_fn_path,
    r#"plan = "1234", credits = pricing::by_length"#,
    r#"async fn ask() -> &'static str { "" }"#,
);

snapshot!(
    credits_sync_closure,
    r#"plan = "1234", credits = |req| req.path().len() as u64"#,
    r#"async fn ask() -> &'static str { "" }"#,
);

snapshot!(
    credits_async_closure,
    r#"plan = "1234", credits = async |req: &HttpRequest| -> u64 { price_of(req.path()).await }"#,
    r#"async fn ask() -> &'static str { "" }"#,
);

snapshot!(
    patterns_and_other_attributes,
    r#"plan = "1234""#,
    r#"
    #[allow(unused_mut)]
    #[tracing::instrument(skip_all)]
    #[route("/items/{id}", method = "GET", method = "HEAD")]
    pub async fn item(_: HttpRequest, mut path: web::Path<u32>, web::Query(Filter { all, .. }): web::Query<Filter>) -> impl Responder {
        path.into_inner().to_string()
    }
    "#,
);

snapshot!(
    renamed_crate,
    r#"plan = "1234", credits = PRICE, crate = my_nvm"#,
    r#"#[get("/")] async fn index() -> HttpResponse { HttpResponse::Ok().finish() }"#,
);

snapshot!(
    fifteen_arguments,
    r#"plan = "1234""#,
    r#"async fn many(a0: A, a1: A, a2: A, a3: A, a4: A, a5: A, a6: A, a7: A, a8: A, a9: A, a10: A, a11: A, a12: A, a13: A, a14: A) -> impl Responder { "" }"#,
);

snapshot!(
    result_return_type,
    r#"plan = "1234", credits = 2"#,
    r#"
    #[put("/notes/{id}")]
    async fn update(id: web::Path<u64>, body: web::Bytes) -> Result<HttpResponse, actix_web::Error> {
        store(id.into_inner(), body).await?;
        Ok(HttpResponse::NoContent().finish())
    }
    "#,
);

snapshot!(raw_identifier_name, r#"plan = "1234""#, r#"async fn r#type() -> &'static str { "" }"#,);

/// On an error, the item comes back unchanged, followed by the errors.
#[test]
fn errors_keep_the_item() {
    let item = r#"#[get("/")] async fn index() -> &'static str { "" }"#;
    let out = crate::expand_paid(
        r#"plan = "", credits = -1"#.parse().expect("args"),
        item.parse().expect("item"),
        || crate::context::Context::Free,
    );
    let text = out.to_string();
    let original: TokenStream = item.parse().expect("item");
    assert!(text.starts_with(&original.to_string()), "{text}");
    assert_eq!(text.matches("compile_error").count(), 2, "{text}");
    assert!(text.contains("`plan` cannot be empty"), "{text}");
    assert!(text.contains("credits cannot be negative"), "{text}");
}

/// A function without `async` comes back with it, next to the error: a routing
/// attribute on it then adds no error of its own to ours.
#[test]
fn not_async_comes_back_async() {
    let item = r#"#[post("/ask")] fn ask() -> &'static str { "sync" }"#;
    let out = crate::expand_paid(r#"plan = "p""#.parse().expect("args"), item.parse().expect("item"), || {
        crate::context::Context::Free
    });
    let text = out.to_string();
    assert!(text.starts_with("# [post (\"/ask\")] async fn ask ()"), "{text}");
    assert!(text.contains(r#"{ "sync" }"#), "{text}");
    assert_eq!(text.matches("compile_error").count(), 1, "{text}");
    assert!(text.contains("must be `async fn`: add `async`"), "{text}");
}

/// Errors in the arguments and in the handler are reported together.
#[test]
fn argument_and_handler_errors_together() {
    let out = crate::expand_paid(
        r#"credits = 1"#.parse().expect("args"),
        "fn f() {}".parse().expect("item"),
        || crate::context::Context::Free,
    );
    let text = out.to_string();
    assert!(text.contains("needs the plan"), "{text}");
    assert!(text.contains("must be `async fn`"), "{text}");
}

/// Nothing in the expansion panics on odd input, and an item that is not a function is
/// returned as is.
#[test]
fn not_a_function() {
    let out = crate::expand_paid(
        r#"plan = "p""#.parse().expect("args"),
        "struct S;".parse().expect("item"),
        || crate::context::Context::Free,
    );
    let text = out.to_string();
    assert!(text.starts_with("struct S ;"), "{text}");
    assert!(text.contains("#[paid] applies to an actix-web handler"), "{text}");
}

/// In an `impl` or `trait` block, a routing attribute is one error that names both ways
/// out, and the item comes back without it (actix-web's expansion cannot stand there); an
/// associated function without one expands as usual.
#[test]
fn associated_functions_with_routing_attributes() {
    use crate::context::Context;
    let item = r#"#[post("/ask")] async fn ask() -> &'static str { "" }"#;
    type Where = fn() -> Context;
    let contexts: [(Where, &str); 2] =
        [(|| Context::Impl, "an `impl` block"), (|| Context::Trait, "a `trait` block")];
    for (context, block) in contexts {
        let out =
            crate::expand_paid(r#"plan = "p""#.parse().expect("args"), item.parse().expect("item"), context);
        let text = out.to_string();
        assert!(text.starts_with("async fn ask ()"), "{text}");
        assert_eq!(text.matches("compile_error").count(), 1, "{text}");
        assert!(text.contains(&format!("inside {block}:")), "{text}");
        assert!(text.contains("web::post().to(Type::ask)"), "{text}");
    }
    let unrouted = r#"async fn ask() -> &'static str { "" }"#;
    let out =
        crate::expand_paid(r#"plan = "p""#.parse().expect("args"), unrouted.parse().expect("item"), || {
            Context::Impl
        });
    assert!(!out.to_string().contains("compile_error"), "{out}");
}
