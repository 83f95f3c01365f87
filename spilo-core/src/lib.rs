//! spilo: high-availability PostgreSQL.
//!
//! - [`config`]: the node configuration (Patroni's YAML schema), loading and validation;
//! - [`dcs`]: the DCS contract, the cluster model and its Patroni-compatible encoding;
//! - [`ha`]: the pure decision ([`ha::decide`]) and the loop that observes, decides, acts, waits;
//! - [`postgres`]: the local PostgreSQL;
//! - [`api`]: the Patroni-compatible REST API;
//! - [`ctl`]: the `spiloctl` commands.

// `Instant - Duration` panics when it would go before the clock's origin (boot, for the monotonic
// clock), which a day-long `ttl` on a freshly booted machine reaches: use checked_sub.
#![deny(clippy::unchecked_time_subtraction)]

pub mod api;
pub mod backup;
pub mod clock;
pub mod config;
pub mod ctl;
pub mod dcs;
pub mod exposition;
pub mod ha;
pub mod hooks;
pub mod lb;
pub mod lifecycle;
pub mod plugin;
pub mod postgres;
pub mod proxy;
pub mod secret;
pub mod timestamp;

/// The version spilo advertises to peers: a Patroni 4.x version, so Patroni-aware tools use
/// their modern code paths.
pub const PATRONI_COMPAT_VERSION: &str = "4.1.4";
/// spilo's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An error and every cause under it on one line, `outer: inner: innermost`, skipping a cause
/// whose text the line already holds (many errors print their source themselves). The form to
/// use wherever an error is flattened into a string or a log field, so that the reason
/// (PostgreSQL's message, the OS error, the store's answer) is never lost on the way up.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("wrapper: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(super::error_chain(&Outer(io())), "outer: refused");
        assert_eq!(super::error_chain(&Repeats(io())), "wrapper: refused");
    }
}
