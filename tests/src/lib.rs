//! The conformance suite of data-layer, as a library any backend's test
//! calls, plus the model-based property test.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use dl_repositories::backends::memory::MemoryBackend;
//! use dl_tests::harness::{Factory, run_conformance};
//!
//! let factory: Factory = Arc::new(|| Box::pin(async { Arc::new(MemoryBackend::new()) as _ }));
//! let report = run_conformance("memory", factory, 8).await;
//! println!("{}", report.summary());
//! assert!(report.failed.is_empty());
//! # }
//! ```

pub mod canary;
pub mod cases;
pub mod entities;
pub mod feed;
pub mod harness;
pub mod live;
pub mod migrate;
pub mod model;
pub mod private;
pub mod proxy;
pub mod saga;
pub mod schema;
