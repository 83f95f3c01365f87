//! Built-in backends.
