//! `/admin/consumers/list`: the firehose's open consumers, in the reference's shape
//! (`id, remote_addr, user_agent, events_consumed, connected_at`) plus rookery's `cursor`,
//! `lag` and `live`. Read from the consumer table without waiting on any session.

use std::time::{Duration, UNIX_EPOCH};

use actix_web::{HttpResponse, web};
use serde::Serialize;

use super::AdminApi;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/consumers/list", web::get().to(list));
}

#[derive(Debug, Serialize)]
struct ListedConsumer {
    id: u64,
    remote_addr: String,
    user_agent: String,
    events_consumed: u64,
    /// RFC 3339, UTC, milliseconds.
    connected_at: String,
    /// The last seq sent.
    cursor: u64,
    /// Seqs between the cursor and the head.
    lag: u64,
    /// Caught up at least once.
    live: bool,
}

async fn list(api: web::Data<AdminApi>) -> HttpResponse {
    let consumers: Vec<ListedConsumer> = api
        .firehose
        .consumers()
        .into_iter()
        .map(|c| ListedConsumer {
            id: c.id,
            remote_addr: c.remote_addr,
            user_agent: c.user_agent,
            events_consumed: c.events_sent,
            connected_at: humantime::format_rfc3339_millis(
                UNIX_EPOCH + Duration::from_millis(c.connected_at_ms),
            )
            .to_string(),
            cursor: c.cursor,
            lag: c.lag,
            live: c.live,
        })
        .collect();
    HttpResponse::Ok().json(consumers)
}
