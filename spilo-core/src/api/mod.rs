//! REST API.
