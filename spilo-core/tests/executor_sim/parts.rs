//! The simulated components the real executor is built with: a DCS backend (the `Dcs` trait),
//! a PostgreSQL (`LocalPostgres`), and peers (`PeerSource`), all over the shared [`World`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::Value;
use spilo_core::api::client::{parse_peer_status, PeerSource, PeerStatus};
use spilo_core::dcs::{Cas, Dcs, DcsError, Entry, SessionInfo, Snapshot};
use spilo_core::ha::fence::FenceTarget;
use spilo_core::ha::state::{PgStatus, ReplicationRow, Role, StateRx};
use spilo_core::postgres::conf::Upstream;
use spilo_core::postgres::{BootstrapRoles, LocalPostgres, PgError, StopMode};
use tokio::time::Instant;

use super::world::{is_watched, parse_ssn, Data, Lease, Proc, World, NODES, PG_PORT0, SYSID};

/// Waits while node `node`'s daemon is frozen: every call it makes (to the DCS, its
/// PostgreSQL, its peers) stalls, so its loop and its lease guard resume where they stopped,
/// acting on what they saw before.
pub async fn thaw(world: &World, node: usize) {
    while world.lock().frozen[node] {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `0/1A2B` form of a WAL position.
pub fn lsn(pos: u64) -> String {
    format!("{:X}/{:X}", pos >> 32, pos & 0xFFFF_FFFF)
}

// ---------------------------------------------------------------------------------------------
// The DCS

/// Node `node`'s client of the simulated DCS: a session (lease), calls that fail after
/// `retry_timeout` while the node's link to the DCS is cut.
pub struct SimDcs {
    pub world: World,
    pub node: usize,
    pub member: String,
    pub retry: Duration,
    ttl_ms: AtomicU64,
    lease: std::sync::Mutex<(u64, u64, u64)>, // (current, reported, retired)
}

impl SimDcs {
    pub fn new(world: World, node: usize, member: &str, ttl: Duration, retry: Duration) -> SimDcs {
        SimDcs {
            world,
            node,
            member: member.to_string(),
            retry,
            ttl_ms: AtomicU64::new(ttl.as_millis() as u64),
            lease: std::sync::Mutex::new((0, 0, 0)),
        }
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::SeqCst))
    }

    /// Waits a little (a round trip), then fails the call when the link is cut (after the
    /// deadline, as a real client would).
    async fn gate(&self, op: &'static str) -> Result<(), DcsError> {
        thaw(&self.world, self.node).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        thaw(&self.world, self.node).await;
        let up = self.world.lock().links.dcs[self.node];
        if up {
            return Ok(());
        }
        tokio::time::sleep(self.retry).await;
        Err(DcsError::Timeout {
            op,
            after: self.retry,
        })
    }

    /// The answer to a call already applied: lost when the DCS's answers to this node are cut
    /// (the caller times out, not knowing its request took effect).
    async fn reply<T>(&self, op: &'static str, value: T) -> Result<T, DcsError> {
        if self.world.lock().links.dcs_answers[self.node] {
            return Ok(value);
        }
        Err(self.lost(op).await)
    }

    /// Sends a write: `apply` runs on the DCS's state and answers (the result, whether a
    /// watched key changed). Normally at once; while the node's requests are held up, it lands
    /// a little after the caller has given up on it (the caller sees a timeout); while answers
    /// are lost, it lands at once and the caller sees a timeout.
    async fn send<T: Send + 'static>(
        &self,
        op: &'static str,
        apply: impl FnOnce(&mut super::world::Inner) -> (T, bool) + Send + 'static,
    ) -> Result<T, DcsError> {
        let late = self.world.lock().links.dcs_late[self.node];
        if late {
            let world = self.world.clone();
            let delay = self.retry + Duration::from_millis(300);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let (_, bump) = apply(&mut world.lock());
                if bump {
                    world.bump();
                }
            });
            return Err(self.lost(op).await);
        }
        let (value, bump) = apply(&mut self.world.lock());
        if bump {
            self.world.bump();
        }
        self.reply(op, value).await
    }

    /// A call whose answer never comes: the caller gives up after its deadline.
    async fn lost(&self, op: &'static str) -> DcsError {
        tokio::time::sleep(self.retry).await;
        DcsError::Timeout {
            op,
            after: self.retry,
        }
    }

    /// Renews the session's lease (a new one after expiry or a TTL change); None when the
    /// answer is lost on the way back.
    fn apply_keepalive(&self) -> Option<SessionInfo> {
        let now = Instant::now();
        let ttl = self.ttl();
        let mut l = self.lease.lock().unwrap();
        let mut w = self.world.lock();
        if l.2 != 0 && l.1 == l.0 {
            let old = std::mem::take(&mut l.2);
            w.dcs.leases.remove(&old);
            if w.dcs.drop_keys_of(old) {
                self.world.bump();
            }
        }
        let alive = w
            .dcs
            .leases
            .get(&l.0)
            .map(|x| x.ttl == ttl)
            .unwrap_or(false);
        let renewable = w.dcs.leases.contains_key(&l.0);
        if alive {
            if let Some(x) = w.dcs.leases.get_mut(&l.0) {
                x.expires = now + ttl;
            }
        } else {
            if renewable {
                // A TTL change: the old lease lives until the next keep-alive.
                l.2 = l.0;
            }
            w.dcs.next_lease += 1;
            let id = w.dcs.next_lease;
            w.dcs.leases.insert(
                id,
                Lease {
                    ttl,
                    expires: now + ttl,
                },
            );
            l.0 = id;
        }
        if !w.links.dcs_answers[self.node] {
            return None;
        }
        let new_session = l.0 != l.1;
        l.1 = l.0;
        Some(SessionInfo {
            id: l.0 as i64,
            new_session,
            granted_ttl: Some(ttl),
        })
    }

    fn current_lease(&self) -> u64 {
        self.lease.lock().unwrap().0
    }

    /// Expires leases, bumping the watch when a watched key went.
    fn expire(&self) {
        let gone = self.world.lock().dcs.expire(Instant::now());
        if gone {
            self.world.bump();
        }
    }
}

#[async_trait]
impl Dcs for SimDcs {
    fn backend(&self) -> &'static str {
        "sim"
    }

    async fn snapshot(&self) -> Result<Snapshot, DcsError> {
        self.gate("snapshot").await?;
        self.expire();
        if !self.world.lock().links.dcs_answers[self.node] {
            return Err(self.lost("snapshot").await);
        }
        let mine = self.current_lease();
        let w = self.world.lock();
        Ok(Snapshot {
            revision: w.dcs.revision,
            entries: w
                .dcs
                .keys
                .iter()
                .map(|(k, (v, version, lease, created))| Entry {
                    key: k.clone(),
                    value: v.clone(),
                    version: *version,
                    owned_by_us: mine != 0 && *lease == Some(mine),
                    created: Some(*created).filter(|c| *c > 0),
                })
                .collect(),
        })
    }

    async fn keepalive(&self) -> Result<SessionInfo, DcsError> {
        self.gate("keepalive").await?;
        self.expire();
        let info = self.apply_keepalive();
        match info {
            Some(info) => Ok(info),
            // Renewed (or created) on the DCS; the daemon never hears of it.
            None => Err(self.lost("keepalive").await),
        }
    }

    async fn put_member(&self, value: &[u8]) -> Result<(), DcsError> {
        self.gate("put_member").await?;
        let lease = self.current_lease();
        let stored = {
            let mut w = self.world.lock();
            let ok = w.dcs.leases.contains_key(&lease);
            if ok {
                w.dcs
                    .set(&format!("members/{}", self.member), value, Some(lease));
            }
            ok
        };
        if !stored {
            return Err(DcsError::Refused {
                op: "put_member",
                message: "lease not found".into(),
            });
        }
        self.reply("put_member", ()).await
    }

    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        self.gate("acquire_leader").await?;
        self.expire();
        let (member, lease) = (self.member.clone(), self.current_lease());
        self.send("acquire_leader", move |w| {
            let free = !w.dcs.keys.contains_key("leader") && w.dcs.leases.contains_key(&lease);
            if free {
                w.dcs.set("leader", member.as_bytes(), Some(lease));
            }
            (free, free)
        })
        .await
    }

    async fn reattach_leader(&self) -> Result<bool, DcsError> {
        self.gate("reattach_leader").await?;
        self.expire();
        let (member, lease) = (self.member.clone(), self.current_lease());
        self.send("reattach_leader", move |w| {
            let ours = w.dcs.leases.contains_key(&lease)
                && match w.dcs.keys.get("leader") {
                    None => true,
                    Some((v, ..)) => v == member.as_bytes(),
                };
            if ours {
                w.dcs.set("leader", member.as_bytes(), Some(lease));
            }
            (ours, ours)
        })
        .await
    }

    async fn release_leader(&self) -> Result<bool, DcsError> {
        self.gate("release_leader").await?;
        let member = self.member.clone();
        self.send("release_leader", move |w| {
            let ours = matches!(w.dcs.keys.get("leader"), Some((v, ..)) if v == member.as_bytes());
            if ours {
                w.dcs.keys.remove("leader");
            }
            (ours, ours)
        })
        .await
    }

    async fn put(&self, key: &str, value: &[u8], cas: Cas) -> Result<bool, DcsError> {
        self.gate("put").await?;
        let (key, value) = (key.to_string(), value.to_vec());
        self.send("put", move |w| {
            let current = w.dcs.keys.get(&key).map(|k| k.1);
            let ok = match cas {
                Cas::Any => true,
                Cas::Absent => current.is_none(),
                Cas::Version(v) => current == Some(v),
            };
            if ok {
                w.dcs.set(&key, &value, None);
            }
            (ok, ok && is_watched(&key))
        })
        .await
    }

    async fn delete(&self, key: &str, cas: Cas) -> Result<bool, DcsError> {
        self.gate("delete").await?;
        let key = key.to_string();
        self.send("delete", move |w| {
            let current = w.dcs.keys.get(&key).map(|k| k.1);
            let ok = match cas {
                Cas::Any => current.is_some(),
                Cas::Absent => false,
                Cas::Version(v) => current == Some(v),
            };
            if ok {
                w.dcs.keys.remove(&key);
            }
            (ok, ok && is_watched(&key))
        })
        .await
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.world.changes()
    }

    fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(ttl.as_millis() as u64, Ordering::SeqCst);
    }

    async fn close(&self) -> Result<(), DcsError> {
        self.gate("close").await?;
        let (lease, retired) = {
            let mut l = self.lease.lock().unwrap();
            let x = (l.0, l.2);
            *l = (0, 0, 0);
            x
        };
        let mut w = self.world.lock();
        let mut gone = false;
        for id in [lease, retired] {
            if id != 0 {
                w.dcs.leases.remove(&id);
                gone |= w.dcs.drop_keys_of(id);
            }
        }
        drop(w);
        if gone {
            self.world.bump();
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// Node `node`'s PostgreSQL over the world's state.
pub struct SimPg {
    pub world: World,
    pub node: usize,
    pub data_dir: PathBuf,
}

impl SimPg {
    fn failed(cmd: &str, why: &str) -> PgError {
        PgError::Command {
            cmd: cmd.to_string(),
            message: why.to_string(),
        }
    }

    /// The node an upstream's address names.
    fn index_of(up: &Upstream) -> Option<usize> {
        let i = up.port.checked_sub(PG_PORT0)? as usize;
        (i < NODES).then_some(i)
    }

    /// Copies node `from`'s data (pg_basebackup, or what pg_rewind leaves), when reachable.
    async fn copy_from(&self, cmd: &str, host: &str, port: u16) -> Result<(), PgError> {
        thaw(&self.world, self.node).await;
        let _ = host;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let from = (port.checked_sub(PG_PORT0).map(usize::from))
            .filter(|&j| j < NODES)
            .ok_or_else(|| Self::failed(cmd, "no such host"))?;
        let mut w = self.world.lock();
        if w.pg[from].proc == Proc::Stopped || !w.links.peer[self.node][from] {
            return Err(PgError::SourceUnreachable {
                cmd: cmd.to_string(),
                message: "could not connect to server: Connection refused".into(),
            });
        }
        if w.pg[self.node].proc != Proc::Stopped {
            return Err(Self::failed(cmd, "target server must be shut down"));
        }
        let data: Data = w.pg[from].data.clone();
        let me = &mut w.pg[self.node];
        me.data = data;
        me.initialized = true;
        me.ctl_primary = false;
        me.crashed = false;
        w.rewinds += 1;
        Ok(())
    }
}

#[async_trait]
impl LocalPostgres for SimPg {
    fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    fn ctl_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
    fn postmaster_pid(&self) -> Option<i32> {
        (self.world.lock().pg[self.node].proc != Proc::Stopped).then_some(1000 + self.node as i32)
    }
    fn data_dir_initialized(&self) -> bool {
        self.world.lock().pg[self.node].initialized
    }
    fn data_dir_empty(&self) -> bool {
        !self.world.lock().pg[self.node].initialized
    }
    async fn controldata(&self) -> Result<BTreeMap<String, String>, PgError> {
        thaw(&self.world, self.node).await;
        let w = self.world.lock();
        let p = &w.pg[self.node];
        let state = match (p.proc, p.ctl_primary, p.crashed) {
            (Proc::Primary, ..) | (_, true, true) => "in production",
            (_, true, false) => "shut down",
            (_, false, true) => "in crash recovery",
            (_, false, false) => "shut down in recovery",
        };
        Ok(BTreeMap::from([
            ("Database system identifier".to_string(), SYSID.to_string()),
            ("Database cluster state".to_string(), state.to_string()),
            (
                "Latest checkpoint's TimeLineID".to_string(),
                p.data.timeline().to_string(),
            ),
            ("Latest checkpoint location".to_string(), lsn(p.data.wal)),
        ]))
    }
    async fn query_status(&self, _timeout: Duration) -> Result<PgStatus, PgError> {
        thaw(&self.world, self.node).await;
        let w = self.world.lock();
        let p = &w.pg[self.node];
        let mut st = PgStatus {
            running: true,
            server_version: Some(150_000),
            timeline: Some(p.data.timeline()),
            sysid: Some(SYSID.into()),
            ..PgStatus::default()
        };
        match p.proc {
            Proc::Stopped => return Err(PgError::Query("connection refused".into())),
            Proc::Primary => {
                st.role = Role::Primary;
                st.wal_flush = Some(p.data.wal);
                let rule = parse_ssn(&p.ssn);
                for (j, r) in w.pg.iter().enumerate() {
                    if r.proc == Proc::Replica && r.upstream == Some(self.node) && r.streaming {
                        let name = format!("n{j}");
                        let sync_state = match &rule {
                            Some(rule) if rule.names.contains(&name) => {
                                if rule.quorum {
                                    "quorum"
                                } else {
                                    "sync"
                                }
                            }
                            _ => "async",
                        };
                        st.replication.push(ReplicationRow {
                            usename: "replicator".into(),
                            application_name: name,
                            state: "streaming".into(),
                            sync_state: sync_state.into(),
                            flush_lsn: Some(r.data.wal),
                            ..ReplicationRow::default()
                        });
                    }
                }
            }
            Proc::Replica => {
                st.role = Role::Replica;
                st.received = Some(p.data.wal);
                st.replayed = Some(p.data.wal);
                st.replication_state = Some(if p.streaming {
                    "streaming".into()
                } else {
                    "in archive recovery".into()
                });
            }
        }
        Ok(st)
    }
    fn write_config(
        &self,
        parameters: &BTreeMap<String, Value>,
        _hba: &[String],
        standby: bool,
        upstream: Option<&Upstream>,
    ) -> Result<(), PgError> {
        let mut w = self.world.lock();
        let p = &mut w.pg[self.node];
        p.ssn = parameters
            .get("synchronous_standby_names")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        p.standby = standby;
        p.upstream = upstream.and_then(Self::index_of);
        Ok(())
    }
    async fn initdb(&self, _extra: &[String]) -> Result<(), PgError> {
        let mut w = self.world.lock();
        let p = &mut w.pg[self.node];
        p.initialized = true;
        p.data = Data::new();
        Ok(())
    }
    async fn create_bootstrap_roles(
        &self,
        _roles: &BootstrapRoles,
        _timeout: Duration,
    ) -> Result<(), PgError> {
        Ok(())
    }
    async fn create_spilo_extension(&self, _timeout: Duration) -> Result<(), PgError> {
        Ok(())
    }
    async fn start(&self) -> Result<(), PgError> {
        thaw(&self.world, self.node).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut w = self.world.lock();
        let p = &mut w.pg[self.node];
        if !p.initialized {
            return Err(Self::failed("pg_ctl", "no data directory"));
        }
        if p.proc == Proc::Stopped {
            p.proc = if p.standby {
                Proc::Replica
            } else {
                Proc::Primary
            };
            p.crashed = false;
            p.ctl_primary = p.proc == Proc::Primary;
        }
        Ok(())
    }
    async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        thaw(&self.world, self.node).await;
        let mut w = self.world.lock();
        let p = &mut w.pg[self.node];
        if p.proc != Proc::Stopped {
            p.crashed = mode == StopMode::Immediate;
            p.ctl_primary = p.proc == Proc::Primary;
            p.proc = Proc::Stopped;
            p.streaming = false;
        }
        Ok(())
    }
    fn kill_postmaster(&self) {
        let mut w = self.world.lock();
        let p = &mut w.pg[self.node];
        if p.proc != Proc::Stopped {
            p.crashed = true;
            p.ctl_primary = p.proc == Proc::Primary;
            p.proc = Proc::Stopped;
            p.streaming = false;
        }
    }
    async fn promote(&self) -> Result<(), PgError> {
        thaw(&self.world, self.node).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut w = self.world.lock();
        let p = &mut w.pg[self.node];
        if p.proc != Proc::Replica {
            return Err(Self::failed(
                "pg_ctl promote",
                "server is not in standby mode",
            ));
        }
        let tl = p.data.timeline() + 1;
        let at = p.data.wal;
        p.data.lineage.push((tl, at));
        p.proc = Proc::Primary;
        p.ctl_primary = true;
        p.standby = false;
        p.streaming = false;
        w.promotions += 1;
        w.promoted[self.node] += 1;
        Ok(())
    }
    async fn checkpoint(&self, _timeout: Duration) -> Result<(), PgError> {
        thaw(&self.world, self.node).await;
        Ok(())
    }
    async fn reload(&self, _timeout: Duration) -> Result<(), PgError> {
        thaw(&self.world, self.node).await;
        // The new primary_conninfo takes effect (the world's tick streams from it).
        Ok(())
    }
    async fn physical_slots(&self, _timeout: Duration) -> Result<Vec<String>, PgError> {
        Ok(Vec::new())
    }
    async fn create_physical_slot(&self, _name: &str, _timeout: Duration) -> Result<(), PgError> {
        Ok(())
    }
    async fn current_setting(&self, name: &str, _timeout: Duration) -> Result<String, PgError> {
        let w = self.world.lock();
        Ok(match name {
            "synchronous_standby_names" => w.pg[self.node].ssn.clone(),
            _ => String::new(),
        })
    }
    fn remove_data_dir(&self) -> Result<(), PgError> {
        let mut w = self.world.lock();
        let p = &mut w.pg[self.node];
        p.initialized = false;
        p.data = Data {
            lineage: vec![(1, 0)],
            wal: 0,
        };
        p.ctl_primary = false;
        p.crashed = false;
        Ok(())
    }
    async fn basebackup(&self, host: &str, port: u16) -> Result<(), PgError> {
        self.copy_from("pg_basebackup", host, port).await
    }
    async fn single_user_recovery(&self) -> Result<(), PgError> {
        self.world.lock().pg[self.node].crashed = false;
        Ok(())
    }
    async fn rewind(&self, host: &str, port: u16) -> Result<String, PgError> {
        self.copy_from("pg_rewind", host, port).await?;
        Ok("Done!".into())
    }
    fn timeline_history(&self, timeline: u64) -> std::io::Result<(String, Option<SystemTime>)> {
        let w = self.world.lock();
        let lineage = &w.pg[self.node].data.lineage;
        let mut text = String::new();
        for pair in lineage.windows(2) {
            if pair[1].0 > timeline {
                break;
            }
            text.push_str(&format!("{}\t{}\tpromote\n", pair[0].0, lsn(pair[1].1)));
        }
        Ok((text, None))
    }
    /// What the extension's fence reads: the lease deadline and the file's validity, moved
    /// from `CLOCK_MONOTONIC` (which the file is written in) onto the simulated clock. A frozen
    /// daemon writes nothing.
    fn write_state_file(&self, _name: &str, body: &[u8]) -> std::io::Result<()> {
        let v: Value = serde_json::from_slice(body).map_err(std::io::Error::other)?;
        let now = Instant::now();
        let written = v["written_monotonic_ns"].as_u64().unwrap_or(0);
        let at = |key: &str| {
            v[key]
                .as_u64()
                .map(|ns| now + Duration::from_nanos(ns.saturating_sub(written)))
        };
        let fence = super::world::Fence {
            deadline: at("lease_deadline_monotonic_ns")
                .filter(|_| v["is_leader"].as_bool() == Some(true)),
            valid_until: at("valid_until_monotonic_ns"),
        };
        let mut w = self.world.lock();
        if !w.frozen[self.node] {
            w.fence[self.node] = fence;
        }
        Ok(())
    }
    fn remove_state_file_leftover(&self, _name: &str) {}
}

impl FenceTarget for SimPg {
    fn running(&self) -> bool {
        LocalPostgres::postmaster_pid(self).is_some()
    }
    fn stop_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // `stop` waits while the daemon is frozen.
            let _ = LocalPostgres::stop(self, StopMode::Immediate).await;
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Peers

/// Peers' state read from their published state (what their REST API would answer), across
/// the world's links.
pub struct SimPeers {
    pub world: World,
    pub node: usize,
    /// Every node's published state, by name.
    pub states: Arc<std::sync::Mutex<BTreeMap<String, (usize, StateRx)>>>,
}

impl PeerSource for SimPeers {
    fn fetch(
        &self,
        members: Vec<(String, String)>,
        _timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Vec<PeerStatus>> + Send + '_>> {
        Box::pin(async move {
            thaw(&self.world, self.node).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            let states = self.states.lock().unwrap().clone();
            let (links, frozen) = {
                let w = self.world.lock();
                (w.links.clone(), w.frozen)
            };
            members
                .iter()
                .map(|(name, _)| match states.get(name) {
                    // A frozen daemon's REST API does not answer either.
                    Some((j, rx)) if links.peer[self.node][*j] && !frozen[*j] => {
                        let s = rx.borrow().clone();
                        let body =
                            spilo_core::api::status::patroni_status(&s, spilo_core::clock::now());
                        parse_peer_status(name, &body)
                    }
                    _ => PeerStatus::unreachable(name),
                })
                .collect()
        })
    }
}
