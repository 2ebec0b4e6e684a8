//! Helpers shared by every integration-test binary (`tests/<area>/main.rs` includes this file
//! with `#[path = "../common/mod.rs"] mod common;`): the test vectors under
//! `../shared/vectors/`, running the `rookery` binary as a child process, and a Postgres
//! proxy that can freeze. Fixtures that
//! benches and the simulator need too live in the crate's `testkit` instead.
#![allow(dead_code)] // each test binary uses its own subset

pub mod pg_proxy;
pub mod process;
pub mod vectors;
pub mod wait;
