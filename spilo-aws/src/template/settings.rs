//! What a stack is made of: the settings `spiloctl aws template` takes from a small YAML file
//! and from its flags (flags win), and their checks. Every refusal names the setting by the
//! name the file and the flag share (`health_check.interval` is `--health-check-interval`).

use std::collections::BTreeSet;

use serde::Deserialize;

/// One subnet of the Auto Scaling Group, optionally with its availability zone (given, the
/// zone lets the one-subnet-per-zone rule be checked before deployment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// `subnet-…`.
    pub id: String,
    /// `eu-central-1a`, when known.
    pub zone: Option<String>,
}

impl Subnet {
    /// `subnet-0abc` or `subnet-0abc=eu-central-1a`.
    pub fn parse(text: &str) -> Result<Subnet, Invalid> {
        let (id, zone) = match text.split_once('=') {
            Some((id, zone)) => (id.trim(), Some(zone.trim().to_string())),
            None => (text.trim(), None),
        };
        let subnet = Subnet {
            id: id.to_string(),
            zone,
        };
        check_subnet(&subnet)?;
        Ok(subnet)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Subnet::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The data volume each node's PostgreSQL lives on (encrypted with the stack's key).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Volume {
    /// GiB.
    pub size: u32,
    /// `gp3`, `gp2`, `io1` or `io2`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Provisioned IOPS (`gp3`: 3000-16000, default 3000; `io1`/`io2`: required).
    pub iops: Option<u32>,
}

impl Default for Volume {
    fn default() -> Self {
        Volume {
            size: 50,
            kind: "gp3".into(),
            iops: None,
        }
    }
}

/// A classic ELB health check (both ELBs use the same numbers).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// Seconds between checks (5-300).
    pub interval: u32,
    /// Seconds a check may take (2-60, below the interval).
    pub timeout: u32,
    /// Checks in a row to go healthy (2-10).
    pub healthy_threshold: u32,
    /// Checks in a row to go unhealthy (2-10).
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    /// Spilo's template: every 5 s, 3 s timeout, 2 to go either way.
    fn default() -> Self {
        HealthCheck {
            interval: 5,
            timeout: 3,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }
}

/// Everything the template is made from.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The cluster's name (`scope`): names the ELBs, the Auto Scaling Group, the record, the
    /// key alias and the bucket prefix.
    pub scope: String,
    /// Default of the `VpcId` parameter.
    pub vpc_id: Option<String>,
    /// Default of the `VpcCidr` parameter: who may reach the ELBs and PostgreSQL (the VPC's
    /// CIDR; no default: a wrong guess would lock replicas and clients out).
    pub vpc_cidr: Option<String>,
    /// Default of the `SubnetIds` parameter: one per availability zone.
    pub subnets: Vec<Subnet>,
    /// Default of the `ClusterSize` parameter (nodes in the group; 0: one per subnet, and at
    /// least 3).
    pub cluster_size: u32,
    /// Default of the `InstanceType` parameter.
    pub instance_type: String,
    /// Default of the `ImageId` parameter (a Debian 12 or Amazon Linux 2023 image).
    pub image_id: Option<String>,
    /// The data volume.
    pub volume: Volume,
    /// CIDRs allowed to administer the nodes (ssh, PostgreSQL, the REST API).
    pub admin_cidrs: Vec<String>,
    /// Security groups allowed to administer the nodes.
    pub admin_security_groups: Vec<String>,
    /// CIDRs allowed to scrape the REST API (`/metrics`).
    pub monitoring_cidrs: Vec<String>,
    /// Security groups allowed to scrape the REST API.
    pub monitoring_security_groups: Vec<String>,
    /// Default of the `ReplicaLoadBalancer` parameter.
    pub replica_elb: bool,
    /// Default of the `HostedZoneName` parameter (`example.org.`).
    pub hosted_zone: Option<String>,
    /// The record's first label (default: the scope); the replica record adds `-repl`.
    pub record_name: Option<String>,
    /// An existing bucket to use (default: the stack creates one).
    pub bucket: Option<String>,
    /// An existing KMS key's ARN to use (default: the stack creates one).
    pub kms_key_arn: Option<String>,
    /// The spilo version the nodes install.
    pub spilo_version: String,
    /// Default of the `SpiloPackageUrl` parameter: a `.tar.gz` holding `bin/spilo`,
    /// `bin/spiloctl` and `lib/` (the plugins); `https://` or `s3://` (read with the
    /// instance role).
    pub spilo_url: Option<String>,
    /// etcd v3 endpoints (host:port) the nodes use as their DCS.
    pub etcd_hosts: Vec<String>,
    /// Or a domain whose DNS SRV records name etcd (Patroni's `etcd3.srv`).
    pub etcd_srv: Option<String>,
    /// `etcd3.srv_suffix` (only with `etcd_srv`).
    pub etcd_srv_suffix: Option<String>,
    /// The node configuration the stack's settings are laid over (YAML text).
    #[serde(skip)]
    pub node_config: Option<String>,
    /// The ELBs' health checks.
    pub health_check: HealthCheck,
    /// Seconds an idle connection through an ELB stays open (1-3600).
    pub idle_timeout: u32,
    /// Seconds a terminating node has to hand over before the group goes on (30-7200).
    pub handover_timeout: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            scope: String::new(),
            vpc_id: None,
            vpc_cidr: None,
            subnets: Vec::new(),
            cluster_size: 0,
            instance_type: "t3.medium".into(),
            image_id: None,
            volume: Volume::default(),
            admin_cidrs: Vec::new(),
            admin_security_groups: Vec::new(),
            monitoring_cidrs: Vec::new(),
            monitoring_security_groups: Vec::new(),
            replica_elb: false,
            hosted_zone: None,
            record_name: None,
            bucket: None,
            kms_key_arn: None,
            spilo_version: env!("CARGO_PKG_VERSION").into(),
            spilo_url: None,
            etcd_hosts: Vec::new(),
            etcd_srv: None,
            etcd_srv_suffix: None,
            node_config: None,
            health_check: HealthCheck::default(),
            idle_timeout: 3600,
            handover_timeout: 600,
        }
    }
}

/// A setting that cannot make a working stack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    /// The setting, as the file names it.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The longest scope: an ELB name is at most 32 characters and the replica ELB's adds `-repl`.
pub const MAX_SCOPE: usize = 27;

impl Settings {
    /// Reads the YAML settings file's text (`source` names it in errors).
    pub fn from_yaml(text: &str, source: &str) -> Result<Settings, Invalid> {
        serde_yaml::from_str(text).map_err(|e| bad(source, e.to_string()))
    }

    /// The group's size: as set, else one node per subnet (at least 3 when fewer subnets are
    /// known: two nodes cannot outvote each other's failure).
    pub fn size(&self) -> u32 {
        if self.cluster_size > 0 {
            self.cluster_size
        } else {
            (self.subnets.len() as u32).max(3)
        }
    }

    /// The record's first label.
    pub fn record(&self) -> &str {
        self.record_name.as_deref().unwrap_or(&self.scope)
    }

    /// Every check `cfn-lint` does not make, and those that keep the rendered names valid.
    pub fn check(&self) -> Result<(), Invalid> {
        check_scope(&self.scope)?;
        if let Some(vpc) = &self.vpc_id {
            check_id("vpc_id", vpc, "vpc-")?;
        }
        if let Some(c) = &self.vpc_cidr {
            check_cidr("vpc_cidr", c)?;
        }
        let mut zones = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for s in &self.subnets {
            check_subnet(s)?;
            if !ids.insert(&s.id) {
                return Err(bad("subnets", format!("{} is listed twice", s.id)));
            }
            if let Some(z) = &s.zone {
                if !zones.insert(z) {
                    return Err(bad(
                        "subnets",
                        format!("two subnets in {z}: give one subnet per availability zone"),
                    ));
                }
            }
        }
        if !(self.cluster_size == 0 || (1..=15).contains(&self.cluster_size)) {
            return Err(bad(
                "cluster_size",
                format!("{} nodes; 1 to 15", self.cluster_size),
            ));
        }
        check_word("instance_type", &self.instance_type, ".-")?;
        if !self.instance_type.contains('.') {
            return Err(bad(
                "instance_type",
                format!(
                    "{:?} is not an instance type like t3.medium",
                    self.instance_type
                ),
            ));
        }
        if let Some(ami) = &self.image_id {
            check_id("image_id", ami, "ami-")?;
        }
        self.check_volume()?;
        for c in &self.admin_cidrs {
            check_cidr("admin_cidrs", c)?;
        }
        for c in &self.monitoring_cidrs {
            check_cidr("monitoring_cidrs", c)?;
        }
        for g in &self.admin_security_groups {
            check_id("admin_security_groups", g, "sg-")?;
        }
        for g in &self.monitoring_security_groups {
            check_id("monitoring_security_groups", g, "sg-")?;
        }
        if let Some(zone) = &self.hosted_zone {
            check_zone(zone)?;
        }
        if let Some(r) = &self.record_name {
            check_label("record_name", r)?;
        }
        if let Some(b) = &self.bucket {
            check_bucket(b)?;
        }
        if let Some(k) = &self.kms_key_arn {
            if !k.starts_with("arn:") || !k.contains(":kms:") || !k.contains(":key/") {
                return Err(bad(
                    "kms_key_arn",
                    format!("{k:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"),
                ));
            }
            check_word("kms_key_arn", k, ":/-_")?;
        }
        check_word("spilo_version", &self.spilo_version, ".-+")?;
        if let Some(u) = &self.spilo_url {
            if !(u.starts_with("https://") || u.starts_with("s3://") || u.starts_with("http://")) {
                return Err(bad(
                    "spilo_url",
                    format!("{u:?}: an https:// or s3:// URL of the spilo package"),
                ));
            }
            if u.chars()
                .any(|c| c.is_whitespace() || "'\"`$\\".contains(c))
            {
                return Err(bad("spilo_url", "quotes, spaces, $ and \\ are not allowed"));
            }
        }
        match (&self.etcd_srv, self.etcd_hosts.is_empty()) {
            (None, true) => {
                return Err(bad(
                    "etcd_hosts",
                    "the nodes need their DCS: give etcd's host:port (one or more) or etcd_srv",
                ))
            }
            (Some(_), false) => {
                return Err(bad("etcd_srv", "give etcd_hosts or etcd_srv, not both"))
            }
            (Some(d), true) => {
                let ok = d.trim_end_matches('.').split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
                if !ok {
                    return Err(bad("etcd_srv", format!("{d:?} is not a DNS domain")));
                }
            }
            (None, false) => {}
        }
        if let Some(sfx) = &self.etcd_srv_suffix {
            if self.etcd_srv.is_none() {
                return Err(bad("etcd_srv_suffix", "works only with etcd_srv"));
            }
            check_word("etcd_srv_suffix", sfx, "-")?;
            if sfx.len() > 46 {
                return Err(bad(
                    "etcd_srv_suffix",
                    "at most 46 characters (_etcd-client-ssl-<suffix> is one DNS label)",
                ));
            }
        }
        for h in &self.etcd_hosts {
            check_host_port("etcd_hosts", h)?;
        }
        self.check_health()?;
        if !(1..=3600).contains(&self.idle_timeout) {
            return Err(bad(
                "idle_timeout",
                format!("{} s; classic ELBs take 1 to 3600", self.idle_timeout),
            ));
        }
        if !(30..=7200).contains(&self.handover_timeout) {
            return Err(bad(
                "handover_timeout",
                format!(
                    "{} s; a lifecycle hook's heartbeat timeout is 30 to 7200",
                    self.handover_timeout
                ),
            ));
        }
        Ok(())
    }

    fn check_volume(&self) -> Result<(), Invalid> {
        let v = &self.volume;
        let (min, max) = match v.kind.as_str() {
            "gp2" | "gp3" => (1, 16384),
            "io1" | "io2" => (4, 16384),
            other => {
                return Err(bad(
                    "volume.type",
                    format!("{other:?}; gp3, gp2, io1 or io2 (a database wants SSD)"),
                ))
            }
        };
        if !(min..=max).contains(&v.size) {
            return Err(bad(
                "volume.size",
                format!("{} GiB; {} takes {min} to {max}", v.size, v.kind),
            ));
        }
        match (v.kind.as_str(), v.iops) {
            ("gp2", Some(_)) => Err(bad("volume.iops", "gp2 volumes take no provisioned IOPS")),
            ("gp3", Some(i)) if !(3000..=16000).contains(&i) => {
                Err(bad("volume.iops", format!("{i}; gp3 takes 3000 to 16000")))
            }
            ("io1" | "io2", None) => Err(bad(
                "volume.iops",
                format!("{} volumes need provisioned IOPS", v.kind),
            )),
            ("io1" | "io2", Some(i)) => {
                let per_gib = if v.kind == "io1" { 50 } else { 500 };
                if !(100..=64000).contains(&i) || i > v.size.saturating_mul(per_gib) {
                    Err(bad(
                        "volume.iops",
                        format!(
                            "{i}; {} takes 100 to 64000 and at most {per_gib} per GiB ({} for {} GiB)",
                            v.kind,
                            v.size.saturating_mul(per_gib).min(64000),
                            v.size
                        ),
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn check_health(&self) -> Result<(), Invalid> {
        let h = &self.health_check;
        if !(5..=300).contains(&h.interval) {
            return Err(bad(
                "health_check.interval",
                format!("{} s; classic ELBs check every 5 to 300 s", h.interval),
            ));
        }
        if !(2..=60).contains(&h.timeout) {
            return Err(bad(
                "health_check.timeout",
                format!("{} s; 2 to 60", h.timeout),
            ));
        }
        if h.timeout >= h.interval {
            return Err(bad(
                "health_check.timeout",
                format!(
                    "{} s is not below the interval ({} s)",
                    h.timeout, h.interval
                ),
            ));
        }
        for (field, n) in [
            ("health_check.healthy_threshold", h.healthy_threshold),
            ("health_check.unhealthy_threshold", h.unhealthy_threshold),
        ] {
            if !(2..=10).contains(&n) {
                return Err(bad(field, format!("{n}; 2 to 10 checks")));
            }
        }
        Ok(())
    }
}

fn check_scope(scope: &str) -> Result<(), Invalid> {
    if scope.is_empty() {
        return Err(bad("scope", "missing: the cluster's name"));
    }
    if scope.len() > MAX_SCOPE {
        return Err(bad(
            "scope",
            format!(
                "{scope:?} is {} characters; at most {MAX_SCOPE} (it names the ELBs, 32 at most)",
                scope.len()
            ),
        ));
    }
    let ok = scope
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && scope.starts_with(|c: char| c.is_ascii_lowercase())
        && !scope.ends_with('-')
        && !scope.contains("--");
    if !ok {
        return Err(bad(
            "scope",
            format!(
                "{scope:?}: lower-case letters, digits and single hyphens, starting with a \
                 letter (it names the ELBs, the bucket prefix and a DNS record)"
            ),
        ));
    }
    Ok(())
}

fn check_subnet(s: &Subnet) -> Result<(), Invalid> {
    check_id("subnets", &s.id, "subnet-")?;
    if let Some(z) = &s.zone {
        let ok = !z.is_empty()
            && z.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && z.ends_with(|c: char| c.is_ascii_lowercase());
        if !ok {
            return Err(bad(
                "subnets",
                format!(
                    "{}: {z:?} is not an availability zone like eu-central-1a",
                    s.id
                ),
            ));
        }
    }
    Ok(())
}

/// AWS's id form: the prefix, then 8 or 17 hex digits (an AMI's: lower-case letters too).
fn check_id(field: &str, id: &str, prefix: &str) -> Result<(), Invalid> {
    let rest = id.strip_prefix(prefix).unwrap_or("");
    let digit = |c: char| {
        if prefix == "ami-" {
            c.is_ascii_digit() || c.is_ascii_lowercase()
        } else {
            c.is_ascii_hexdigit()
        }
    };
    if !matches!(rest.len(), 8 | 17) || !rest.chars().all(digit) {
        return Err(bad(
            field,
            format!("{id:?} is not an id like {prefix}0123abcd (8 or 17 hex digits)"),
        ));
    }
    Ok(())
}

fn check_word(field: &str, text: &str, extra: &str) -> Result<(), Invalid> {
    if text.is_empty()
        || text.len() > 2048
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    {
        return Err(bad(
            field,
            format!("{text:?}: letters, digits and {extra:?} only"),
        ));
    }
    Ok(())
}

fn check_cidr(field: &str, cidr: &str) -> Result<(), Invalid> {
    let parsed = cidr.split_once('/').and_then(|(ip, len)| {
        let ip: std::net::Ipv4Addr = ip.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        (len <= 32).then_some((ip, len))
    });
    match parsed {
        Some(_) => Ok(()),
        None => Err(bad(
            field,
            format!("{cidr:?} is not an IPv4 CIDR like 10.0.0.0/16"),
        )),
    }
}

fn check_label(field: &str, label: &str) -> Result<(), Invalid> {
    let ok = !label.is_empty()
        && label.len() <= 63
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if !ok {
        return Err(bad(
            field,
            format!("{label:?} is not a DNS label (letters, digits, inner hyphens, ≤ 63)"),
        ));
    }
    Ok(())
}

fn check_zone(zone: &str) -> Result<(), Invalid> {
    let Some(name) = zone.strip_suffix('.') else {
        return Err(bad(
            "hosted_zone",
            format!("{zone:?}: a hosted zone name ends with a dot (example.org.)"),
        ));
    };
    if name.len() > 253
        || name
            .split('.')
            .any(|l| check_label("hosted_zone", l).is_err())
    {
        return Err(bad("hosted_zone", format!("{zone:?} is not a DNS name")));
    }
    Ok(())
}

fn check_bucket(b: &str) -> Result<(), Invalid> {
    let ok = (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !b.contains("..");
    if !ok {
        return Err(bad(
            "bucket",
            format!("{b:?} is not an S3 bucket name (3-63 lower-case letters, digits, '-', '.')"),
        ));
    }
    Ok(())
}

fn check_host_port(field: &str, hp: &str) -> Result<(), Invalid> {
    let parsed = hp.rsplit_once(':').and_then(|(host, port)| {
        let port: u16 = port.parse().ok()?;
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
        (host_ok && port > 0).then_some(())
    });
    parsed.ok_or_else(|| bad(field, format!("{hp:?} is not host:port")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Settings {
        Settings {
            scope: "orders".into(),
            etcd_hosts: vec!["etcd.internal:2379".into()],
            ..Settings::default()
        }
    }

    fn field_of(s: &Settings) -> String {
        s.check().expect_err("refused").field
    }

    #[test]
    fn defaults_with_a_scope_and_etcd_pass() {
        good().check().expect("valid");
        assert_eq!(good().size(), 3);
    }

    #[test]
    fn health_check_ranges_name_the_field() {
        let mut s = good();
        s.health_check.interval = 4;
        assert_eq!(field_of(&s), "health_check.interval");
        s.health_check.interval = 301;
        assert_eq!(field_of(&s), "health_check.interval");
        s.health_check.interval = 5;
        s.health_check.timeout = 5;
        let e = s.check().expect_err("timeout = interval");
        assert_eq!(e.field, "health_check.timeout");
        assert!(e.problem.contains("not below the interval"), "{e}");
        s.health_check.timeout = 3;
        s.health_check.healthy_threshold = 1;
        assert_eq!(field_of(&s), "health_check.healthy_threshold");
        s.health_check.healthy_threshold = 2;
        s.health_check.unhealthy_threshold = 11;
        assert_eq!(field_of(&s), "health_check.unhealthy_threshold");
        s.health_check.unhealthy_threshold = 10;
        s.check().expect("edges are valid");
    }

    #[test]
    fn idle_timeout_and_handover_ranges() {
        let mut s = good();
        s.idle_timeout = 0;
        assert_eq!(field_of(&s), "idle_timeout");
        s.idle_timeout = 3601;
        assert_eq!(field_of(&s), "idle_timeout");
        s.idle_timeout = 3600;
        s.handover_timeout = 29;
        assert_eq!(field_of(&s), "handover_timeout");
    }

    #[test]
    fn one_subnet_per_zone() {
        let mut s = good();
        s.subnets = vec![
            Subnet::parse("subnet-0000000a=eu-central-1a").unwrap(),
            Subnet::parse("subnet-0000000b=eu-central-1b").unwrap(),
        ];
        s.check().expect("two zones");
        assert_eq!(s.size(), 3);
        s.subnets
            .push(Subnet::parse("subnet-0000000c=eu-central-1a").unwrap());
        let e = s.check().expect_err("two in 1a");
        assert_eq!(e.field, "subnets");
        assert!(e.problem.contains("eu-central-1a"), "{e}");
        s.subnets[2] = Subnet::parse("subnet-0000000a").unwrap();
        assert!(s.check().expect_err("twice").problem.contains("twice"));
        assert!(Subnet::parse("sub-1").is_err());
        assert!(Subnet::parse("subnet-0000000a=EU").is_err());
        assert!(Subnet::parse("subnet-0a").is_err(), "8 or 17 digits");
    }

    #[test]
    fn names_that_would_break_resources_are_refused() {
        for scope in ["", "Orders", "1st", "a-", "a--b", "a_b", &"x".repeat(28)] {
            let s = Settings {
                scope: scope.into(),
                ..good()
            };
            assert_eq!(field_of(&s), "scope", "{scope:?}");
        }
        let s = Settings {
            hosted_zone: Some("example.org".into()),
            ..good()
        };
        assert_eq!(field_of(&s), "hosted_zone");
        let s = Settings {
            bucket: Some("My_Bucket".into()),
            ..good()
        };
        assert_eq!(field_of(&s), "bucket");
        let s = Settings {
            kms_key_arn: Some("alias/x".into()),
            ..good()
        };
        assert_eq!(field_of(&s), "kms_key_arn");
        let s = Settings {
            spilo_url: Some("https://x/$(reboot)".into()),
            ..good()
        };
        assert_eq!(field_of(&s), "spilo_url");
        let s = Settings {
            etcd_hosts: vec![],
            ..good()
        };
        assert_eq!(field_of(&s), "etcd_hosts");
        let s = Settings {
            etcd_hosts: vec!["etcd:0".into()],
            ..good()
        };
        assert_eq!(field_of(&s), "etcd_hosts");
        let s = Settings {
            admin_cidrs: vec!["10.0.0.0/33".into()],
            ..good()
        };
        assert_eq!(field_of(&s), "admin_cidrs");
        let s = Settings {
            cluster_size: 16,
            ..good()
        };
        assert_eq!(field_of(&s), "cluster_size");
    }

    #[test]
    fn volume_rules() {
        let mut s = good();
        s.volume.kind = "st1".into();
        assert_eq!(field_of(&s), "volume.type");
        s.volume.kind = "io2".into();
        assert_eq!(field_of(&s), "volume.iops");
        s.volume.iops = Some(10_000);
        s.volume.size = 10;
        assert_eq!(field_of(&s), "volume.iops", "500 per GiB");
        s.volume.size = 100;
        s.check().expect("io2 100 GiB 10k IOPS");
        s.volume.kind = "gp2".into();
        assert_eq!(field_of(&s), "volume.iops");
        s.volume.kind = "gp3".into();
        s.volume.iops = Some(2000);
        assert_eq!(field_of(&s), "volume.iops");
        s.volume.iops = None;
        s.volume.size = 0;
        assert_eq!(field_of(&s), "volume.size");
    }

    #[test]
    fn the_settings_file_refuses_unknown_keys() {
        let e = Settings::from_yaml("scope: a\nhealth_check: {intervall: 5}\n", "stack.yml")
            .expect_err("typo");
        assert_eq!(e.field, "stack.yml");
        assert!(e.problem.contains("intervall"), "{e}");
        let s = Settings::from_yaml(
            "scope: a\nsubnets: [subnet-00000001=us-east-1a]\nvolume: {size: 20}\n",
            "stack.yml",
        )
        .expect("valid");
        assert_eq!(s.subnets[0].zone.as_deref(), Some("us-east-1a"));
        assert_eq!(s.volume.kind, "gp3");
    }
}
