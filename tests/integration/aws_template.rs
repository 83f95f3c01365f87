//! `spiloctl aws template`: the CloudFormation stack of a cluster, for 1, 2 and 3 availability
//! zones with and without the replica ELB, in JSON and YAML. `cfn-lint` (the real one, from
//! the moto virtualenv) finds no error, warning or informational finding in any of them, and
//! fails on a broken template (so the check can fail); `spiloctl aws check-template` refuses
//! what `cfn-lint` lets through, naming the property. Each template deploys on moto's
//! CloudFormation, and what it made is read back through boto3: the group (EC2 health checks,
//! size, subnets), the ELBs and their health checks, the CNAMEs, the security groups and their
//! rules, the bucket's encryption, the key and its alias, the role's policy, the launch
//! template (IMDSv2 required, encrypted data volume) and its user data, whose node
//! configuration `spilo --validate --offline` accepts once the instance's values are filled.
//!
//! moto 5.2 drops some properties when it deploys (the group's lifecycle hooks, the ELBs'
//! subnets, cross-zone and idle timeout, the bucket's public access block, lifecycle rules and
//! policy); those are checked on the template itself (unit tests of `spilo_aws::template`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use spilo_tests::aws::{cfn_lint, Moto, REGION};
use spilo_tests::bins::{bins, plugin_lib, PG_BIN_DIR};
use spilo_tests::util::run_with_timeout;

const ZONES: [&str; 3] = ["a", "b", "c"];

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spilo-aws-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs `spiloctl aws <args>`: exit code, stdout, stderr.
fn spiloctl_aws(args: &[String]) -> (i32, String, String) {
    let mut cmd = Command::new(&bins().spiloctl);
    cmd.arg("aws").args(args);
    let out = run_with_timeout(cmd, Duration::from_secs(30)).expect("spiloctl aws");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The flags of a template for `subnets` (ids), written to `file`.
fn write_template(file: &Path, scope: &str, subnets: &[String], replica: bool, format: &str) {
    let mut args: Vec<String> = [
        "template",
        "--scope",
        scope,
        "--etcd-host",
        "10.0.0.5:2379",
        "--etcd-host",
        "10.0.1.5:2379",
        "--hosted-zone",
        "example.org.",
        "--vpc-cidr",
        "10.0.0.0/8",
        "--spilo-url",
        "https://example.org/spilo.tar.gz",
        "--admin-cidr",
        "10.1.0.0/16",
        "--monitoring-cidr",
        "10.2.0.0/16",
        "--format",
        format,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("--replica-elb".into());
    args.push(replica.to_string());
    for (i, s) in subnets.iter().enumerate() {
        args.push("--subnet".into());
        args.push(format!("{s}={REGION}{}", ZONES[i]));
    }
    let (code, out, err) = spiloctl_aws(&args);
    assert_eq!(code, 0, "spiloctl aws template {args:?}: {err}");
    std::fs::write(file, out).expect("write the template");
}

fn lint(files: &[PathBuf]) -> (i32, String) {
    let mut cmd = Command::new(cfn_lint());
    cmd.args(files);
    let out = run_with_timeout(cmd, Duration::from_secs(120)).expect("cfn-lint");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn templates_are_lint_clean_and_bad_ones_are_refused_by_name() {
    let dir = tmp_dir("lint");
    let mut files = Vec::new();
    for n in 1..=3 {
        let subnets: Vec<String> = (1..=n).map(|i| format!("subnet-0000000{i}")).collect();
        for replica in [true, false] {
            for format in ["json", "yaml"] {
                let f = dir.join(format!("spilo-{n}az-{replica}.{format}"));
                write_template(&f, "orders", &subnets, replica, format);
                files.push(f);
            }
        }
    }
    // Informational findings too (--include-checks I): none anywhere.
    let mut all = vec![
        PathBuf::from("--include-checks"),
        PathBuf::from("I"),
        PathBuf::from("--"),
    ];
    all.extend(files.iter().cloned());
    let (code, out) = lint(&all);
    assert_eq!(code, 0, "cfn-lint on {} templates:\n{out}", files.len());
    assert!(out.trim().is_empty(), "cfn-lint printed findings:\n{out}");

    // The lint can fail: a property the resource does not have is an error (exit bit 2).
    let mut broken: Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).expect("read")).expect("json");
    broken["Resources"]["PrimaryElb"]["Properties"]["HealthChecks"] = Value::Bool(true);
    let bf = dir.join("broken.json");
    std::fs::write(&bf, broken.to_string()).expect("write");
    let (code, out) = lint(std::slice::from_ref(&bf));
    assert!(
        code & 2 == 2,
        "cfn-lint passed a broken template ({code}):\n{out}"
    );

    // spiloctl's own checks: every generated template passes, an edited one is refused.
    for f in &files {
        let (code, out, err) = spiloctl_aws(&["check-template".into(), f.display().to_string()]);
        assert_eq!(code, 0, "{}: {out}{err}", f.display());
    }
    let mut edited: Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).expect("read")).expect("json");
    edited["Resources"]["PrimaryElb"]["Properties"]["HealthCheck"]["Interval"] = Value::from("301");
    let ef = dir.join("edited.json");
    std::fs::write(&ef, edited.to_string()).expect("write");
    let (code, _, err) = spiloctl_aws(&["check-template".into(), ef.display().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("PrimaryElb.HealthCheck.Interval"), "{err}");
    // … and cfn-lint lets that one through: the check is spilo's to make.
    let (code, out) = lint(std::slice::from_ref(&ef));
    assert_eq!(
        code, 0,
        "cfn-lint now checks health-check intervals:\n{out}"
    );

    // Bad settings: a non-zero exit naming the setting, nothing on standard output.
    for (extra, field) in [
        (vec!["--health-check-timeout", "5"], "health_check.timeout"),
        (
            vec!["--health-check-interval", "3"],
            "health_check.interval",
        ),
        (
            vec!["--healthy-threshold", "11"],
            "health_check.healthy_threshold",
        ),
        (vec!["--idle-timeout", "4000"], "idle_timeout"),
        (
            vec![
                "--subnet",
                "subnet-0000000a=us-east-1a",
                "--subnet",
                "subnet-0000000b=us-east-1a",
            ],
            "subnets",
        ),
        (vec!["--scope", "Not_A_Name"], "scope"),
        (vec!["--volume-type", "io2"], "volume.iops"),
    ] {
        let mut args: Vec<String> = ["template", "--scope", "orders", "--etcd-host", "e:2379"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let (code, out, err) = spiloctl_aws(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} wrote a template");
        assert!(err.contains(field), "{args:?}: {err} does not name {field}");
    }
    let (code, _, err) = spiloctl_aws(&[
        "template".into(),
        "--from".into(),
        dir.join("missing.yml").display().to_string(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing.yml"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Summarises one deployed stack with boto3 (prints JSON).
const SUMMARY: &str = r#"
stack = sys.argv[1] if len(sys.argv) > 1 else STACK
st = cloudformation.describe_stacks(StackName=stack)['Stacks'][0]
res = {r['LogicalResourceId']: r.get('PhysicalResourceId') for r in cloudformation.describe_stack_resources(StackName=stack)['StackResources'] if r.get('LogicalResourceId')}
out = {'status': st['StackStatus'], 'outputs': {o['OutputKey']: o['OutputValue'] for o in st.get('Outputs', [])}, 'resources': sorted(res)}
g = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[stack])['AutoScalingGroups'][0]
out['asg'] = {'health': g['HealthCheckType'], 'min': g['MinSize'], 'max': g['MaxSize'], 'desired': g['DesiredCapacity'], 'subnets': sorted(g['VPCZoneIdentifier'].split(',')), 'instances': len(g['Instances'])}
elbs = {}
for d in elb.describe_load_balancers()['LoadBalancerDescriptions']:
    if d['LoadBalancerName'] in (stack, stack + '-repl'):
        elbs[d['LoadBalancerName']] = {'scheme': d['Scheme'], 'check': d['HealthCheck'], 'dns': d['DNSName'], 'listener': d['ListenerDescriptions'][0]['Listener'], 'groups': d['SecurityGroups']}
out['elbs'] = elbs
zone = route53.list_hosted_zones()['HostedZones'][0]['Id']
out['records'] = {r['Name']: {'type': r['Type'], 'ttl': r.get('TTL'), 'value': r['ResourceRecords'][0]['Value']} for r in route53.list_resource_record_sets(HostedZoneId=zone)['ResourceRecordSets'] if r['Type'] == 'CNAME'}
groups = {}
for logical in ['NodeSecurityGroup', 'PrimaryElbSecurityGroup', 'ReplicaElbSecurityGroup']:
    if logical not in res: continue
    q = res[logical]
    gid = ec2.describe_security_groups(Filters=[{'Name': 'group-id' if q.startswith('sg-') else 'group-name', 'Values': [q]}])['SecurityGroups'][0]
    groups[logical] = {'id': gid['GroupId'], 'vpc': gid['VpcId'], 'rules': sorted([p.get('FromPort'), r['CidrIp']] for p in gid['IpPermissions'] for r in p.get('IpRanges', [])) + sorted([p.get('FromPort'), r['GroupId']] for p in gid['IpPermissions'] for r in p.get('UserIdGroupPairs', []))}
out['groups'] = groups
b = res['Bucket']
enc = s3.get_bucket_encryption(Bucket=b)['ServerSideEncryptionConfiguration']['Rules'][0]['ApplyServerSideEncryptionByDefault']
out['bucket'] = {'name': b, 'sse': enc['SSEAlgorithm'], 'key': enc.get('KMSMasterKeyID')}
# (moto keeps a stack's key policy as a dict and fails DescribeKey on it: the alias's target
# and the key listing say the same.)
keys = [k['KeyArn'] for k in kms.list_keys()['Keys'] if k['KeyId'] == res['KmsKey'] or k['KeyArn'] == res['KmsKey']]
out['key'] = {'arn': keys[0] if keys else None, 'aliases': {a['AliasName']: a.get('TargetKeyId') for a in kms.list_aliases()['Aliases'] if a['AliasName'].startswith('alias/spilo-')}}
role = res['NodeRole']
out['policy'] = iam.get_role_policy(RoleName=role, PolicyName='spilo-node')['PolicyDocument']
out['profile_roles'] = [r['RoleName'] for r in iam.get_instance_profile(InstanceProfileName=res['NodeInstanceProfile'])['InstanceProfile']['Roles']]
lt = ec2.describe_launch_template_versions(LaunchTemplateId=res['LaunchTemplate'])['LaunchTemplateVersions'][0]['LaunchTemplateData']
out['launch'] = {'metadata': lt.get('MetadataOptions'), 'volume': lt['BlockDeviceMappings'][0]['Ebs'], 'user_data': base64.b64decode(lt['UserData']).decode()}
print(json.dumps(out))
"#;

/// Fills what the instance fills at boot, as the user data's `sed` does.
fn node_config_of(user_data: &str, replica_elb: Option<&str>, data_dir: &Path) -> String {
    let start = "cat >/etc/spilo/node.yml <<'SPILO_NODE_CONFIG'\n";
    let from = user_data
        .find(start)
        .expect("the user data writes the node config")
        + start.len();
    let len = user_data[from..]
        .find("SPILO_NODE_CONFIG\n")
        .expect("the heredoc ends");
    let mut cfg = user_data[from..from + len]
        .replace("@IP@", "10.0.0.10")
        .replace("@INSTANCE_ID@", "i-0123456789abcdef0")
        .replace("@BIN_DIR@", PG_BIN_DIR)
        .replace(
            "/data/pgdata",
            &data_dir.join("pgdata").display().to_string(),
        )
        .replace(
            "/data/pgpass",
            &data_dir.join("pgpass").display().to_string(),
        );
    cfg = match replica_elb {
        Some(name) => cfg.replace("@REPLICA_ELB@", name),
        None => cfg
            .lines()
            .filter(|l| !l.contains("@REPLICA_ELB@"))
            .map(|l| format!("{l}\n"))
            .collect(),
    };
    cfg
}

#[test]
fn templates_deploy_on_motos_cloudformation() {
    let moto = Moto::start();
    let base = moto.boto_stack(
        "vpc = ec2.create_vpc(CidrBlock='10.0.0.0/16')['Vpc']['VpcId']\n\
         subs = [ec2.create_subnet(VpcId=vpc, CidrBlock=f'10.0.{i}.0/24', AvailabilityZone=f'us-east-1{z}')['Subnet']['SubnetId'] for i, z in enumerate('abc')]\n\
         ami = ec2.describe_images()['Images'][0]['ImageId']\n\
         route53.create_hosted_zone(Name='example.org.', CallerReference='spilo-test')\n\
         print(json.dumps({'vpc': vpc, 'subnets': subs, 'ami': ami}))",
    );
    let vpc = base["vpc"].as_str().expect("vpc").to_string();
    let ami = base["ami"].as_str().expect("ami").to_string();
    let all: Vec<String> = serde_json::from_value(base["subnets"].clone()).expect("subnets");
    let dir = tmp_dir("deploy");
    plugin_lib("libspilo_lb_elb_plugin.so");
    plugin_lib("libspilo_storage_s3_plugin.so");
    for n in 1..=3usize {
        for replica in [true, false] {
            let scope = format!("spilo-{n}az-{}", if replica { "ro" } else { "rw" });
            let subnets = &all[..n];
            let file = dir.join(format!("{scope}.yaml"));
            write_template(&file, &scope, subnets, replica, "yaml");
            let body = std::fs::read_to_string(&file).expect("read");
            // SubnetIds is passed: moto 5.2 does not split a List parameter's default (the
            // default itself is checked by cfn-lint and the unit tests).
            let v = moto.boto_stack(&format!(
                "cloudformation.create_stack(StackName={scope:?}, TemplateBody=open({path:?}).read(), Capabilities=['CAPABILITY_IAM'], Parameters=[\n\
                   dict(ParameterKey='VpcId', ParameterValue={vpc:?}),\n\
                   dict(ParameterKey='SubnetIds', ParameterValue={subnet_list:?}),\n\
                   dict(ParameterKey='ImageId', ParameterValue={ami:?}),\n\
                   dict(ParameterKey='SuperuserPassword', ParameterValue='superuser-secret-1'),\n\
                   dict(ParameterKey='ReplicationPassword', ParameterValue='replication-secret-1')])\n\
                 STACK = {scope:?}\n{SUMMARY}",
                path = file.display().to_string(),
                subnet_list = subnets.join(","),
            ));
            assert!(body.contains("HealthCheckType: EC2"), "{body}");
            check_stack(&v, &scope, subnets, replica, &vpc);
            // The node configuration the user data writes: the daemon accepts it.
            let user_data = v["launch"]["user_data"].as_str().expect("user data");
            let script = dir.join(format!("{scope}.sh"));
            std::fs::write(&script, user_data).expect("write");
            let out = Command::new("bash")
                .arg("-n")
                .arg(&script)
                .output()
                .expect("bash -n");
            assert!(
                out.status.success(),
                "the user data is not valid bash: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !user_data.contains("${"),
                "Fn::Sub left a reference unfilled in the user data"
            );
            let replica_name = format!("{scope}-repl");
            let cfg = node_config_of(
                user_data,
                replica.then_some(replica_name.as_str()),
                &dir.join(&scope),
            );
            assert!(cfg.contains("password: 'superuser-secret-1'"), "{cfg}");
            assert!(
                cfg.contains(&format!(
                    "bucket: '{}'",
                    v["bucket"]["name"].as_str().unwrap()
                )),
                "{cfg}"
            );
            let cfg_file = dir.join(format!("{scope}.yml"));
            std::fs::write(&cfg_file, &cfg).expect("write");
            let mut cmd = Command::new(&bins().spilo);
            cmd.args(["--validate", "--offline"]).arg(&cfg_file);
            let out = run_with_timeout(cmd, Duration::from_secs(30)).expect("spilo --validate");
            assert!(
                out.status.success(),
                "spilo refuses the stack's node config:\n{cfg}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn check_stack(v: &Value, scope: &str, subnets: &[String], replica: bool, vpc: &str) {
    assert_eq!(v["status"], "CREATE_COMPLETE", "{v}");
    let asg = &v["asg"];
    assert_eq!(asg["health"], "EC2");
    assert_eq!(asg["min"], 3, "one node per subnet, at least 3");
    assert_eq!(asg["max"], 3);
    assert_eq!(asg["instances"], 3);
    let mut want: Vec<&str> = subnets.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(asg["subnets"], serde_json::json!(want));
    let elbs = v["elbs"].as_object().expect("elbs");
    assert_eq!(elbs.len(), if replica { 2 } else { 1 }, "{elbs:?}");
    let repl = format!("{scope}-repl");
    for (name, path) in [(scope, "/primary"), (repl.as_str(), "/replica")] {
        let Some(e) = elbs.get(name) else {
            assert!(!replica && name == repl, "{name} missing");
            continue;
        };
        assert_eq!(e["scheme"], "internal");
        assert_eq!(e["check"]["Target"], format!("HTTP:8008{path}"));
        assert_eq!(e["check"]["Interval"], 5);
        assert_eq!(e["check"]["Timeout"], 3);
        assert_eq!(e["check"]["HealthyThreshold"], 2);
        assert_eq!(e["check"]["UnhealthyThreshold"], 2);
        assert_eq!(e["listener"]["LoadBalancerPort"], 5432);
        let record = &v["records"][format!("{name}.example.org.")];
        assert_eq!(record["type"], "CNAME", "{}", v["records"]);
        assert_eq!(record["ttl"], 20);
        assert_eq!(record["value"], e["dns"]);
    }
    if !replica {
        assert!(v["records"].get(format!("{repl}.example.org.")).is_none());
        assert!(v["outputs"].get("ReplicaEndpoint").is_none());
    }
    assert_eq!(
        v["outputs"]["PrimaryEndpoint"],
        format!("{scope}.example.org.")
    );
    // Security groups: in the VPC; nodes open to admins (22, 5432, 8008), monitoring (8008),
    // their peers and the ELBs (5432, 8008); each ELB open to the VPC on 5432.
    let g = &v["groups"];
    let node = &g["NodeSecurityGroup"];
    assert_eq!(node["vpc"], vpc);
    let rules: Vec<(u64, String)> = node["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                r[0].as_u64().unwrap_or(0),
                r[1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (port, from) in [
        (22, "10.1.0.0/16"),
        (5432, "10.1.0.0/16"),
        (8008, "10.1.0.0/16"),
        (8008, "10.2.0.0/16"),
    ] {
        assert!(
            rules.contains(&(port, from.to_string())),
            "{port} from {from}: {rules:?}"
        );
    }
    let node_id = node["id"].as_str().expect("id").to_string();
    let primary_id = g["PrimaryElbSecurityGroup"]["id"]
        .as_str()
        .expect("elb sg")
        .to_string();
    for port in [5432, 8008] {
        assert!(
            rules.contains(&(port, node_id.clone())),
            "peers on {port}: {rules:?}"
        );
        assert!(
            rules.contains(&(port, primary_id.clone())),
            "ELB on {port}: {rules:?}"
        );
    }
    assert!(
        !rules
            .iter()
            .any(|(p, from)| *p == 22 && from == "0.0.0.0/0"),
        "ssh open to the world: {rules:?}"
    );
    assert_eq!(
        g["PrimaryElbSecurityGroup"]["rules"],
        serde_json::json!([[5432, "10.0.0.0/8"]])
    );
    assert_eq!(g.get("ReplicaElbSecurityGroup").is_some(), replica);
    // Bucket encrypted with the stack's key; the key has its alias.
    let key = v["key"]["arn"].as_str().expect("key arn");
    assert_eq!(v["bucket"]["sse"], "aws:kms");
    assert_eq!(v["bucket"]["key"], key);
    assert_eq!(v["outputs"]["KmsKeyArn"], key);
    assert_eq!(v["outputs"]["Bucket"], v["bucket"]["name"]);
    let target = v["key"]["aliases"][format!("alias/spilo-{scope}")]
        .as_str()
        .expect("the key's alias");
    assert!(
        key.ends_with(&format!("key/{target}")),
        "{key} vs alias target {target}"
    );
    // The role: the cluster's prefix, the one key, the cluster's ELBs and group.
    // (moto 5.2 answers GetRolePolicy for a stack's role with the Python repr of the document,
    // single quotes; read either form.)
    let policy = v["policy"].to_string().replace('\'', "\"");
    let bucket = v["bucket"]["name"].as_str().expect("bucket");
    assert!(
        policy.contains(&format!("arn:aws:s3:::{bucket}/spilo/{scope}/*")),
        "{policy}"
    );
    assert!(policy.contains(key), "{policy}");
    assert!(
        policy.contains(&format!("loadbalancer/{scope}\"")),
        "{policy}"
    );
    assert!(
        policy.contains(&format!("autoScalingGroupName/{scope}\"")),
        "{policy}"
    );
    assert!(
        policy.contains("autoscaling:CompleteLifecycleAction"),
        "{policy}"
    );
    assert!(
        !policy.contains("\"s3:*\"") && !policy.contains("\"kms:*\""),
        "{policy}"
    );
    assert_eq!(v["profile_roles"].as_array().map(Vec::len), Some(1));
    // IMDSv2 only; the data volume encrypted with the key.
    assert_eq!(v["launch"]["metadata"]["HttpTokens"], "required");
    assert_eq!(v["launch"]["volume"]["Encrypted"], true);
    assert_eq!(v["launch"]["volume"]["KmsKeyId"], key);
}
