//! The derive's compile errors, one file per misuse, and one file that uses
//! every attribute.

#[test]
fn derive_errors_and_uses() {
    let t = trybuild::TestCases::new();
    t.pass("tests/pass/*.rs");
    t.compile_fail("tests/ui/*.rs");
}
