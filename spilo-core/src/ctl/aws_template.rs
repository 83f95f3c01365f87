//! `spiloctl aws template` (write a cluster's CloudFormation template) and `spiloctl aws
//! check-template` (check one, perhaps edited by hand, for what `cfn-lint` does not). The
//! template itself is built by [`spilo_aws::template`]; this is the command line around it.
//! Exit 0 written/valid, 2 an invalid setting or template (the message names it), 1 a file
//! that cannot be read or written.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use spilo_aws::template::{self, Settings, Subnet};

/// The template's output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateFormat {
    /// JSON, indented.
    Json,
    /// YAML (long-form functions: `Fn::Sub:`).
    Yaml,
}

/// The settings of `spiloctl aws template`: a file (`--from`) and flags over it. Flags that
/// name a CloudFormation parameter set that parameter's default.
#[derive(clap::Args, Debug, Default)]
pub struct TemplateArgs {
    /// A YAML file of settings (the flags' names with `_`: scope, subnets, health_check: {…});
    /// flags override it.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// The cluster's name (scope): names the ELBs, the group, the records, the bucket prefix.
    #[arg(long)]
    pub scope: Option<String>,
    /// Default of VpcId.
    #[arg(long)]
    pub vpc_id: Option<String>,
    /// Default of VpcCidr: the VPC's CIDR, who may reach the ELBs and PostgreSQL (no default).
    #[arg(long)]
    pub vpc_cidr: Option<String>,
    /// A subnet, SUBNET-ID or SUBNET-ID=ZONE; one per availability zone (repeat). Default of
    /// SubnetIds; with zones, two subnets in one zone are refused.
    #[arg(long = "subnet", value_name = "ID[=ZONE]")]
    pub subnets: Vec<String>,
    /// Default of ClusterSize [default: one node per subnet, at least 3].
    #[arg(long)]
    pub cluster_size: Option<u32>,
    /// Default of InstanceType [default: t3.medium].
    #[arg(long)]
    pub instance_type: Option<String>,
    /// Default of ImageId (a Debian 12 or Amazon Linux 2023 AMI).
    #[arg(long)]
    pub image_id: Option<String>,
    /// Data volume size in GiB [default: 50].
    #[arg(long)]
    pub volume_size: Option<u32>,
    /// Data volume type: gp3, gp2, io1, io2 [default: gp3].
    #[arg(long)]
    pub volume_type: Option<String>,
    /// Data volume provisioned IOPS (gp3, io1, io2).
    #[arg(long)]
    pub volume_iops: Option<u32>,
    /// A CIDR allowed ssh, PostgreSQL and the REST API (repeat).
    #[arg(long = "admin-cidr", value_name = "CIDR")]
    pub admin_cidrs: Vec<String>,
    /// A security group allowed ssh, PostgreSQL and the REST API (repeat).
    #[arg(long = "admin-security-group", value_name = "SG")]
    pub admin_security_groups: Vec<String>,
    /// A CIDR allowed to scrape /metrics (repeat).
    #[arg(long = "monitoring-cidr", value_name = "CIDR")]
    pub monitoring_cidrs: Vec<String>,
    /// A security group allowed to scrape /metrics (repeat).
    #[arg(long = "monitoring-security-group", value_name = "SG")]
    pub monitoring_security_groups: Vec<String>,
    /// Default of ReplicaLoadBalancer [default: false].
    #[arg(long, value_name = "true|false")]
    pub replica_elb: Option<bool>,
    /// Default of HostedZoneName (with its final dot).
    #[arg(long)]
    pub hosted_zone: Option<String>,
    /// The record's first label [default: the scope]; the replica record adds -repl.
    #[arg(long)]
    pub record_name: Option<String>,
    /// Use this existing bucket [default: the stack creates one].
    #[arg(long)]
    pub bucket: Option<String>,
    /// Use this existing KMS key (its ARN) [default: the stack creates one].
    #[arg(long)]
    pub kms_key_arn: Option<String>,
    /// The spilo version the nodes run [default: this spiloctl's].
    #[arg(long)]
    pub spilo_version: Option<String>,
    /// Default of SpiloPackageUrl: https:// or s3:// of the spilo .tar.gz.
    #[arg(long)]
    pub spilo_url: Option<String>,
    /// An etcd v3 endpoint host:port the nodes use as their DCS (repeat).
    #[arg(long = "etcd-host", value_name = "HOST:PORT")]
    pub etcd_hosts: Vec<String>,
    /// Or: a domain whose DNS SRV records name etcd (etcd3.srv).
    #[arg(long, value_name = "DOMAIN")]
    pub etcd_srv: Option<String>,
    /// etcd3.srv_suffix (with --etcd-srv).
    #[arg(long, value_name = "SUFFIX")]
    pub etcd_srv_suffix: Option<String>,
    /// A node configuration (Patroni YAML) the stack's settings are laid over.
    #[arg(long, value_name = "FILE")]
    pub node_config: Option<PathBuf>,
    /// ELB health-check interval, s (5-300) [default: 5].
    #[arg(long)]
    pub health_check_interval: Option<u32>,
    /// ELB health-check timeout, s (2-60, below the interval) [default: 3].
    #[arg(long)]
    pub health_check_timeout: Option<u32>,
    /// Checks to go healthy (2-10) [default: 2].
    #[arg(long)]
    pub healthy_threshold: Option<u32>,
    /// Checks to go unhealthy (2-10) [default: 2].
    #[arg(long)]
    pub unhealthy_threshold: Option<u32>,
    /// ELB idle timeout, s (1-3600) [default: 3600].
    #[arg(long)]
    pub idle_timeout: Option<u32>,
    /// Seconds a terminating node has to hand over (30-7200) [default: 600].
    #[arg(long)]
    pub handover_timeout: Option<u32>,
}

/// A refusal: the message, and the exit code (2 invalid, 1 a file).
struct Refused(String, u8);

fn invalid(e: template::Invalid) -> Refused {
    Refused(e.to_string(), 2)
}

fn read(path: &PathBuf, what: &str) -> Result<String, Refused> {
    const MAX: u64 = 1024 * 1024;
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX => {
            return Err(Refused(
                format!("{what} {}: larger than 1 MiB", path.display()),
                2,
            ))
        }
        Ok(_) => {}
        Err(e) => return Err(Refused(format!("{what} {}: {e}", path.display()), 1)),
    }
    std::fs::read_to_string(path).map_err(|e| Refused(format!("{what} {}: {e}", path.display()), 1))
}

impl TemplateArgs {
    /// The settings: the file's, then the flags over them.
    fn settings(&self) -> Result<Settings, Refused> {
        let mut s = match &self.from {
            Some(path) => {
                let text = read(path, "settings file")?;
                Settings::from_yaml(&text, &path.display().to_string()).map_err(invalid)?
            }
            None => Settings::default(),
        };
        fn over<T: Clone>(slot: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *slot = v.clone();
            }
        }
        fn some<T: Clone>(slot: &mut Option<T>, v: &Option<T>) {
            if v.is_some() {
                *slot = v.clone();
            }
        }
        fn list<T: Clone>(slot: &mut Vec<T>, v: &[T]) {
            if !v.is_empty() {
                *slot = v.to_vec();
            }
        }
        over(&mut s.scope, &self.scope);
        some(&mut s.vpc_id, &self.vpc_id);
        some(&mut s.vpc_cidr, &self.vpc_cidr);
        if !self.subnets.is_empty() {
            s.subnets = self
                .subnets
                .iter()
                .map(|t| {
                    Subnet::parse(t).map_err(|e| Refused(format!("--subnet {t}: {}", e.problem), 2))
                })
                .collect::<Result<_, _>>()?;
        }
        over(&mut s.cluster_size, &self.cluster_size);
        over(&mut s.instance_type, &self.instance_type);
        some(&mut s.image_id, &self.image_id);
        over(&mut s.volume.size, &self.volume_size);
        over(&mut s.volume.kind, &self.volume_type);
        some(&mut s.volume.iops, &self.volume_iops);
        list(&mut s.admin_cidrs, &self.admin_cidrs);
        list(&mut s.admin_security_groups, &self.admin_security_groups);
        list(&mut s.monitoring_cidrs, &self.monitoring_cidrs);
        list(
            &mut s.monitoring_security_groups,
            &self.monitoring_security_groups,
        );
        over(&mut s.replica_elb, &self.replica_elb);
        some(&mut s.hosted_zone, &self.hosted_zone);
        some(&mut s.record_name, &self.record_name);
        some(&mut s.bucket, &self.bucket);
        some(&mut s.kms_key_arn, &self.kms_key_arn);
        over(&mut s.spilo_version, &self.spilo_version);
        some(&mut s.spilo_url, &self.spilo_url);
        list(&mut s.etcd_hosts, &self.etcd_hosts);
        some(&mut s.etcd_srv, &self.etcd_srv);
        some(&mut s.etcd_srv_suffix, &self.etcd_srv_suffix);
        if let Some(path) = &self.node_config {
            s.node_config = Some(read(path, "node configuration")?);
        }
        over(&mut s.health_check.interval, &self.health_check_interval);
        over(&mut s.health_check.timeout, &self.health_check_timeout);
        over(
            &mut s.health_check.healthy_threshold,
            &self.healthy_threshold,
        );
        over(
            &mut s.health_check.unhealthy_threshold,
            &self.unhealthy_threshold,
        );
        over(&mut s.idle_timeout, &self.idle_timeout);
        over(&mut s.handover_timeout, &self.handover_timeout);
        Ok(s)
    }
}

fn finish(r: Result<String, Refused>) -> ExitCode {
    match r {
        Ok(out) => match std::io::stdout().lock().write_all(out.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("spiloctl: standard output: {e}");
                ExitCode::from(1)
            }
        },
        Err(Refused(msg, code)) => {
            eprintln!("spiloctl: {msg}");
            ExitCode::from(code)
        }
    }
}

/// `spiloctl aws template`: the template on standard output.
pub fn run_template(args: &TemplateArgs, format: TemplateFormat) -> ExitCode {
    finish((|| {
        let s = args.settings()?;
        let t = template::render(&s).map_err(invalid)?;
        Ok(match format {
            TemplateFormat::Json => template::to_json(&t),
            TemplateFormat::Yaml => template::to_yaml(&t),
        })
    })())
}

/// `spiloctl aws check-template FILE`: checks a template (JSON or YAML).
pub fn run_check(path: &PathBuf) -> ExitCode {
    finish((|| {
        let text = read(path, "template")?;
        let value: serde_json::Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(&text)
                .map_err(|e| Refused(format!("template {}: {e}", path.display()), 2))?
        } else {
            template::from_yaml(&text)
                .map_err(|e| Refused(format!("template {}: {e}", path.display()), 2))?
        };
        template::check(&value)
            .map_err(|e| Refused(format!("template {}: {e}", path.display()), 2))?;
        Ok(format!("{}: valid\n", path.display()))
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_settings_file() {
        let dir = std::env::temp_dir().join(format!("spilo-tmpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("stack.yml");
        std::fs::write(
            &file,
            "scope: orders\netcd_hosts: [e:2379]\nhealth_check: {interval: 10, timeout: 5}\nreplica_elb: true\n",
        )
        .unwrap();
        let args = TemplateArgs {
            from: Some(file.clone()),
            health_check_timeout: Some(4),
            subnets: vec!["subnet-0000000a=us-east-1a".into()],
            ..TemplateArgs::default()
        };
        let s = args.settings().ok().expect("settings");
        assert_eq!(s.health_check.interval, 10, "from the file");
        assert_eq!(s.health_check.timeout, 4, "the flag wins");
        assert!(s.replica_elb);
        assert_eq!(s.subnets[0].zone.as_deref(), Some("us-east-1a"));
        let bad = TemplateArgs {
            from: Some(file),
            subnets: vec!["nope".into()],
            ..TemplateArgs::default()
        };
        match bad.settings() {
            Err(Refused(m, 2)) => assert!(m.contains("--subnet nope"), "{m}"),
            _ => panic!("a bad subnet is refused"),
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
