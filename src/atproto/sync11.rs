//! (module under construction: sync11)
