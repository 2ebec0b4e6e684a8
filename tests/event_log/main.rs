//! The durable event log (`src/store/event_log*`): round trips, retention and masking,
//! recovery from torn and corrupt files, and real SIGKILL crashes of a writer process.

#[path = "../common/mod.rs"]
mod common;

mod basic;
mod crash;
mod recovery;
