//! The interleaved run (`DL_BENCH_MODE=paired`): the ratios of the table.
//!
//! Criterion measures the raw side of an operation, then the framework
//! side. On a shared 2-core machine the server drifts between the two
//! (the same raw `get` measured 50 and 65 µs in two runs), and that drift
//! lands in the ratio. Here the two sides alternate instead: each round
//! times a block of raw iterations and a block of framework iterations
//! (which goes first alternates), so both see the same server state. The
//! p50s are the medians over rounds of each side's per-iteration time; the
//! ratio is the median of the per-round ratios, with its quartiles as the
//! spread. Results go to `<target>/bench-paired/<store>_<op>.json`, where
//! `bench-report` reads them.

// Statistics over a few dozen small positive counts and times.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One side's block: per-iteration time, in nanoseconds.
async fn block<S>(n: usize, setup: &impl Fn() -> S, run: &impl AsyncFn(S)) -> f64 {
    let mut total = Duration::ZERO;
    for _ in 0..n {
        let input = setup();
        let t = Instant::now();
        run(input).await;
        total += t.elapsed();
    }
    total.as_secs_f64() * 1e9 / n as f64
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - pos.floor())
}

/// What one operation measured.
#[derive(serde::Serialize)]
pub(crate) struct Measured {
    pub(crate) raw_ns: f64,
    pub(crate) framework_ns: f64,
    pub(crate) ratio: f64,
    pub(crate) ratio_p25: f64,
    pub(crate) ratio_p75: f64,
    pub(crate) rounds: usize,
    pub(crate) iterations_per_block: usize,
}

/// Times one operation, both sides interleaved.
pub(crate) async fn measure<S, T>(
    raw_setup: impl Fn() -> S,
    raw: impl AsyncFn(S),
    fw_setup: impl Fn() -> T,
    fw: impl AsyncFn(T),
) -> Measured {
    // Warm up both sides and size the blocks (about 20 ms of raw calls).
    // The size comes from the median of nine single calls: one stall of
    // the machine during sizing must not leave every block at one or two
    // calls.
    block(3, &raw_setup, &raw).await;
    block(3, &fw_setup, &fw).await;
    let mut probes = Vec::with_capacity(9);
    for _ in 0..9 {
        probes.push(block(1, &raw_setup, &raw).await);
    }
    probes.sort_by(f64::total_cmp);
    let probe = probes[4];
    let n = ((20e6 / probe).ceil() as usize).clamp(1, 2_000);
    let rounds = if n == 1 { 15 } else { 31 };
    let (mut raws, mut fws, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (r, f) = if round % 2 == 0 {
            let r = block(n, &raw_setup, &raw).await;
            (r, block(n, &fw_setup, &fw).await)
        } else {
            let f = block(n, &fw_setup, &fw).await;
            (block(n, &raw_setup, &raw).await, f)
        };
        raws.push(r);
        fws.push(f);
        ratios.push(f / r);
    }
    for v in [&mut raws, &mut fws, &mut ratios] {
        v.sort_by(f64::total_cmp);
    }
    Measured {
        raw_ns: quantile(&raws, 0.5),
        framework_ns: quantile(&fws, 0.5),
        ratio: quantile(&ratios, 0.5),
        ratio_p25: quantile(&ratios, 0.25),
        ratio_p75: quantile(&ratios, 0.75),
        rounds,
        iterations_per_block: n,
    }
}

/// Where the results go: `<target>/bench-paired/`.
pub(crate) fn out_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest.join("../target"), PathBuf::from)
        .join("bench-paired")
}

/// Writes one result and prints its line.
pub(crate) fn save(store: &str, op: &str, m: &Measured) {
    let dir = out_dir();
    std::fs::create_dir_all(&dir).expect("bench-paired folder");
    let path = dir.join(format!("{store}_{op}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(m).expect("json")).expect("write result");
    println!(
        "{store:>8} {op:<12} raw {:>12.1} ns  framework {:>12.1} ns  ratio {:.2} ({:.2}–{:.2}; {} rounds × {})",
        m.raw_ns,
        m.framework_ns,
        m.ratio,
        m.ratio_p25,
        m.ratio_p75,
        m.rounds,
        m.iterations_per_block
    );
}
