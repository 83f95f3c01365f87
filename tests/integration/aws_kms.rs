//! `aws:kms:<base64>` values anywhere in the configuration, opened at start with KMS (moto's):
//! the superuser's password sealed in `PATRONI_SUPERUSER_PASSWORD` and the replication
//! password in Spilo's `PGPASSWORD_STANDBY`, the REST API's in `PATRONI_RESTAPI_PASSWORD` (which
//! `spiloctl` opens too). The cluster bootstraps, the test logs in with the
//! plain superuser password (SCRAM: only the opened value was set) and the replica streams
//! with the opened replication password; neither plaintext appears in any log. A sealed value
//! KMS cannot open stops the daemon at start, naming the key and KMS's error code.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use spilo_tests::aws::Moto;
use spilo_tests::bins::bins;
use spilo_tests::node::{REPLICATION_PASSWORD, SUPERUSER_PASSWORD};
use spilo_tests::{note, ClusterOpts, TestCluster};

use crate::{BOOTSTRAP, REPLICATION};

fn seal(env: &[(String, String)], key_id: &str, plain: &str) -> String {
    let mut child = Command::new(&bins().spiloctl)
        .args(["aws", "kms", "encrypt", "--key-id", key_id])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spiloctl aws kms encrypt");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(plain.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "spiloctl aws kms encrypt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("text")
        .trim()
        .to_string()
}

#[test]
fn sealed_passwords_in_the_environment_are_opened_at_start_and_never_logged() {
    let moto = Moto::start();
    let key = moto.boto_stack("print(json.dumps(kms.create_key()['KeyMetadata']['KeyId']))");
    let key_id = key.as_str().expect("key id").to_string();
    let aws_env: Vec<(String, String)> = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_REGION".into(), spilo_tests::aws::REGION.into()),
        ("AWS_ENDPOINT_URL_KMS".into(), moto.endpoint()),
    ];
    let superuser = seal(&aws_env, &key_id, SUPERUSER_PASSWORD);
    let replication = seal(&aws_env, &key_id, REPLICATION_PASSWORD);
    let rest = seal(&aws_env, &key_id, "rest-secret");
    assert!(superuser.starts_with("aws:kms:"), "{superuser}");

    let mut opts = ClusterOpts::named("kms-config");
    // The REST API's password: plain in the file, sealed in PATRONI_RESTAPI_PASSWORD (wins).
    opts.node.rest_auth = Some(("admin".into(), "not-this-one".into()));
    opts.node.env = aws_env.clone();
    opts.node
        .env
        .push(("PATRONI_RESTAPI_PASSWORD".into(), rest.clone()));
    opts.node
        .env
        .push(("PATRONI_SUPERUSER_PASSWORD".into(), superuser.clone()));
    opts.node
        .env
        .push(("PGPASSWORD_STANDBY".into(), replication.clone()));
    let mut c = TestCluster::start(2, opts);
    // The harness logs in over TCP with the plain password: only the opened value works.
    let primary = c.wait_for_primary(BOOTSTRAP);
    c.wait_for_replicas_streaming(REPLICATION);
    c.node(&primary)
        .write_value("kms_rows", "opened")
        .expect("INSERT as the superuser with the opened password");
    for n in &c.nodes {
        let log = n.log_text();
        assert!(
            log.contains("opened 3 aws:kms: value(s)")
                && log.contains("postgresql.authentication.superuser.password"),
            "{}: {log}",
            n.name
        );
        for secret in [SUPERUSER_PASSWORD, REPLICATION_PASSWORD, "rest-secret"] {
            assert!(
                !log.contains(secret),
                "{}'s log holds a plaintext password",
                n.name
            );
        }
    }

    // spiloctl opens the same sealed REST password: a reload through every member's REST API
    // (Basic auth) succeeds.
    let out = Command::new(&bins().spiloctl)
        .arg("-c")
        .arg(&c.nodes[0].config_path)
        .args(["reload", "--force"])
        .envs(aws_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PATRONI_RESTAPI_PASSWORD", &rest)
        .output()
        .expect("spiloctl reload");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && said.matches("Reload request received").count() + said.matches("No changes").count()
                == 2,
        "spiloctl reload with a sealed REST password: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The reload reopened the daemons' sealed values (from what they opened at start: no
    // KMS call needed) and kept running.
    for n in &c.nodes {
        let log = n.log_text();
        assert!(
            log.contains("opened 3 aws:kms: value(s)") && !log.contains("reload refused"),
            "{}: {}",
            n.name,
            n.log_tail(20)
        );
    }
    // … and a wrong REST password (plain) is refused by the daemons.
    let out = Command::new(&bins().spiloctl)
        .arg("-c")
        .arg(&c.nodes[0].config_path)
        .args(["reload", "--force"])
        .envs(aws_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PATRONI_RESTAPI_PASSWORD", "wrong-password")
        .output()
        .expect("spiloctl reload");
    assert!(!out.status.success(), "a wrong REST password was accepted");

    // One changed byte: KMS refuses it and the daemon does not start.
    let mut blob = spilo_aws::kms::parse_secret(&superuser).expect("blob");
    let n = blob.len();
    blob[n - 5] ^= 0x5a;
    let bad = spilo_aws::kms::format_secret(&blob);
    let replica = c.others(&primary)[0].clone();
    let node = c.node_mut(&replica);
    node.rewrite_config(|o| {
        for (k, v) in o.env.iter_mut() {
            if k == "PATRONI_SUPERUSER_PASSWORD" {
                *v = bad.clone();
            }
        }
    });
    let before = node.log_text().len();
    node.restart_daemon();
    let status = node
        .wait_daemon_exit(Duration::from_secs(60))
        .expect("the daemon still runs with a value KMS refuses");
    assert!(!status.success(), "{status}");
    let log = node.log_text();
    let said = &log[before.min(log.len())..];
    assert!(
        said.contains("postgresql.authentication.superuser.password")
            && said.contains("InvalidCiphertextException"),
        "the refusal names neither the key nor KMS's error: {said}"
    );
    note(format!(
        "a sealed value KMS refuses: {}",
        said.lines()
            .find(|l| l.contains("InvalidCiphertextException"))
            .unwrap_or_default()
    ));
}
