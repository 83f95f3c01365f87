//! SQL over TCP with tokio-postgres (a private current-thread runtime per call, so the
//! harness stays synchronous).

use std::time::Duration;

use tokio_postgres::{NoTls, SimpleQueryMessage};

/// One result row: every column as text, `None` for NULL.
pub type Row = Vec<Option<String>>;

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct PgTarget {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Role.
    pub user: String,
    /// Password.
    pub password: String,
    /// Database.
    pub dbname: String,
}

/// The superuser on `port` (a node's PostgreSQL, or a proxy in front of one).
pub fn superuser(port: u16) -> PgTarget {
    PgTarget {
        port,
        user: "postgres".into(),
        password: crate::SUPERUSER_PASSWORD.into(),
        dbname: "postgres".into(),
    }
}

/// On a new connection through `port`: (in recovery, the server's port).
pub fn where_am_i(port: u16, timeout: Duration) -> Result<(bool, u16), String> {
    let rows = simple_query(
        &superuser(port),
        "SELECT pg_is_in_recovery(), inet_server_port()",
        timeout,
    )?;
    let row = rows.first().ok_or("no row")?;
    let rec = row.first().cloned().flatten().ok_or("NULL recovery")? == "t";
    let p = row
        .get(1)
        .cloned()
        .flatten()
        .ok_or("NULL port")?
        .parse()
        .map_err(|e| format!("port: {e}"))?;
    Ok((rec, p))
}

/// Runs `sql` (one or more statements, simple query protocol) and returns the rows of every
/// statement in order. Connect and execution together are bounded by `timeout`.
pub fn simple_query(target: &PgTarget, sql: &str, timeout: Duration) -> Result<Vec<Row>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async {
        match tokio::time::timeout(timeout, run(target, sql, timeout)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer from 127.0.0.1:{} within {timeout:?}",
                target.port
            )),
        }
    })
}

async fn run(target: &PgTarget, sql: &str, timeout: Duration) -> Result<Vec<Row>, String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(target.port)
        .user(&target.user)
        .password(&target.password)
        .dbname(&target.dbname)
        .application_name("spilo-tests")
        .connect_timeout(timeout);
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .map_err(|e| format!("connect 127.0.0.1:{}: {}", target.port, describe(&e)))?;
    let conn = tokio::spawn(conn);
    let res = client.simple_query(sql).await;
    drop(client);
    conn.abort();
    let msgs = res.map_err(|e| format!("query on 127.0.0.1:{}: {}", target.port, describe(&e)))?;
    let mut rows = Vec::new();
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    Ok(rows)
}

/// The server's message (and SQLSTATE) when there is one, else the error chain.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Quotes `s` as an SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Checks that `name` is a plain lower-case identifier (tests pass table names as such).
pub fn ident(name: &str) -> &str {
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "table name {name:?} must be a plain lower-case identifier"
    );
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(ident("t_1"), "t_1");
    }

    #[test]
    #[should_panic]
    fn bad_ident() {
        ident("x; drop table y");
    }
}
