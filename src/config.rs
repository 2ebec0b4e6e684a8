//! The one configuration struct (module under construction).
