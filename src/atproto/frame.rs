//! (module under construction: frame)
