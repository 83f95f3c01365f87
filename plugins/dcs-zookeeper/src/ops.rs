//! The [`Dcs`] operations of [`ZkDcs`], each bounded by `retry_timeout`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use spilo_sdk::{Cas, Dcs, DcsError, Entry, SessionInfo, Snapshot};
use tokio::sync::watch;
use zookeeper_client::{Acls, CreateMode, Error as ZkError, MultiWriteError};

use crate::client::close_session;
use crate::shared::map_err;
use crate::znode::{children, create_path, read};
use crate::ZkDcs;

/// Keys below the prefix that are directories of further keys.
const DIRECTORIES: [&str; 2] = ["members", "optime"];

#[async_trait]
impl Dcs for ZkDcs {
    fn backend(&self) -> &'static str {
        "zookeeper"
    }

    async fn snapshot(&self) -> Result<Snapshot, DcsError> {
        let op = "snapshot";
        let shared = &self.shared;
        shared
            .bounded(op, async {
                let client = self.shared.client(op).await?;
                let err = |e| map_err(op, e);
                // Reads are served by the connected server, which may lag behind the leader:
                // `sync` first, so the snapshot includes every write made before it started.
                match client.zk.sync(&shared.prefix_path()).await {
                    Ok(()) | Err(ZkError::NoNode) => {}
                    Err(e) => return Err(err(e)),
                }
                let top = children(&client, &shared.prefix_path())
                    .await
                    .map_err(err)?;
                let mut keys = Vec::new();
                for child in top {
                    if child.starts_with('.') {
                        continue;
                    }
                    if DIRECTORIES.contains(&child.as_str()) {
                        let below = children(&client, &shared.path(&child)).await.map_err(err)?;
                        keys.extend(below.into_iter().map(|c| format!("{child}/{c}")));
                    } else {
                        keys.push(child);
                    }
                }
                let mut reads = tokio::task::JoinSet::new();
                for key in keys {
                    let client = client.clone();
                    let path = shared.path(&key);
                    reads.spawn(async move { (key, read(&client, &path).await) });
                }
                let ours = client.session_id();
                let mut snapshot = Snapshot::default();
                while let Some(joined) = reads.join_next().await {
                    let (key, found) = joined.map_err(|e| DcsError::Refused {
                        op,
                        message: format!("read task failed: {e}"),
                    })?;
                    let Some((value, stat)) = found.map_err(err)? else {
                        continue;
                    };
                    snapshot.revision = snapshot.revision.max(stat.mzxid);
                    snapshot.entries.push(Entry {
                        key,
                        value,
                        version: i64::from(stat.version),
                        owned_by_us: ours != 0 && stat.ephemeral_owner == ours,
                        created: Some(stat.czxid).filter(|c| *c > 0),
                    });
                }
                Ok(snapshot)
            })
            .await
    }

    async fn keepalive(&self) -> Result<SessionInfo, DcsError> {
        let op = "keepalive";
        self.shared.bounded(op, self.shared.keepalive(op)).await
    }

    async fn put_member(&self, value: &[u8]) -> Result<(), DcsError> {
        let op = "put_member";
        let shared = &self.shared;
        shared
            .bounded(op, async {
                let client = self.shared.ensure_session(op).await?;
                let path = shared.path(&format!("members/{}", shared.member));
                let err = |e| map_err(op, e);
                for _ in 0..4 {
                    match client.zk.check_stat(&path).await.map_err(err)? {
                        None => {
                            match create_path(
                                &client,
                                &path,
                                value,
                                CreateMode::Ephemeral,
                                &shared.acl,
                            )
                            .await
                            {
                                Ok(()) => return Ok(()),
                                Err(ZkError::NodeExists) => continue,
                                Err(e) => return Err(err(e)),
                            }
                        }
                        Some(stat) if stat.ephemeral_owner == client.session_id() => {
                            match client.zk.set_data(&path, value, None).await {
                                Ok(_) => return Ok(()),
                                Err(ZkError::NoNode) => continue,
                                Err(e) => return Err(err(e)),
                            }
                        }
                        Some(stat) => {
                            // A stale znode of an older session (or a persistent one).
                            tracing::debug!(
                                owner = stat.ephemeral_owner,
                                "replacing a member znode not bound to our session"
                            );
                            match client.zk.delete(&path, Some(stat.version)).await {
                                Ok(()) | Err(ZkError::NoNode) | Err(ZkError::BadVersion) => {}
                                Err(e) => return Err(err(e)),
                            }
                        }
                    }
                }
                Err(DcsError::Refused {
                    op,
                    message: "member znode kept changing".to_string(),
                })
            })
            .await
    }

    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        let op = "acquire_leader";
        self.shared
            .bounded(op, async {
                let client = self.shared.ensure_session(op).await?;
                self.create_leader(op, &client).await
            })
            .await
    }

    async fn reattach_leader(&self) -> Result<bool, DcsError> {
        let op = "reattach_leader";
        let shared = &self.shared;
        shared
            .bounded(op, async {
                let client = self.shared.ensure_session(op).await?;
                let path = shared.path("leader");
                let err = |e| map_err(op, e);
                match read(&client, &path).await.map_err(err)? {
                    None => self.create_leader(op, &client).await,
                    Some((data, _)) if data != shared.member.as_bytes() => Ok(false),
                    Some((_, stat)) if stat.ephemeral_owner == client.session_id() => Ok(true),
                    Some((_, stat)) => {
                        // Delete the znode of the old session and create ours in one
                        // transaction: there is no instant without a leader key in which
                        // another member could take it.
                        let mut multi = client.zk.new_multi_writer();
                        let options = CreateMode::Ephemeral.with_acls(Acls::new(&shared.acl));
                        multi.add_delete(&path, Some(stat.version)).map_err(err)?;
                        multi
                            .add_create(&path, shared.member.as_bytes(), &options)
                            .map_err(err)?;
                        match multi.commit().await {
                            Ok(_) => Ok(true),
                            // Changed or gone meanwhile: look again on the next cycle.
                            Err(MultiWriteError::OperationFailed {
                                source: ZkError::BadVersion | ZkError::NoNode,
                                ..
                            }) => Ok(false),
                            Err(e) => Err(err(ZkError::from(e))),
                        }
                    }
                }
            })
            .await
    }

    async fn release_leader(&self) -> Result<bool, DcsError> {
        let op = "release_leader";
        let shared = &self.shared;
        shared
            .bounded(op, async {
                let client = self.shared.client(op).await?;
                let path = shared.path("leader");
                let err = |e| map_err(op, e);
                match read(&client, &path).await.map_err(err)? {
                    Some((data, stat)) if data == shared.member.as_bytes() => {
                        match client.zk.delete(&path, Some(stat.version)).await {
                            Ok(()) => Ok(true),
                            Err(ZkError::NoNode) | Err(ZkError::BadVersion) => Ok(false),
                            Err(e) => Err(err(e)),
                        }
                    }
                    _ => Ok(false),
                }
            })
            .await
    }

    async fn put(&self, key: &str, value: &[u8], cas: Cas) -> Result<bool, DcsError> {
        let op = "put";
        let shared = &self.shared;
        let path = shared.path(key);
        shared
            .bounded(op, async {
                let client = self.shared.client(op).await?;
                let err = |e| map_err(op, e);
                let persistent = CreateMode::Persistent;
                match cas {
                    Cas::Any => {
                        for _ in 0..3 {
                            match client.zk.set_data(&path, value, None).await {
                                Ok(_) => return Ok(true),
                                Err(ZkError::NoNode) => {}
                                Err(e) => return Err(err(e)),
                            }
                            match create_path(&client, &path, value, persistent, &shared.acl).await
                            {
                                Ok(()) => return Ok(true),
                                Err(ZkError::NodeExists) => {}
                                Err(e) => return Err(err(e)),
                            }
                        }
                        Err(DcsError::Refused {
                            op,
                            message: "key kept appearing and vanishing".to_string(),
                        })
                    }
                    Cas::Absent => {
                        match create_path(&client, &path, value, persistent, &shared.acl).await {
                            Ok(()) => Ok(true),
                            Err(ZkError::NodeExists) => Ok(false),
                            Err(e) => Err(err(e)),
                        }
                    }
                    Cas::Version(version) => {
                        let Ok(version) = i32::try_from(version) else {
                            return Ok(false);
                        };
                        match client.zk.set_data(&path, value, Some(version)).await {
                            Ok(_) => Ok(true),
                            Err(ZkError::NoNode) | Err(ZkError::BadVersion) => Ok(false),
                            Err(e) => Err(err(e)),
                        }
                    }
                }
            })
            .await
    }

    async fn delete(&self, key: &str, cas: Cas) -> Result<bool, DcsError> {
        let op = "delete";
        let shared = &self.shared;
        let path = shared.path(key);
        shared
            .bounded(op, async {
                let client = self.shared.client(op).await?;
                let err = |e| map_err(op, e);
                match cas {
                    Cas::Any => match client.zk.delete(&path, None).await {
                        Ok(()) | Err(ZkError::NoNode) => Ok(true),
                        Err(e) => Err(err(e)),
                    },
                    Cas::Absent => Ok(client.zk.check_stat(&path).await.map_err(err)?.is_none()),
                    Cas::Version(version) => {
                        let Ok(version) = i32::try_from(version) else {
                            return Ok(false);
                        };
                        match client.zk.delete(&path, Some(version)).await {
                            Ok(()) => Ok(true),
                            Err(ZkError::NoNode) | Err(ZkError::BadVersion) => Ok(false),
                            Err(e) => Err(err(e)),
                        }
                    }
                }
            })
            .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    fn set_ttl(&self, ttl: Duration) {
        self.shared.ttl_ms.store(
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    async fn close(&self) -> Result<(), DcsError> {
        let op = "close";
        let shared = &self.shared;
        let taken = {
            let _guard = shared.create_lock.lock().await;
            shared
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
        };
        shared.close_retired().await;
        let Some(client) = taken else {
            return Ok(());
        };
        shared
            .bounded(op, async {
                close_session(&shared.spec, client)
                    .await
                    .map_err(|e| map_err(op, e))
            })
            .await
    }
}
