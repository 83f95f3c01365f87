//! The background task watching the cluster prefix.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::WatchOptions;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::shared::Shared;

/// Pause before re-creating a failed watch.
const BACKOFF: Duration = Duration::from_millis(500);

/// Starts the watch task; it ends when `stop` resolves, i.e. when its sender is dropped.
pub(crate) fn spawn(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    tokio::spawn(async move {
        let mut broken = false;
        loop {
            let error = tokio::select! {
                _ = &mut stop => return,
                error = watch_once(&shared, broken) => error,
            };
            if !broken {
                tracing::warn!(error = %error, "etcd watch failed, re-creating it");
            } else {
                tracing::debug!(error = %error, "etcd watch still failing");
            }
            broken = true;
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(BACKOFF) => {}
            }
        }
    });
}

/// Creates a watch over the prefix and bumps the counter on its events until it fails; returns
/// why it failed. After a failure (`recovering`), bumps once when the watch is back, since
/// events may have been missed meanwhile.
async fn watch_once(shared: &Shared, recovering: bool) -> String {
    let prefix = shared.prefix.clone().into_bytes();
    let deadline = Instant::now() + shared.retry_timeout;
    let created = shared
        .call("watch", deadline, |mut client, _| {
            let prefix = prefix.clone();
            async move {
                client
                    .watch(prefix, Some(WatchOptions::new().with_prefix()))
                    .await
            }
        })
        .await;
    let mut stream = match created {
        Ok(stream) => stream,
        Err(error) => return error.to_string(),
    };
    if recovering {
        tracing::info!("etcd watch re-created");
        shared.bump();
    }
    loop {
        match stream.message().await {
            Ok(Some(response)) => {
                if response.canceled() {
                    return format!("watch cancelled: {}", response.cancel_reason());
                }
                if response
                    .events()
                    .iter()
                    .any(|e| wakes_the_loop(&shared.prefix, e))
                {
                    shared.bump();
                }
            }
            Ok(None) => return "watch stream ended".to_string(),
            Err(error) => return crate::conn::describe(&error),
        }
    }
}

/// Keys whose change must wake the HA loop early: the leader key (fast failover), the
/// configuration, a failover request and the bootstrap marker. Member keys change with every
/// WAL position and would make every daemon cycle continuously.
const WAKE_KEYS: [&str; 4] = ["leader", "config", "failover", "initialize"];

fn wakes_the_loop(prefix: &str, event: &etcd_client::Event) -> bool {
    let Some(kv) = event.kv() else { return true };
    match kv.key().strip_prefix(prefix.as_bytes()) {
        Some(rel) => WAKE_KEYS.iter().any(|k| k.as_bytes() == rel),
        None => false,
    }
}
