//! `rookery serve` and `rookery migrate` as a child process: configuration errors, start-up
//! with embedded or external Postgres, signals and shutdown, and the event log inside serve.

#[path = "../common/mod.rs"]
mod common;

mod admin_api;
mod crawl;
mod event_log;
mod health_under_load;
mod ingest_crash;
mod lifecycle;
mod relay_end_to_end;
mod relay_fixture;
mod service;
mod shutdown;
mod upstream_tls;
