//! (module under construction: mst)
