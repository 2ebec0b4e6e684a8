//! (module under construction: cbor)
