//! An in-memory DCS for unit tests: keys with versions from one revision counter, CAS as etcd
//! does it, and switches to make reads or writes fail. No sessions: leader-key operations
//! answer `false`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::dcs::{Cas, Dcs, DcsError, Entry, SessionInfo, Snapshot};

/// An in-memory DCS: keys with versions from one revision counter, CAS as etcd does it, and
/// switches to make reads or writes fail.
pub(crate) struct MemDcs {
    keys: Mutex<BTreeMap<String, (Vec<u8>, i64)>>,
    revision: AtomicI64,
    /// Every `put`/`delete` fails with an error.
    pub fail_writes: AtomicBool,
    /// Every `snapshot` fails with an error.
    pub fail_reads: AtomicBool,
    /// A key whose version is bumped (same value) right after every `snapshot`, as a concurrent
    /// writer would.
    pub bump_after_read: Mutex<Option<String>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl MemDcs {
    pub(crate) fn new() -> Arc<MemDcs> {
        Arc::new(MemDcs::default())
    }
}

impl Default for MemDcs {
    fn default() -> MemDcs {
        MemDcs {
            keys: Mutex::new(BTreeMap::new()),
            revision: AtomicI64::new(1),
            fail_writes: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
            bump_after_read: Mutex::new(None),
            changes: tokio::sync::watch::channel(0).0,
        }
    }
}

impl MemDcs {
    /// Write `key` unconditionally (a new version).
    pub(crate) fn set(&self, key: &str, value: &str) {
        let v = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
        self.keys
            .lock()
            .unwrap()
            .insert(key.to_string(), (value.as_bytes().to_vec(), v));
    }

    pub(crate) fn remove(&self, key: &str) {
        self.keys.lock().unwrap().remove(key);
    }

    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.keys
            .lock()
            .unwrap()
            .get(key)
            .map(|(v, _)| String::from_utf8(v.clone()).unwrap())
    }

    pub(crate) fn version(&self, key: &str) -> Option<i64> {
        self.keys.lock().unwrap().get(key).map(|(_, v)| *v)
    }

    fn refused(op: &'static str) -> DcsError {
        DcsError::Unreachable {
            op,
            message: "test DCS is down".into(),
        }
    }
}

#[async_trait]
impl Dcs for MemDcs {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn snapshot(&self) -> Result<Snapshot, DcsError> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(Self::refused("snapshot"));
        }
        let snap = {
            let keys = self.keys.lock().unwrap();
            Snapshot {
                revision: self.revision.load(Ordering::SeqCst),
                entries: keys
                    .iter()
                    .map(|(k, (v, ver))| Entry {
                        key: k.clone(),
                        value: v.clone(),
                        version: *ver,
                        owned_by_us: false,
                        created: None,
                    })
                    .collect(),
            }
        };
        let bump = self.bump_after_read.lock().unwrap().clone();
        if let Some(key) = bump {
            if let Some(v) = self.get(&key) {
                self.set(&key, &v);
            }
        }
        Ok(snap)
    }

    async fn keepalive(&self) -> Result<SessionInfo, DcsError> {
        Ok(SessionInfo {
            id: 1,
            new_session: false,
            granted_ttl: None,
        })
    }

    async fn put_member(&self, _value: &[u8]) -> Result<(), DcsError> {
        Ok(())
    }

    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        Ok(false)
    }

    async fn reattach_leader(&self) -> Result<bool, DcsError> {
        Ok(false)
    }

    async fn release_leader(&self) -> Result<bool, DcsError> {
        Ok(false)
    }

    async fn put(&self, key: &str, value: &[u8], cas: Cas) -> Result<bool, DcsError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(Self::refused("put"));
        }
        let mut keys = self.keys.lock().unwrap();
        let current = keys.get(key).map(|(_, v)| *v);
        let ok = match cas {
            Cas::Any => true,
            Cas::Absent => current.is_none(),
            Cas::Version(v) => current == Some(v),
        };
        if ok {
            let v = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
            keys.insert(key.to_string(), (value.to_vec(), v));
            self.changes.send_modify(|c| *c += 1);
        }
        Ok(ok)
    }

    async fn delete(&self, key: &str, cas: Cas) -> Result<bool, DcsError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(Self::refused("delete"));
        }
        let mut keys = self.keys.lock().unwrap();
        let current = keys.get(key).map(|(_, v)| *v);
        let ok = match cas {
            Cas::Any => true,
            Cas::Absent => current.is_none(),
            Cas::Version(v) => current == Some(v),
        };
        if ok {
            keys.remove(key);
        }
        Ok(ok)
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn set_ttl(&self, _ttl: Duration) {}

    async fn close(&self) -> Result<(), DcsError> {
        Ok(())
    }
}
