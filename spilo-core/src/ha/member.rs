//! The value of this node's `members/<name>` key.

use crate::config::Config;
use crate::dcs::{codec, tags, MemberData};
use crate::ha::state::PgStatus;

/// Build the member value from the local config and the observed PostgreSQL.
/// `promoting` adds Patroni's `checkpoint_after_promote: false`, which tells former primaries
/// not to rewind from us yet.
pub fn member_data(cfg: &Config, pg: &PgStatus, paused: bool, promoting: bool) -> MemberData {
    let running = pg.running;
    let mut m = MemberData {
        conn_url: format!("postgres://{}/postgres", cfg.postgresql.connect_address),
        api_url: format!("http://{}/patroni", cfg.restapi.connect_address),
        state: pg.state.as_str().to_string(),
        role: pg.role.as_str().to_string(),
        version: crate::PATRONI_COMPAT_VERSION.to_string(),
        tags: tags::published(&cfg.tags),
        pause: paused.then_some(true),
        ..MemberData::default()
    };
    if promoting {
        m.extra.insert(
            "checkpoint_after_promote".into(),
            serde_json::Value::Bool(false),
        );
    }
    if running {
        m.pending_restart = pg.pending_restart.then_some(true);
        m.timeline = pg.timeline;
        if pg.role.is_primary() {
            m.xlog_location = pg.wal_flush;
        } else {
            m.xlog_location = pg.wal_position();
            m.replay_lsn = pg.replayed;
            m.receive_lsn = pg.received;
            m.replication_state = pg.replication_state.clone();
        }
    }
    m
}

/// The encoded value.
pub fn encode(m: &MemberData) -> Vec<u8> {
    codec::to_compact_json(m)
}
