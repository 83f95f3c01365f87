//! What runs on each node of the stack: the node configuration (the stack's settings laid over
//! the user's own YAML) and the user data that installs PostgreSQL 15 and spilo, mounts the
//! data volume, writes the configuration and starts the daemon as the `postgres` user, then
//! signals CloudFormation.
//!
//! Values only the instance knows (its address, its id, where PostgreSQL's binaries are) are
//! `@NAME@` placeholders the user data replaces at boot; values only the stack knows (region,
//! bucket, key, passwords) are `${Name}` references CloudFormation's `Fn::Sub` fills.

use serde_json::{json, Value};
use serde_yaml::{Mapping, Value as Yaml};

use super::settings::{Invalid, Settings};
use super::{bucket_name, elb_names, key_arn, LIFECYCLE_HOOK};

/// The data volume's device name in the launch template (`/dev/nvme1n1` on Nitro instances).
pub const DATA_DEVICE: &str = "/dev/sdf";
/// Where the data volume is mounted.
pub const DATA_MOUNT: &str = "/data";

/// The node configuration the stack's settings start from when none is given.
const BASE: &str = r#"
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 33554432
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_connections: 200
        max_wal_senders: 10
        max_replication_slots: 10
  initdb:
  - encoding: UTF8
  - data-checksums
  pg_hba:
  - local all all peer
  - host all all 127.0.0.1/32 scram-sha-256
  - host replication replicator @VPC_CIDR@ scram-sha-256
  - host all all @VPC_CIDR@ scram-sha-256
"#;

fn key(k: &str) -> Yaml {
    Yaml::String(k.to_string())
}

/// `map[k]`, made a mapping if it is missing or not one.
fn section<'a>(map: &'a mut Mapping, k: &str) -> &'a mut Mapping {
    let slot = map
        .entry(key(k))
        .or_insert_with(|| Yaml::Mapping(Mapping::new()));
    if !slot.is_mapping() {
        *slot = Yaml::Mapping(Mapping::new());
    }
    match slot {
        Yaml::Mapping(m) => m,
        _ => unreachable!("made a mapping above"),
    }
}

fn set(map: &mut Mapping, k: &str, v: impl Into<Yaml>) {
    map.insert(key(k), v.into());
}

/// Fills what `from` has and `into` lacks, recursively (the user's values win).
fn fill(into: &mut Mapping, from: &Mapping) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (None, _) => {
                into.insert(k.clone(), v.clone());
            }
            (Some(Yaml::Mapping(a)), Yaml::Mapping(b)) => fill(a, b),
            _ => {}
        }
    }
}

/// The node configuration, with `@…@` placeholders for what the stack and the instance fill.
pub fn config(s: &Settings) -> Result<Mapping, Invalid> {
    let mut cfg = match &s.node_config {
        Some(text) => match serde_yaml::from_str::<Yaml>(text) {
            Ok(Yaml::Mapping(m)) => m,
            Ok(Yaml::Null) => Mapping::new(),
            Ok(_) => {
                return Err(Invalid {
                    field: "node_config".into(),
                    problem: "not a YAML mapping of node settings".into(),
                })
            }
            Err(e) => {
                return Err(Invalid {
                    field: "node_config".into(),
                    problem: e.to_string(),
                })
            }
        },
        None => Mapping::new(),
    };
    let base: Mapping = serde_yaml::from_str(BASE).expect("the built-in base configuration parses");
    fill(&mut cfg, &base);
    set(&mut cfg, "scope", s.scope.as_str());
    set(&mut cfg, "name", "@INSTANCE_ID@");
    let api = section(&mut cfg, "restapi");
    set(api, "listen", "0.0.0.0:8008");
    set(api, "connect_address", "@IP@:8008");
    // The stack names etcd; the user's TLS files and credentials for it stay.
    let etcd = section(&mut cfg, "etcd3");
    for k in ["hosts", "host", "srv", "srv_suffix", "url", "proxy"] {
        etcd.remove(key(k));
    }
    match &s.etcd_srv {
        Some(domain) => {
            set(etcd, "srv", domain.as_str());
            if let Some(sfx) = &s.etcd_srv_suffix {
                set(etcd, "srv_suffix", sfx.as_str());
            }
        }
        None => set(
            etcd,
            "hosts",
            Yaml::Sequence(s.etcd_hosts.iter().map(|h| key(h)).collect()),
        ),
    }
    cfg.remove(key("etcd"));
    cfg.remove(key("zookeeper"));
    let pg = section(&mut cfg, "postgresql");
    set(pg, "listen", "0.0.0.0:5432");
    set(pg, "connect_address", "@IP@:5432");
    set(pg, "data_dir", format!("{DATA_MOUNT}/pgdata"));
    set(pg, "bin_dir", "@BIN_DIR@");
    set(pg, "pgpass", format!("{DATA_MOUNT}/pgpass"));
    let auth = section(pg, "authentication");
    let su = section(auth, "superuser");
    set(su, "username", "postgres");
    set(su, "password", "@SUPERUSER_PASSWORD@");
    let rep = section(auth, "replication");
    set(rep, "username", "replicator");
    set(rep, "password", "@REPLICATION_PASSWORD@");
    let store = section(&mut cfg, "storage");
    store.clear();
    set(store, "type", "s3");
    set(store, "bucket", "@BUCKET@");
    set(store, "region", "@REGION@");
    set(store, "sse", "aws:kms");
    set(store, "sse_kms_key_id", "@KEY_ARN@");
    let (primary, _) = elb_names(&s.scope);
    let mut elb = Mapping::new();
    set(&mut elb, "type", "elb");
    set(&mut elb, "primary_elb", primary.as_str());
    set(&mut elb, "replica_elb", "@REPLICA_ELB@");
    set(&mut elb, "region", "@REGION@");
    set(
        &mut cfg,
        "load_balancers",
        Yaml::Sequence(vec![Yaml::Mapping(elb)]),
    );
    // The group's termination hook: hand over, then complete it (see spilo's `aws:` section).
    let aws = section(&mut cfg, "aws");
    aws.clear();
    set(aws, "lifecycle_hook", LIFECYCLE_HOOK);
    set(aws, "auto_scaling_group", s.scope.as_str());
    Ok(cfg)
}

/// The node configuration as the user data writes it: YAML text for `Fn::Sub` (a `${` of the
/// user's own escaped), stack values as `${…}`, instance values still `@…@`.
pub fn config_text(s: &Settings) -> Result<String, Invalid> {
    let cfg = config(s)?;
    let text = serde_yaml::to_string(&Yaml::Mapping(cfg)).map_err(|e| Invalid {
        field: "node_config".into(),
        problem: e.to_string(),
    })?;
    let mut text = text.replace("${", "${!");
    for (placeholder, reference) in [
        ("@SUPERUSER_PASSWORD@", "${SuperuserPassword}"),
        ("@REPLICATION_PASSWORD@", "${ReplicationPassword}"),
        ("@BUCKET@", "${BucketName}"),
        ("@KEY_ARN@", "${KeyArn}"),
        ("@REGION@", "${AWS::Region}"),
        ("@VPC_CIDR@", "${VpcCidr}"),
    ] {
        text = text.replace(placeholder, reference);
    }
    Ok(text)
}

/// EC2 takes 16 KB of user data (before base64).
pub const MAX_USER_DATA: usize = 16 * 1024;

/// Refuses a node configuration that would make the user data longer than EC2 takes, counting
/// the longest values the stack may fill in (passwords of 2048 characters, a bucket name, a key
/// ARN, the stack's name and region).
pub fn check_user_data_size(s: &Settings, config: &str) -> Result<(), Invalid> {
    let script = match &user_data(s, config)["Fn::Sub"][0] {
        Value::String(t) => t.len(),
        _ => 0,
    };
    let worst = script + 2 * 2048 + 63 + 2048 / 8 + 128 + 32;
    if worst > MAX_USER_DATA {
        return Err(Invalid {
            field: "node_config".into(),
            problem: format!(
                "the user data could be {worst} bytes with it; EC2 takes {MAX_USER_DATA}: make the node configuration shorter"
            ),
        });
    }
    Ok(())
}

/// The user data around `config` (from [`config_text`]): `{"Fn::Sub": [script, variables]}`.
pub fn user_data(s: &Settings, config: &str) -> Value {
    let (_, replica) = elb_names(&s.scope);
    let script = format!(
        r#"#!/bin/bash
# spilo node of stack ${{AWS::StackName}} (cluster {scope}), generated by spiloctl aws template.
set -euo pipefail
exec >>/var/log/spilo-init.log 2>&1
echo "spilo init: $(date -u +%FT%TZ)"
# The instance metadata, IMDSv2 only (a token for each read).
imds() {{
  local t
  t=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token) &&
    curl -sf -H "X-aws-ec2-metadata-token: $t" "http://169.254.169.254/latest/meta-data/$1"
}}
signal() {{
  # The group's creation policy waits for one node to say it started (a failure is said at
  # once, so the stack does not wait its 30 minutes; before the AWS CLI is installed on Debian
  # there is nothing to say it with).
  local status=FAILURE id
  [ "$1" = 0 ] && status=SUCCESS
  id=$(imds instance-id || echo unknown)
  if command -v cfn-signal >/dev/null; then
    cfn-signal -e "$1" --stack '${{AWS::StackName}}' --resource AutoScalingGroup --region '${{AWS::Region}}' || true
  elif command -v aws >/dev/null; then
    aws cloudformation signal-resource --region '${{AWS::Region}}' --stack-name '${{AWS::StackName}}' \
      --logical-resource-id AutoScalingGroup --unique-id "$id" --status "$status" || true
  fi
}}
trap 'signal 1' ERR
IP=$(imds local-ipv4)
INSTANCE_ID=$(imds instance-id)

# PostgreSQL 15 without a default cluster (spilo makes its own), curl, the AWS CLI.
if command -v apt-get >/dev/null; then
  mkdir -p /etc/postgresql-common/createcluster.d
  echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/spilo.conf
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q postgresql-15 curl awscli
  BIN_DIR=/usr/lib/postgresql/15/bin
else
  dnf install -y -q postgresql15-server postgresql15-contrib
  BIN_DIR=$(dirname "$(command -v pg_ctl)")
fi

# The data volume (the launch template's {device}): on Nitro instances the EBS disk that is not
# the root disk (instance-store disks have other names), else /dev/xvdf or {device}.
ROOT_DISK=$(lsblk -no PKNAME "$(findmnt -no SOURCE /)" 2>/dev/null | head -n1 || true)
DEV=""
for d in /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_*; do
  case "$d" in *-part*) continue ;; esac
  [ -e "$d" ] || continue
  real=$(readlink -f "$d")
  [ "$(basename "$real")" = "$ROOT_DISK" ] && continue
  DEV=$real
  break
done
if [ -z "$DEV" ]; then
  for d in /dev/xvdf {device}; do if [ -b "$d" ]; then DEV=$d; break; fi; done
fi
if [ -z "$DEV" ]; then echo "no data volume found"; false; fi
mkdir -p {mount}
blkid "$DEV" >/dev/null || mkfs.ext4 -q -L spilo-data "$DEV"
grep -q ' {mount} ' /etc/fstab || echo "LABEL=spilo-data {mount} ext4 defaults,noatime,nofail 0 2" >>/etc/fstab
mountpoint -q {mount} || mount {mount} || mount "$DEV" {mount}
chown postgres:postgres {mount}
chmod 700 {mount}

# spilo itself: bin/spilo, bin/spiloctl, lib/spilo/ (the plugins).
mkdir -p /opt/spilo
case '${{SpiloPackageUrl}}' in
  s3://*) aws s3 cp --region '${{AWS::Region}}' '${{SpiloPackageUrl}}' /tmp/spilo.tar.gz ;;
  *) curl -sfL -o /tmp/spilo.tar.gz '${{SpiloPackageUrl}}' ;;
esac
tar -xzf /tmp/spilo.tar.gz -C /opt/spilo
/opt/spilo/bin/spilo --version

mkdir -p /etc/spilo
cat >/etc/spilo/node.yml <<'SPILO_NODE_CONFIG'
{config}SPILO_NODE_CONFIG
sed -i -e "s|@IP@|$IP|g" -e "s|@INSTANCE_ID@|$INSTANCE_ID|g" -e "s|@BIN_DIR@|$BIN_DIR|g" /etc/spilo/node.yml
if [ '${{ReplicaLoadBalancer}}' = true ]; then
  sed -i "s|@REPLICA_ELB@|{replica}|" /etc/spilo/node.yml
else
  sed -i '/@REPLICA_ELB@/d' /etc/spilo/node.yml
fi
chown root:postgres /etc/spilo/node.yml
chmod 640 /etc/spilo/node.yml
/opt/spilo/bin/spilo --validate --offline /etc/spilo/node.yml

cat >/etc/systemd/system/spilo.service <<'SPILO_UNIT'
[Unit]
Description=spilo: highly available PostgreSQL
After=network-online.target
Wants=network-online.target

[Service]
User=postgres
Group=postgres
ExecStart=/opt/spilo/bin/spilo /etc/spilo/node.yml
KillMode=mixed
TimeoutStopSec=300
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
SPILO_UNIT
systemctl daemon-reload
systemctl enable --now spilo

# Started: the REST API answers (a replica may still be copying; it is a member).
for _ in $(seq 1 600); do
  if curl -sf -o /dev/null http://127.0.0.1:8008/liveness; then signal 0; exit 0; fi
  sleep 2
done
echo "spilo did not answer on :8008 within 20 minutes"
signal 1
exit 1
"#,
        scope = s.scope,
        device = DATA_DEVICE,
        mount = DATA_MOUNT,
    );
    json!({
        "Fn::Sub": [
            script,
            {
                "BucketName": bucket_name(s),
                "KeyArn": key_arn(s),
            }
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            scope: "orders".into(),
            etcd_hosts: vec!["10.0.0.5:2379".into(), "10.0.1.5:2379".into()],
            ..Settings::default()
        }
    }

    #[test]
    fn the_stack_owns_its_keys_and_the_users_values_stay() {
        let mut s = settings();
        s.node_config = Some(
            "scope: other\n\
             zookeeper: {hosts: [z:2181]}\n\
             bootstrap:\n  dcs: {ttl: 20}\n\
             postgresql:\n  parameters: {shared_buffers: 2GB}\n  listen: 127.0.0.1:6543\n\
             tags: {nofailover: true}\n"
                .into(),
        );
        let cfg = config(&s).expect("config");
        let y = Yaml::Mapping(cfg);
        assert_eq!(y["scope"], key("orders"));
        assert_eq!(y["name"], key("@INSTANCE_ID@"));
        assert!(y.get("zookeeper").is_none(), "one DCS: the stack's etcd");
        assert_eq!(y["etcd3"]["hosts"][1], key("10.0.1.5:2379"));
        assert_eq!(
            y["bootstrap"]["dcs"]["ttl"],
            Yaml::from(20),
            "the user's ttl stays"
        );
        assert_eq!(
            y["bootstrap"]["dcs"]["loop_wait"],
            Yaml::from(10),
            "missing values come from the base"
        );
        assert_eq!(y["postgresql"]["parameters"]["shared_buffers"], key("2GB"));
        assert_eq!(y["postgresql"]["listen"], key("0.0.0.0:5432"));
        assert_eq!(y["tags"]["nofailover"], Yaml::from(true));
        assert_eq!(y["storage"]["sse"], key("aws:kms"));
        assert_eq!(y["load_balancers"][0]["primary_elb"], key("orders"));
        assert_eq!(y["aws"]["lifecycle_hook"], key(LIFECYCLE_HOOK));
        assert_eq!(y["aws"]["auto_scaling_group"], key("orders"));
    }

    #[test]
    fn config_text_escapes_the_users_dollar_braces_and_refers_to_the_stack() {
        let mut s = settings();
        s.node_config =
            Some("postgresql:\n  parameters: {archive_cleanup_command: 'x ${y}'}\n".into());
        let text = config_text(&s).expect("text");
        assert!(text.contains("x ${!y}"), "{text}");
        assert!(text.contains("'${SuperuserPassword}'"), "{text}");
        assert!(
            text.contains("${BucketName}") && text.contains("${KeyArn}"),
            "{text}"
        );
        assert!(text.contains("@IP@:5432"), "{text}");
        assert!(text.contains("${VpcCidr}"), "{text}");
        assert!(
            !text.contains("@BUCKET@") && !text.contains("@REGION@"),
            "{text}"
        );
    }

    #[test]
    fn the_users_etcd_tls_and_credentials_stay() {
        let mut s = settings();
        s.node_config = Some(
            "etcd3: {hosts: [old:2379], protocol: https, cacert: /etc/ca.pem, username: spilo, password: pw}\n".into(),
        );
        let y = Yaml::Mapping(config(&s).expect("config"));
        assert_eq!(y["etcd3"]["protocol"], key("https"));
        assert_eq!(y["etcd3"]["cacert"], key("/etc/ca.pem"));
        assert_eq!(y["etcd3"]["username"], key("spilo"));
        assert_eq!(
            y["etcd3"]["hosts"][0],
            key("10.0.0.5:2379"),
            "the stack's etcd"
        );
        assert_eq!(y["etcd3"]["hosts"].as_sequence().map(Vec::len), Some(2));
    }

    #[test]
    fn etcd_by_srv_records() {
        let mut s = settings();
        s.etcd_hosts.clear();
        s.etcd_srv = Some("example.org".into());
        s.etcd_srv_suffix = Some("prod".into());
        s.check().expect("valid");
        let y = Yaml::Mapping(config(&s).expect("config"));
        assert_eq!(y["etcd3"]["srv"], key("example.org"));
        assert_eq!(y["etcd3"]["srv_suffix"], key("prod"));
        assert!(y["etcd3"].get("hosts").is_none());
        s.etcd_hosts = vec!["e:2379".into()];
        assert_eq!(s.check().expect_err("both").field, "etcd_srv");
    }

    #[test]
    fn a_node_config_too_long_for_the_user_data_is_refused() {
        let mut s = settings();
        s.node_config = Some(format!("tags: {{note: '{}'}}\n", "x".repeat(9000)));
        let text = config_text(&s).expect("text");
        assert_eq!(
            check_user_data_size(&s, &text).expect_err("too long").field,
            "node_config"
        );
        s.node_config = None;
        let text = config_text(&s).expect("text");
        check_user_data_size(&s, &text).expect("the default fits");
    }

    #[test]
    fn a_node_config_that_is_not_a_mapping_is_refused() {
        let mut s = settings();
        s.node_config = Some("- a\n- b\n".into());
        assert_eq!(config(&s).expect_err("a list").field, "node_config");
        s.node_config = Some("a: [\n".into());
        assert_eq!(config(&s).expect_err("broken").field, "node_config");
    }
}
