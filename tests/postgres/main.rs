//! Postgres: the managed (embedded) cluster against the machine's real binaries, and the
//! migrations and pooled access against a throwaway test cluster.

#[path = "../common/mod.rs"]
mod common;

mod managed;
mod migrations;
