//! The background task watching the keys that wake the HA loop.
//!
//! ZooKeeper watches are one-shot and, with zookeeper-async, are not restored after a
//! reconnection (the client sends no `SetWatches`): each watch is re-armed after it fires, and
//! all of them after every (re)connection, with one bump then since events may have been missed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::Shared;

/// Keys whose change must wake the HA loop early. Member keys change with every WAL position
/// and would make every daemon cycle continuously.
pub(crate) const WAKE_KEYS: [&str; 4] = ["leader", "config", "failover", "initialize"];

/// Pause before trying again to arm watches that could not be armed.
const BACKOFF: Duration = Duration::from_millis(500);

/// Starts the watch task; it ends when `stop` resolves, i.e. when its sender is dropped.
pub(crate) fn spawn(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    tokio::spawn(async move {
        let (fired_tx, mut fired) = mpsc::unbounded_channel::<usize>();
        let mut epoch = shared.epoch.subscribe();
        let mut arm_all = true;
        let mut first = true;
        let mut pending: BTreeSet<usize> = BTreeSet::new();
        loop {
            if arm_all || !pending.is_empty() {
                let keys: Vec<usize> = if arm_all {
                    (0..WAKE_KEYS.len()).collect()
                } else {
                    pending.iter().copied().collect()
                };
                match arm(&shared, &keys, &fired_tx).await {
                    Ok(()) => {
                        // A change between a watch firing and its re-arming fires nothing: bump
                        // once more after every re-arm so the loop reads what it may have missed.
                        if !first {
                            tracing::debug!("ZooKeeper watches re-armed");
                            shared.bump();
                        }
                        arm_all = false;
                        first = false;
                        pending.clear();
                    }
                    Err(error) => {
                        tracing::debug!(error = %error, "cannot arm ZooKeeper watches");
                        arm_all = true;
                        first = false;
                        tokio::select! {
                            _ = &mut stop => return,
                            _ = tokio::time::sleep(BACKOFF) => {}
                        }
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                key = fired.recv() => {
                    let Some(key) = key else { return };
                    pending.insert(key);
                    while let Ok(key) = fired.try_recv() {
                        pending.insert(key);
                    }
                    shared.bump();
                }
                changed = epoch.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    arm_all = true;
                }
            }
        }
    });
}

/// Sets an exists watch on each of `keys` (indexes into [`WAKE_KEYS`]).
async fn arm(
    shared: &Shared,
    keys: &[usize],
    fired: &mpsc::UnboundedSender<usize>,
) -> Result<(), spilo_sdk::DcsError> {
    let op = "watch";
    shared
        .bounded(op, async {
            let client = shared.client(op).await?;
            shared.ensure_auth(op, &client).await?;
            for &key in keys {
                let path = shared.path(WAKE_KEYS[key]);
                let fired = fired.clone();
                client
                    .zk
                    .exists_w(&path, move |_| {
                        let _ = fired.send(key);
                    })
                    .await
                    .map_err(|e| crate::map_err(op, e))?;
            }
            client.mark_alive();
            Ok(())
        })
        .await
}
