//! The public HTTP surface over real sockets: a relay listener (`http::start_public` with the
//! sync routes) on 127.0.0.1 against a fresh test database, one module per concept.

#[path = "../common/mod.rs"]
mod common;

mod support;

mod get_repo;
mod hosts;
mod pagination;
mod query_strings;
mod repos;
mod routing;
