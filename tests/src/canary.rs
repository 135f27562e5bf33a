//! Canary checks: unique values written into PHI fields, then a scan of
//! everything that left (an error and its source chain, a Redis key name,
//! a cursor) for any of them.

use std::fmt::Write as _;

/// A unique canary value for one test: easy to find, never produced by
/// anything but the test (`CANARY-<tag>-<12 hex>`).
#[must_use]
pub fn canary(tag: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("CANARY-{tag}-{}", &id[..12])
}

/// Every way an error can be shown: `Display`, `Debug`, `{:#?}`, and the
/// same for each error in its `source()` chain.
#[must_use]
pub fn every_rendering(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(e);
    let mut depth = 0;
    while let Some(err) = next {
        let _ = write!(out, "[{depth}] {err}\n{err:?}\n{err:#?}\n");
        next = err.source();
        depth += 1;
        assert!(depth < 64, "a source chain of 64 errors: a cycle?");
    }
    out
}

/// Panics when any canary appears in `text` (naming the canary and where
/// it was found, so a failure shows the leak).
pub fn assert_no_canary(what: &str, text: &str, canaries: &[&str]) {
    for c in canaries {
        // The canary, or any 16-byte stretch of it (a truncated copy).
        let found = text.contains(c)
            || (c.len() > 16 && (0..=c.len() - 16).any(|i| text.contains(&c[i..i + 16])));
        assert!(!found, "{what}: canary {c} leaked in:\n{text}");
    }
}

/// [`assert_no_canary`] over [`every_rendering`] of an error; returns the
/// renderings (for further checks).
pub fn assert_error_clean(
    what: &str,
    e: &(dyn std::error::Error + 'static),
    canaries: &[&str],
) -> String {
    let text = every_rendering(e);
    assert_no_canary(what, &text, canaries);
    text
}
