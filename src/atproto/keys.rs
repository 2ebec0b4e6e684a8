//! (module under construction: keys)
