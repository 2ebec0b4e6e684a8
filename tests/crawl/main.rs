//! requestCrawl admission over real HTTP on 127.0.0.1: the public routes and the crawl admin
//! routes (mounted under `/admin` as the relay mounts them) in front of a real ingest pipeline
//! (HostSupervisor, Subscribers, shards) on a fresh test database, simulated PDS hosts, a
//! resolver the tests control, and `rookery pull-hosts` between two such relays.

#[path = "../common/mod.rs"]
mod common;

mod support;

mod admin_settings;
mod admission;
mod pull_hosts;
mod ssrf;
