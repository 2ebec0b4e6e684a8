//! (module under construction: postgres)
