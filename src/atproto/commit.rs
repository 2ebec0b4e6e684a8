//! (module under construction: commit)
