//! (module under construction: tid)
