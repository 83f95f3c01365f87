//! The local PostgreSQL.
