//! Test support shared by the integration tests, the benchmarks and (next) the simulated PDS
//! fleet: one place for fixtures that used to be written three times.
//!
//! Behind the `testkit` cargo feature, so none of it ships in a production build. The crate's
//! own tests and benches turn the feature on through a dev-dependency on the crate itself
//! (see `Cargo.toml`); `rookery-logtool`'s `append-loop` (the writer the crash test kills) is
//! compiled only with it.
//!
//! - [`repo`]: a PDS-side signing repository that emits the `#commit`s and `#sync`s a real PDS
//!   sends (signed commits, MST diffs, covering proofs), plus record and path helpers.
//! - [`event_log`]: the synthetic record bodies that a writer process and its checker agree on.
//! - [`postgres`]: a throwaway Postgres cluster per test process, a fresh database per test.

pub mod event_log;
pub mod postgres;
pub mod repo;
