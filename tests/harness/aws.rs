//! moto in server mode as a local AWS API (EC2, classic ELB) for the load-balancer tests, and
//! a few set-up and inspection calls made with boto3 (installed with moto in its virtualenv),
//! so that what spilo did is read back by a client that is not spilo's.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::s3::{S3Kind, S3Server, MOTO_VENV};
use crate::util::run_with_timeout;

/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// The primary ELB's name in the tests.
pub const PRIMARY_ELB: &str = "spilo-primary";
/// The replica ELB's name in the tests.
pub const REPLICA_ELB: &str = "spilo-replica";

/// A moto server; killed on drop.
pub struct Moto {
    /// The server process.
    pub server: S3Server,
}

fn python() -> PathBuf {
    std::env::var_os("SPILO_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(MOTO_VENV))
        .join("bin/python")
}

/// `cfn-lint` (installed with moto[server] in its virtualenv).
pub fn cfn_lint() -> PathBuf {
    python().with_file_name("cfn-lint")
}

impl Moto {
    /// Starts moto on a free port.
    pub fn start() -> Moto {
        Moto {
            server: S3Server::start(S3Kind::Moto),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// A `load_balancers:` entry (YAML, indented as one item of the list) for the classic ELBs
    /// `primary` and `replica` on this server, with moto's credentials; `instance` is the line
    /// naming this node's instance (`instance_id: i-…`, or `imds_endpoint: http://…`).
    pub fn elb_entry(&self, primary: &str, replica: &str, instance: &str) -> String {
        format!(
            "- type: elb\n  primary_elb: {primary}\n  replica_elb: {replica}\n  {instance}\n  \
             endpoint: {}\n  region: {REGION}\n  access_key_id: test\n  secret_access_key: test\n",
            self.endpoint()
        )
    }

    /// Runs `body` (Python, with `ec2` and `elb` boto3 clients bound) and parses what it
    /// prints last as JSON.
    pub fn boto(&self, body: &str) -> Value {
        self.run_python(&["ec2", "elb"], body)
    }

    /// [`Moto::boto`] with a client of every service a CloudFormation stack of spilo's uses
    /// bound by its name: `ec2`, `elb`, `cloudformation`, `autoscaling`, `route53`, `s3`,
    /// `kms`, `iam`.
    pub fn boto_stack(&self, body: &str) -> Value {
        self.run_python(
            &[
                "ec2",
                "elb",
                "cloudformation",
                "autoscaling",
                "route53",
                "s3",
                "kms",
                "iam",
            ],
            body,
        )
    }

    fn run_python(&self, clients: &[&str], body: &str) -> Value {
        let bind: String = clients
            .iter()
            .map(|c| format!("{c} = boto3.client('{c}', **kw)\n"))
            .collect();
        let script = format!(
            "import boto3, json, sys, base64\n\
             kw = dict(endpoint_url={ep:?}, region_name={REGION:?}, aws_access_key_id='test', aws_secret_access_key='test')\n\
             {bind}\
             {body}\n",
            ep = self.endpoint()
        );
        let mut cmd = Command::new(python());
        cmd.arg("-c").arg(&script);
        let out = run_with_timeout(cmd, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("boto3 script: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "boto3 script failed:\n{script}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let last = stdout.lines().last().unwrap_or("null");
        serde_json::from_str(last).unwrap_or_else(|e| panic!("boto3 output {last:?}: {e}"))
    }

    /// moto with the two ELBs ([`PRIMARY_ELB`], [`REPLICA_ELB`]) and `n` instances.
    pub fn with_elbs(n: usize) -> (Moto, Vec<String>) {
        let moto = Moto::start();
        moto.create_elbs();
        let ids = moto.run_instances(n);
        (moto, ids)
    }

    /// Creates the two ELBs (again, after a restart: moto starts empty).
    pub fn create_elbs(&self) {
        self.create_elb(PRIMARY_ELB, "HTTP:8008/primary");
        self.create_elb(REPLICA_ELB, "HTTP:8008/replica");
    }

    /// Starts `n` EC2 instances; their ids.
    pub fn run_instances(&self, n: usize) -> Vec<String> {
        let v = self.boto(&format!(
            "r = ec2.run_instances(ImageId='ami-12345678', MinCount={n}, MaxCount={n}, InstanceType='t3.micro')\n\
             print(json.dumps([i['InstanceId'] for i in r['Instances']]))"
        ));
        serde_json::from_value(v).expect("instance ids")
    }

    /// Creates a classic ELB (TCP 5432, health check on the REST API as Spilo's template has
    /// it).
    pub fn create_elb(&self, name: &str, check: &str) {
        self.boto(&format!(
            "elb.create_load_balancer(LoadBalancerName={name:?}, Listeners=[{{'Protocol': 'TCP', 'LoadBalancerPort': 5432, 'InstancePort': 5432}}], AvailabilityZones=['us-east-1a'], Scheme='internal')\n\
             elb.configure_health_check(LoadBalancerName={name:?}, HealthCheck={{'Target': {check:?}, 'Interval': 5, 'Timeout': 3, 'UnhealthyThreshold': 2, 'HealthyThreshold': 2}})\n\
             print('null')"
        ));
    }

    /// The instances registered with `name`, sorted (repeats kept: a double registration
    /// shows).
    pub fn elb_instances(&self, name: &str) -> Vec<String> {
        let v = self.boto(&format!(
            "d = elb.describe_load_balancers(LoadBalancerNames=[{name:?}])['LoadBalancerDescriptions'][0]\n\
             print(json.dumps(sorted(i['InstanceId'] for i in d['Instances'])))"
        ));
        serde_json::from_value(v).expect("instances")
    }

    /// Registers `id` with `name` behind spilo's back.
    pub fn register(&self, name: &str, id: &str) {
        self.boto(&format!(
            "elb.register_instances_with_load_balancer(LoadBalancerName={name:?}, Instances=[{{'InstanceId': {id:?}}}])\n\
             print('null')"
        ));
    }

    /// The `spilo:term` tag of `name` (None: no tag).
    pub fn term_tag(&self, name: &str) -> Option<u64> {
        let v = self.boto(&format!(
            "t = elb.describe_tags(LoadBalancerNames=[{name:?}])['TagDescriptions'][0]['Tags']\n\
             print(json.dumps([x['Value'] for x in t if x['Key'] == 'spilo:term']))"
        ));
        let v: Vec<String> = serde_json::from_value(v).expect("tags");
        v.first().map(|s| s.parse().expect("a numeric term tag"))
    }
}
