//! rookery: an AT Protocol relay built on supervised actors.
//!
//! The tree follows the architecture (see README "Code organisation"):
//! `atproto` is the protocol core (pure, synchronous, no I/O), `store` holds the
//! event log and Postgres access, `http` the HTTP surfaces, `config` parses the command
//! line into each subsystem's settings, `startup` prepares the data dir before anything runs.
//!
//! Dependencies point one way: `startup` → `config` → `store`, `http`; `atproto` imports
//! none of them. No subsystem imports `config`: each owns its settings type and `config`
//! fills it (check with `grep -rn 'use crate::' src`).

#![forbid(unsafe_code)]

pub mod atproto;
pub mod config;
pub mod http;
pub mod startup;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
