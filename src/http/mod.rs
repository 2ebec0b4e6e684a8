//! HTTP surfaces (module under construction).
