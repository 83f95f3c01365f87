//! A DCS plugin for the failure tests: a store in the daemon's own memory (one node), whose
//! calls misbehave while the file named by the `fault_file` setting says so:
//! - `panic`: every call panics (the SDK turns that into an error);
//! - `hang`: every call blocks, ignoring its deadline, for as long as the file says `hang`;
//! - anything else, or no file: calls work.
//!
//! It exists to show that spilo survives a broken plugin: the daemon keeps running, the calls
//! fail, and a primary demotes as on any lost lease; when the fault ends, the node recovers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use spilo_sdk::plugin::{DcsPlugin, PluginConfig, PluginError};
use spilo_sdk::{Cas, Entry, SessionInfo, Snapshot};

#[derive(Default)]
struct State {
    /// key → (value, version, bound to the session, revision at creation)
    keys: BTreeMap<String, (Vec<u8>, i64, bool, i64)>,
    revision: i64,
    session: Option<i64>,
    changes: u64,
}

/// The store.
pub struct Faulty {
    member: String,
    fault_file: Option<PathBuf>,
    state: Mutex<State>,
    changed: Condvar,
}

impl Faulty {
    fn fault(&self) -> Result<(), PluginError> {
        let Some(f) = &self.fault_file else {
            return Ok(());
        };
        match std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .as_deref()
        {
            Ok("panic") => panic!("injected fault: {}", f.display()),
            Ok("hang") => {
                while std::fs::read_to_string(f)
                    .map(|s| s.trim() == "hang")
                    .unwrap_or(false)
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(PluginError::unavailable(
                    "the hang ended; this late answer is void",
                ))
            }
            _ => Ok(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    fn set(&self, s: &mut State, key: &str, value: &[u8], ephemeral: bool) {
        s.revision += 1;
        let rev = s.revision;
        let created = s.keys.get(key).map_or(rev, |k| k.3);
        s.keys
            .insert(key.to_string(), (value.to_vec(), rev, ephemeral, created));
        if matches!(key, "leader" | "config" | "failover" | "initialize") {
            s.changes += 1;
            self.changed.notify_all();
        }
    }

    fn remove(&self, s: &mut State, key: &str) {
        if s.keys.remove(key).is_some() {
            s.revision += 1;
            if matches!(key, "leader" | "config" | "failover" | "initialize") {
                s.changes += 1;
                self.changed.notify_all();
            }
        }
    }

    fn cas_holds(s: &State, key: &str, cas: Cas) -> bool {
        match cas {
            Cas::Any => true,
            Cas::Absent => !s.keys.contains_key(key),
            Cas::Version(v) => s.keys.get(key).map(|e| e.1) == Some(v),
        }
    }
}

impl DcsPlugin for Faulty {
    fn create(config: &PluginConfig) -> Result<Self, PluginError> {
        let fault_file = match config.config.get("fault_file") {
            None => None,
            Some(v) => {
                Some(PathBuf::from(v.as_str().ok_or_else(|| {
                    PluginError::invalid("fault_file: must be a path")
                })?))
            }
        };
        Ok(Faulty {
            member: config.member.clone(),
            fault_file,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    fn snapshot(&self, _deadline: Instant) -> Result<Snapshot, PluginError> {
        self.fault()?;
        let s = self.state();
        Ok(Snapshot {
            revision: s.revision,
            entries: s
                .keys
                .iter()
                .map(|(k, (v, ver, eph, created))| Entry {
                    key: k.clone(),
                    value: v.clone(),
                    version: *ver,
                    owned_by_us: *eph && s.session.is_some(),
                    created: Some(*created),
                })
                .collect(),
        })
    }

    fn keepalive(&self, _deadline: Instant) -> Result<SessionInfo, PluginError> {
        self.fault()?;
        let mut s = self.state();
        let new_session = s.session.is_none();
        let id = *s.session.get_or_insert(1);
        Ok(SessionInfo {
            id,
            new_session,
            granted_ttl: None,
        })
    }

    fn put_member(&self, value: &[u8], _deadline: Instant) -> Result<(), PluginError> {
        self.fault()?;
        let mut s = self.state();
        let key = format!("members/{}", self.member);
        self.set(&mut s, &key, value, true);
        Ok(())
    }

    fn acquire_leader(&self, _deadline: Instant) -> Result<bool, PluginError> {
        self.fault()?;
        let mut s = self.state();
        if s.keys.contains_key("leader") {
            return Ok(false);
        }
        let me = self.member.clone();
        self.set(&mut s, "leader", me.as_bytes(), true);
        Ok(true)
    }

    fn reattach_leader(&self, _deadline: Instant) -> Result<bool, PluginError> {
        self.fault()?;
        let mut s = self.state();
        match s.keys.get("leader") {
            Some((v, _, _, _)) if v != self.member.as_bytes() => Ok(false),
            _ => {
                let me = self.member.clone();
                self.set(&mut s, "leader", me.as_bytes(), true);
                Ok(true)
            }
        }
    }

    fn release_leader(&self, _deadline: Instant) -> Result<bool, PluginError> {
        self.fault()?;
        let mut s = self.state();
        match s.keys.get("leader") {
            Some((v, _, _, _)) if v == self.member.as_bytes() => {
                self.remove(&mut s, "leader");
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn put(
        &self,
        key: &str,
        value: &[u8],
        cas: Cas,
        _deadline: Instant,
    ) -> Result<bool, PluginError> {
        self.fault()?;
        let mut s = self.state();
        if !Self::cas_holds(&s, key, cas) {
            return Ok(false);
        }
        self.set(&mut s, key, value, false);
        Ok(true)
    }

    fn delete(&self, key: &str, cas: Cas, _deadline: Instant) -> Result<bool, PluginError> {
        self.fault()?;
        let mut s = self.state();
        if !s.keys.contains_key(key) || !Self::cas_holds(&s, key, cas) {
            return Ok(false);
        }
        self.remove(&mut s, key);
        Ok(true)
    }

    fn wait_changes(&self, seen: u64, timeout: Duration) -> u64 {
        let s = self.state();
        match self
            .changed
            .wait_timeout_while(s, timeout, |s| s.changes == seen)
        {
            Ok((s, _)) => s.changes,
            Err(p) => p.into_inner().0.changes,
        }
    }

    fn set_ttl(&self, _ttl: Duration) {}

    fn close(&self, _deadline: Instant) -> Result<(), PluginError> {
        self.fault()?;
        let mut s = self.state();
        let ephemeral: Vec<String> = s
            .keys
            .iter()
            .filter(|(_, e)| e.2)
            .map(|(k, _)| k.clone())
            .collect();
        for k in ephemeral {
            self.remove(&mut s, &k);
        }
        s.session = None;
        Ok(())
    }
}

spilo_sdk::export_dcs_plugin!(Faulty, name = "faulty", version = "1.0-test");
