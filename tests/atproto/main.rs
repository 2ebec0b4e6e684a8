//! The protocol core (`src/atproto/`) against the shared test vectors and generated input:
//! one module per concept.

#[path = "../common/mod.rs"]
mod common;

mod commit;
mod crypto;
mod data_model;
mod did_doc;
mod frame;
mod frame_rewrite;
mod mst;
mod regressions;
mod sync11;
mod syntax;
mod validate;
