//! Storage: the durable event log (files under the data dir) and Postgres
//! (connection pool, migrations, the managed embedded cluster), and the crawl admission
//! policy's statements (`crawl_policy`).

pub mod crawl_policy;
pub mod event_log;
pub mod managed_postgres;
pub mod migrations;
pub mod postgres;
