//! (module under construction: syntax)
