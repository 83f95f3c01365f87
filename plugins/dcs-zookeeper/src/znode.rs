//! Znode helpers: Patroni's `makepath` create, and reads that treat a missing znode as absent.

use zookeeper_client::{Acl, Acls, CreateMode, Error as ZkError, Stat};

use crate::client::Client;

/// Creates the missing ancestors of `path` (not `path` itself) as persistent empty znodes.
pub(crate) async fn ensure_parents(
    client: &Client,
    path: &str,
    acl: &[Acl],
) -> Result<(), ZkError> {
    let options = CreateMode::Persistent.with_acls(Acls::new(acl));
    for (i, c) in path.char_indices().skip(1) {
        if c != '/' {
            continue;
        }
        match client.zk.create(&path[..i], &[], &options).await {
            Ok(_) | Err(ZkError::NodeExists) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates `path` with `mode`, and its ancestors when missing (`makepath`).
pub(crate) async fn create_path(
    client: &Client,
    path: &str,
    data: &[u8],
    mode: CreateMode,
    acl: &[Acl],
) -> Result<(), ZkError> {
    let options = mode.with_acls(Acls::new(acl));
    match client.zk.create(path, data, &options).await {
        Err(ZkError::NoNode) => {
            ensure_parents(client, path, acl).await?;
            client.zk.create(path, data, &options).await.map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

/// Data and stat of `path`, `None` when it does not exist.
pub(crate) async fn read(client: &Client, path: &str) -> Result<Option<(Vec<u8>, Stat)>, ZkError> {
    match client.zk.get_data(path).await {
        Ok(found) => Ok(Some(found)),
        Err(ZkError::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Children of `path`, empty when it does not exist.
pub(crate) async fn children(client: &Client, path: &str) -> Result<Vec<String>, ZkError> {
    match client.zk.list_children(path).await {
        Ok(children) => Ok(children),
        Err(ZkError::NoNode) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
