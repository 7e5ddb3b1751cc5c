//! # chronicle-bench
//!
//! Chronicle's benchmarks, out of the library crates: `chronicle bench
//! store|steps|replay|scheduler|api|cli|timers` calls [`store::run`],
//! [`steps::run`], [`replay::run`], [`scheduler::run`], [`api::run`] and
//! [`cli::run`], [`timers::run`]. Figures are measured, not
//! asserted in tests; each target figure has a baseline measured in the
//! same run (this kind of machine is shared and its speed varies ~2×
//! between hosts), so compare ratios, not absolute times.
//!
//! ```no_run
//! let figures = chronicle_bench::store::run(std::path::Path::new("/tmp/bench")).unwrap();
//! println!("{:.2}", figures.appends_per_s_1 / figures.raw_fsync_per_s);
//! ```

pub mod api;
pub mod cli;
pub mod pg;
pub mod replay;
pub mod scheduler;
pub mod steps;
pub mod store;
pub mod timers;
pub mod workers;
