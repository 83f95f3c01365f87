//! The harness's own pieces that need no spilo: etcd stop/start on the same ports and data,
//! and PostgreSQL run as postgres through the SQL helpers.

use std::process::Stdio;
use std::time::Duration;

use spilo_tests::bins::PG_BIN_DIR;
use spilo_tests::pg::{simple_query, PgTarget};
use spilo_tests::util::{chown_postgres, postgres_command, run_with_timeout};
use spilo_tests::{wait_for, Etcd, TempRoot};

#[test]
fn etcd_stops_and_returns_with_its_data() {
    let mut e = Etcd::start();
    e.etcdctl(&["put", "/service/selftest/leader", "node9"])
        .expect("put");
    assert_eq!(
        e.get("/service/selftest/leader").expect("get").as_deref(),
        Some("node9")
    );
    let port = e.client_port;
    e.stop();
    assert!(
        e.get("/service/selftest/leader").is_err(),
        "etcd answers after stop()"
    );
    e.start_again();
    assert_eq!(e.client_port, port);
    assert_eq!(
        e.get("/service/selftest/leader")
            .expect("get after restart")
            .as_deref(),
        Some("node9")
    );
    assert_eq!(e.get("/service/selftest/none").expect("get missing"), None);
}

#[test]
fn postgres_runs_as_postgres_and_answers_sql() {
    let root = TempRoot::new("spilo-selftest-");
    let dir = root.path().join("pg");
    std::fs::create_dir(&dir).expect("mkdir");
    chown_postgres(&dir);
    let data = dir.join("data");
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, "selftest-secret\n").expect("write pwfile");
    chown_postgres(&pwfile);
    let bin = std::path::Path::new(PG_BIN_DIR);
    let mut initdb = postgres_command(&bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
        ])
        .arg(format!("--pwfile={}", pwfile.display()));
    let out = run_with_timeout(initdb, Duration::from_secs(120)).expect("initdb");
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = spilo_tests::util::free_port();
    let mut start = postgres_command(&bin.join("pg_ctl"));
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("pg.log"))
        .arg("-o")
        .arg(format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            dir.display()
        ))
        .args(["-w", "start"])
        .stdout(Stdio::null());
    let out = run_with_timeout(start, Duration::from_secs(60)).expect("pg_ctl start");
    // Stop it whatever happens next.
    struct Stop(std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let mut c = postgres_command(&std::path::Path::new(PG_BIN_DIR).join("pg_ctl"));
            c.arg("-D").arg(&self.0).args(["stop", "-m", "immediate"]);
            let _ = run_with_timeout(c, Duration::from_secs(30));
        }
    }
    let _stop = Stop(data.clone());
    assert!(
        out.status.success(),
        "pg_ctl start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = PgTarget {
        port,
        user: "postgres".into(),
        password: "selftest-secret".into(),
        dbname: "postgres".into(),
    };
    let rows = wait_for("SELECT 1 over TCP", Duration::from_secs(30), || {
        simple_query(
            &t,
            "SELECT 1 AS one, NULL::text AS nothing; SELECT current_user",
            Duration::from_secs(5),
        )
    });
    assert_eq!(
        rows,
        vec![
            vec![Some("1".to_string()), None],
            vec![Some("postgres".to_string())]
        ]
    );
    let bad = PgTarget {
        password: "wrong".into(),
        ..t
    };
    let e = simple_query(&bad, "SELECT 1", Duration::from_secs(5)).unwrap_err();
    assert!(e.contains("password authentication failed"), "{e}");
}
