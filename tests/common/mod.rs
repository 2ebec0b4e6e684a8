//! Helpers shared by every integration-test binary (`tests/<area>/main.rs` includes this file
//! with `#[path = "../common/mod.rs"] mod common;`): the test vectors under
//! `../shared/vectors/`, and running the `rookery` binary as a child process. Fixtures that
//! benches and the simulator need too live in the crate's `testkit` instead.
#![allow(dead_code)] // each test binary uses its own subset

pub mod process;
pub mod vectors;
pub mod wait;
