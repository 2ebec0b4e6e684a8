//! (module under construction: migrations)
