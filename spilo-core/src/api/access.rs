//! Access control of the mutating endpoints, in Patroni's order: the allowlist (403), then
//! HTTP Basic auth (401). Read-only methods (GET, HEAD, OPTIONS) never come here.
//!
//! - The allowlist applies when `restapi.allowlist` is non-empty or
//!   `restapi.allowlist_include_members` is set. Entries are IP addresses, CIDR networks or host
//!   names (resolved on each check); with `allowlist_include_members` the hosts of the members'
//!   `api_url`s in the last DCS view are allowed too.
//! - Basic auth applies when `restapi.authentication` is set; the credentials are compared in
//!   constant time.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use base64::Engine;

use super::Reply;
use crate::config::{BasicAuth, RestApi};
use crate::ha::state::NodeState;

/// The `WWW-Authenticate` value of both 401 answers.
pub const WWW_AUTHENTICATE: &str = r#"Basic realm="Patroni""#;

/// Compare two byte strings in time that depends only on their lengths, never on where they
/// differ: every byte position up to the longer length is XOR-ed and OR-accumulated, and the
/// length difference is folded into the same accumulator.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    // Non-zero when the lengths differ; no branch on it.
    let mut acc: usize = a.len() ^ b.len();
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        acc |= usize::from(x ^ y);
    }
    std::hint::black_box(acc) == 0
}

/// Why Basic auth failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No (or an empty) `Authorization` header.
    NoHeader,
    /// A header that is not Basic, not valid base64, or the wrong credentials.
    Wrong,
}

impl AuthError {
    /// Patroni's message for the 401 answer.
    pub fn message(self) -> &'static str {
        match self {
            AuthError::NoHeader => "no auth header received",
            AuthError::Wrong => "not authenticated",
        }
    }
}

/// Check the `Authorization` header against `auth`.
pub fn check_basic_auth(headers: &HeaderMap, auth: &BasicAuth) -> Result<(), AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(AuthError::NoHeader);
    };
    let value = value.as_bytes();
    if value.iter().all(u8::is_ascii_whitespace) {
        return Err(AuthError::NoHeader);
    }
    let text = std::str::from_utf8(value)
        .map_err(|_| AuthError::Wrong)?
        .trim();
    let (scheme, token) = text.split_once(' ').ok_or(AuthError::Wrong)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthError::Wrong);
    }
    let given = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| AuthError::Wrong)?;
    let expected = format!("{}:{}", auth.username, auth.password);
    if constant_time_eq(&given, expected.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Wrong)
    }
}

/// One allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowEntry {
    /// An address (`prefix` = full length) or a network.
    Net {
        /// The address, host bits included as written.
        addr: IpAddr,
        /// Prefix length in bits.
        prefix: u8,
    },
    /// A host name, resolved when checked.
    Host(String),
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as IPv4; anything else unchanged.
pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    let t = text.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(t);
    t.parse::<IpAddr>().ok().map(normalize_ip)
}

impl AllowEntry {
    /// Parse `10.0.0.1`, `10.0.0.0/8`, `fd00::/8`, `[::1]` or a host name.
    pub fn parse(text: &str) -> AllowEntry {
        let t = text.trim();
        if let Some(ip) = parse_ip(t) {
            return AllowEntry::Net {
                addr: ip,
                prefix: if ip.is_ipv4() { 32 } else { 128 },
            };
        }
        if let Some((addr, prefix)) = t.split_once('/') {
            if let (Some(addr), Ok(prefix)) = (parse_ip(addr), prefix.trim().parse::<u8>()) {
                let max = if addr.is_ipv4() { 32 } else { 128 };
                if prefix <= max {
                    return AllowEntry::Net { addr, prefix };
                }
            }
        }
        AllowEntry::Host(t.to_string())
    }

    /// True when `ip` (already normalised) is this address or inside this network. Host names
    /// never match here; see [`resolve`].
    pub fn contains(&self, ip: IpAddr) -> bool {
        let AllowEntry::Net { addr, prefix } = self else {
            return false;
        };
        match (addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                u32::from(*net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
                u128::from(*net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The host of an `http(s)://[user@]host[:port]/path` URL (brackets of IPv6 literals removed).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let host = if let Some(r) = hostport.strip_prefix('[') {
        r.split_once(']')?.0
    } else {
        hostport
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(hostport)
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// The addresses of `host` (an IP literal needs no lookup), empty when it does not resolve
/// within `timeout`.
pub async fn resolve(host: &str, timeout: Duration) -> Vec<IpAddr> {
    if let Some(ip) = parse_ip(host) {
        return vec![ip];
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, 0))).await {
        Ok(Ok(addrs)) => addrs.map(|a| normalize_ip(a.ip())).collect(),
        Ok(Err(e)) => {
            tracing::debug!(host, error = %e, "allowlist host does not resolve");
            Vec::new()
        }
        Err(_) => {
            tracing::debug!(host, "allowlist host resolution timed out");
            Vec::new()
        }
    }
}

/// True when the allowlist lets `client` call mutating endpoints (always true when no allowlist
/// is configured). Literal addresses and networks are checked before any name is resolved.
pub async fn allowed(
    restapi: &RestApi,
    s: &NodeState,
    client: Option<IpAddr>,
    timeout: Duration,
) -> bool {
    if restapi.allowlist.is_empty() && !restapi.allowlist_include_members {
        return true;
    }
    let Some(client) = client.map(normalize_ip) else {
        return false;
    };
    let entries: Vec<AllowEntry> = restapi
        .allowlist
        .iter()
        .map(|e| AllowEntry::parse(e))
        .collect();
    if entries.iter().any(|e| e.contains(client)) {
        return true;
    }
    let mut hosts: Vec<String> = entries
        .into_iter()
        .filter_map(|e| match e {
            AllowEntry::Host(h) if !h.is_empty() => Some(h),
            _ => None,
        })
        .collect();
    if restapi.allowlist_include_members {
        if let Some(c) = &s.cluster {
            hosts.extend(c.members.iter().filter_map(|m| url_host(&m.data.api_url)));
        }
    }
    hosts.sort();
    hosts.dedup();
    for h in hosts {
        if resolve(&h, timeout).await.contains(&client) {
            return true;
        }
    }
    false
}

/// Patroni's access check: allowlist (403 `Access is denied`), then Basic auth (401 with
/// `WWW-Authenticate`).
pub(crate) async fn check_access(
    restapi: &RestApi,
    s: &NodeState,
    headers: &HeaderMap,
    client: Option<IpAddr>,
    resolve_timeout: Duration,
) -> Result<(), Reply> {
    if !allowed(restapi, s, client, resolve_timeout).await {
        tracing::warn!(client = ?client, "REST API access denied by the allowlist");
        return Err(Reply::text(403, "Access is denied"));
    }
    if let Some(auth) = &restapi.authentication {
        if let Err(e) = check_basic_auth(headers, auth) {
            return Err(
                Reply::text(401, e.message()).with_header("www-authenticate", WWW_AUTHENTICATE)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::HeaderValue;

    use super::*;
    use crate::api::testutil::{member, restapi};
    use crate::dcs::Cluster;

    fn basic(user_pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(user_pass);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secret2", b"secret"));
        assert!(!constant_time_eq(b"", b"x"));
        // A prefix padded with zero bytes still differs by length.
        assert!(!constant_time_eq(b"ab", b"ab\0"));
    }

    #[test]
    fn basic_auth() {
        let auth = BasicAuth {
            username: "admin".into(),
            password: "s3cret:x".into(),
        };
        assert_eq!(
            check_basic_auth(&HeaderMap::new(), &auth),
            Err(AuthError::NoHeader)
        );
        let mut empty = HeaderMap::new();
        empty.insert(header::AUTHORIZATION, HeaderValue::from_static(""));
        assert_eq!(check_basic_auth(&empty, &auth), Err(AuthError::NoHeader));
        assert_eq!(check_basic_auth(&basic("admin:s3cret:x"), &auth), Ok(()));
        assert_eq!(
            check_basic_auth(&basic("admin:s3cret"), &auth),
            Err(AuthError::Wrong)
        );
        assert_eq!(
            check_basic_auth(&basic("admin:s3cret:xy"), &auth),
            Err(AuthError::Wrong)
        );
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(check_basic_auth(&bearer, &auth), Err(AuthError::Wrong));
        let mut garbage = HeaderMap::new();
        garbage.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(check_basic_auth(&garbage, &auth), Err(AuthError::Wrong));
        // The scheme is case-insensitive.
        let mut lower = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode("admin:s3cret:x");
        lower.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("basic {token}")).unwrap(),
        );
        assert_eq!(check_basic_auth(&lower, &auth), Ok(()));
    }

    #[test]
    fn allow_entries() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let one = AllowEntry::parse("10.0.0.5");
        assert!(one.contains(ip("10.0.0.5")));
        assert!(!one.contains(ip("10.0.0.6")));
        let net = AllowEntry::parse("10.1.0.0/16");
        assert!(net.contains(ip("10.1.255.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(AllowEntry::parse("0.0.0.0/0").contains(ip("192.168.1.1")));
        let v6 = AllowEntry::parse("fd00::/8");
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("10.1.0.1")));
        assert!(AllowEntry::parse("[::1]").contains(ip("::1")));
        assert_eq!(
            AllowEntry::parse("db.example.com"),
            AllowEntry::Host("db.example.com".into())
        );
        assert_eq!(
            AllowEntry::parse("10.0.0.0/40"),
            AllowEntry::Host("10.0.0.0/40".into())
        );
        assert_eq!(normalize_ip(ip("::ffff:10.0.0.5")), ip("10.0.0.5"));
        assert_eq!(
            url_host("http://10.0.0.9:8008/patroni").as_deref(),
            Some("10.0.0.9")
        );
        assert_eq!(
            url_host("https://u:p@[fd00::1]:8008/patroni").as_deref(),
            Some("fd00::1")
        );
        assert_eq!(url_host("http://node-a/patroni").as_deref(), Some("node-a"));
        assert_eq!(url_host("http:///patroni"), None);
    }

    #[tokio::test]
    async fn allowlist_ip_cidr_host_and_members() {
        let t = Duration::from_secs(2);
        let s = NodeState::new("pg0", "demo", "");
        let ip = |x: &str| Some(x.parse::<IpAddr>().unwrap());

        // No allowlist: everyone, even without a known address.
        let open = restapi(None);
        assert!(allowed(&open, &s, None, t).await);

        let mut r = restapi(None);
        r.allowlist = vec![
            "10.0.0.5".into(),
            "192.168.0.0/24".into(),
            "localhost".into(),
        ];
        assert!(allowed(&r, &s, ip("10.0.0.5"), t).await);
        assert!(allowed(&r, &s, ip("::ffff:10.0.0.5"), t).await);
        assert!(allowed(&r, &s, ip("192.168.0.77"), t).await);
        assert!(
            allowed(&r, &s, ip("127.0.0.1"), t).await,
            "localhost resolves"
        );
        assert!(!allowed(&r, &s, ip("10.0.0.6"), t).await);
        assert!(!allowed(&r, &s, None, t).await);

        // Members' api_url hosts.
        let mut m = restapi(None);
        m.allowlist_include_members = true;
        let mut with_members = s.clone();
        with_members.cluster = Some(Arc::new(Cluster {
            members: vec![member("pg1", "http://10.0.0.21:8008/patroni")],
            ..Cluster::default()
        }));
        assert!(allowed(&m, &with_members, ip("10.0.0.21"), t).await);
        assert!(!allowed(&m, &with_members, ip("10.0.0.22"), t).await);
        assert!(
            !allowed(&m, &s, ip("10.0.0.21"), t).await,
            "no view, no members"
        );
    }

    #[tokio::test]
    async fn access_order_allowlist_then_auth() {
        let t = Duration::from_secs(1);
        let s = NodeState::new("pg0", "demo", "");
        let mut r = restapi(Some(("admin", "pw")));
        r.allowlist = vec!["10.0.0.0/8".into()];
        let client = Some("10.1.2.3".parse().unwrap());
        let outsider = Some("172.16.0.1".parse().unwrap());

        // Outside the allowlist: 403 even with the right credentials.
        let e = check_access(&r, &s, &basic("admin:pw"), outsider, t)
            .await
            .unwrap_err();
        assert_eq!((e.status, e.message()), (403, "Access is denied"));

        let e = check_access(&r, &s, &HeaderMap::new(), client, t)
            .await
            .unwrap_err();
        assert_eq!((e.status, e.message()), (401, "no auth header received"));
        assert_eq!(
            e.headers,
            vec![("www-authenticate", WWW_AUTHENTICATE.to_string())]
        );
        let e = check_access(&r, &s, &basic("admin:nope"), client, t)
            .await
            .unwrap_err();
        assert_eq!((e.status, e.message()), (401, "not authenticated"));
        assert_eq!(e.headers.len(), 1);
        assert!(check_access(&r, &s, &basic("admin:pw"), client, t)
            .await
            .is_ok());
    }
}
