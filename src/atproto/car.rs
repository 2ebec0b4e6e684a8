//! (module under construction: car)
