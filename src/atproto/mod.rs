//! The protocol core: everything the relay knows about the AT Protocol, as plain
//! synchronous code with no actors and no I/O, so it can be tested and benchmarked alone.

pub mod car;
pub mod cbor;
pub mod cid;
pub mod commit;
pub mod data_model;
pub mod did_doc;
pub mod frame;
pub mod keys;
pub mod mst;
pub mod sync11;
pub mod syntax;
pub mod tid;
pub mod validate;
