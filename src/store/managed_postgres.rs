//! (module under construction: managed_postgres)
