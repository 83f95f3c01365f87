//! The background task watching the keys that wake the HA loop.
//!
//! Each key of [`WAKE_KEYS`] gets a *persistent* watch (ZooKeeper 3.6+ `addWatch`): it fires on
//! every creation, data change and deletion of the znode and stays armed, so no change can
//! slip by between a watch firing and its re-arming. The library restores the watches after a
//! reconnection of the same session, but changes made while disconnected are not reported
//! (ZOOKEEPER-4698), so the counter is bumped once on every reconnection. When the session ends
//! (expired, closed, replaced), the watches are armed again on the current client and the
//! counter bumped, since changes may have been missed meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::oneshot;
use zookeeper_client::{AddWatchMode, EventType, PersistentWatcher, SessionState, WatchedEvent};

use crate::shared::{map_err, Shared};

/// Keys whose change must wake the HA loop early. Member keys change with every WAL position
/// and would make every daemon cycle continuously.
pub(crate) const WAKE_KEYS: [&str; 4] = ["leader", "config", "failover", "initialize"];

/// Pause before trying again to arm watches that could not be armed.
const BACKOFF: Duration = Duration::from_millis(500);

/// Starts the watch task; it ends when `stop` resolves, i.e. when its sender is dropped.
pub(crate) fn spawn(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let mut watchers = match arm(&shared).await {
                Ok(watchers) => watchers,
                Err(error) => {
                    tracing::debug!(error = %error, "cannot arm ZooKeeper watches");
                    first = false;
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(BACKOFF) => {}
                    }
                    continue;
                }
            };
            if !first {
                tracing::debug!("ZooKeeper watches armed again");
                shared.bump();
            }
            first = false;
            loop {
                let event = tokio::select! {
                    _ = &mut stop => return,
                    event = next_event(&mut watchers) => event,
                };
                match (event.event_type, event.session_state) {
                    (EventType::Session, SessionState::Disconnected) => {}
                    (EventType::Session, state) if state.is_terminated() => break,
                    // Reconnected (changes while disconnected are not reported) or a key
                    // changed.
                    _ => shared.bump(),
                }
            }
        }
    });
}

/// Sets a persistent watch on every key of [`WAKE_KEYS`], on the current client.
async fn arm(shared: &Shared) -> Result<Vec<PersistentWatcher>, spilo_sdk::DcsError> {
    let op = "watch";
    shared
        .bounded(op, async {
            let client = shared.client(op).await?;
            let mut watchers = Vec::with_capacity(WAKE_KEYS.len());
            for key in WAKE_KEYS {
                let watcher = client
                    .zk
                    .watch(&shared.path(key), AddWatchMode::Persistent)
                    .await
                    .map_err(|e| map_err(op, e))?;
                watchers.push(watcher);
            }
            Ok(watchers)
        })
        .await
}

/// The next event of any of `watchers`. (Their receivers are channels: an event is never
/// lost when this future is dropped.)
async fn next_event(watchers: &mut [PersistentWatcher]) -> WatchedEvent {
    type Pending<'a> = Pin<Box<dyn Future<Output = WatchedEvent> + Send + 'a>>;
    let mut pending: Vec<Pending<'_>> = watchers
        .iter_mut()
        .map(|w| Box::pin(w.changed()) as Pending<'_>)
        .collect();
    std::future::poll_fn(|cx| {
        for fut in pending.iter_mut() {
            if let Poll::Ready(event) = fut.as_mut().poll(cx) {
                return Poll::Ready(event);
            }
        }
        Poll::Pending
    })
    .await
}
