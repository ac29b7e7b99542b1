//! Compile-time behaviour of `#[paid]`: what compiles (without a warning) and what is
//! refused, with the message a user sees.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
