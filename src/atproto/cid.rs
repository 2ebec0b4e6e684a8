//! (module under construction: cid)
