//! rookery: an AT Protocol relay built on supervised actors.
//!
//! The tree follows the architecture (see README "Code organisation"):
//! `atproto` is the protocol core (pure, synchronous, no I/O), `store` holds the
//! event log and Postgres access, `http` the HTTP surfaces, `config` the one
//! configuration struct.

#![forbid(unsafe_code)]

pub mod atproto;
pub mod config;
pub mod http;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
