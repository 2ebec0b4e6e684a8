//! The simulator (`rookery::sim`) from the outside: a real awc websocket client and real HTTP
//! requests on 127.0.0.1 against simulated PDS hosts and the simulated PLC directory. What a
//! relay will rely on is checked with the relay's own parsers and validators: every frame
//! decodes, seqs increase, every `#commit` verifies (strict) with the key resolved from the
//! PLC, cursors replay without gap or duplicate, and the control API's faults are visible on
//! the wire.

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod checker_relay;
mod client;
mod control;
mod fleet;
mod probe;
mod stream;
mod tls;
