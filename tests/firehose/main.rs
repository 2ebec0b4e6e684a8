//! The firehose out (Broadcaster, ConsumerSession, `subscribeRepos`) over real websockets on
//! 127.0.0.1 and a real event log in a temp dir: cursor rules, the replay-to-live switch,
//! slow and catching-up consumers, limits, shutdown, masking, damaged segments, and the real
//! Sequencer + Persister across a restart.

#[path = "../common/mod.rs"]
mod common;

mod cursors;
mod ingest;
/// The ingest-path helpers of the actors tests (frames a shard would send, a null sink).
#[path = "../actors/support.rs"]
#[allow(dead_code, unused_imports)]
mod ingest_support;
mod lifecycle;
mod log_cases;
mod slow;
mod support;
