//! (module under construction: event_log)
