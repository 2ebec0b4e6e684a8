//! (module under construction: did_doc)
