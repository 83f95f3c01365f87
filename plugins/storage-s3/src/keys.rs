//! Keys: plain relative paths, the same rule as the filesystem backend, so that a key valid
//! on one backend is valid on every other and nothing like `../x` or `a//b` reaches a bucket.

/// A key that is not a plain relative path.
#[derive(Debug, thiserror::Error)]
#[error("bad key {0:?}: keys are relative paths of [A-Za-z0-9._-] components, no '.' or '..'")]
pub struct BadKey(pub String);

/// Checks that `key` is `/`-separated components of `[A-Za-z0-9._-]`, none empty, `.` or `..`.
pub fn check_key(key: &str) -> Result<(), BadKey> {
    if spilo_sdk::storage::valid_key(key) {
        Ok(())
    } else {
        Err(BadKey(key.to_string()))
    }
}

/// `prefix/key`, or `key` when the prefix is empty.
pub fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}/{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_only() {
        for good in [
            "a",
            "wal/000000010000000000000001",
            "base/b-1_x.tar.zst",
            ".tmp/x",
        ] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/abs", "a//b", "../x", "a/./b", "a/..", "sp ace", "a\0b", "a/",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert_eq!(join("", "a/b"), "a/b");
        assert_eq!(join("p/q", "a"), "p/q/a");
    }
}
