//! The AWS lab (`scripts/aws-lab.sh` runs it; ignored by the plain suite): the whole flow of a
//! cluster on AWS, on this machine, against moto and local processes.
//!
//! 1. `spiloctl aws template` writes the stack; moto's CloudFormation creates it (VPC, three
//!    subnets in three zones and the hosted zone made first, as an account has them).
//! 2. Three daemons run as the group's three instances: each has the instance id moto's Auto
//!    Scaling Group gave it, served by its own IMDSv2 stub, and uses the stack's ELBs, bucket
//!    (SSE-KMS with the stack's key) and lifecycle hook.
//! 3. The primary's instance is registered in the primary ELB, the replicas in the replica
//!    ELB, and the record points at the primary ELB.
//! 4. A base backup goes into the stack's bucket.
//! 5. The primary's instance is terminated through the lifecycle (its metadata says
//!    `Terminated`): a client that writes to whichever instance the primary ELB lists never
//!    has a write refused by a member still registered; the hand-over is timed from the notice
//!    to the first write through the ELB's new member; the lifecycle action is completed.
//! 6. A replacement instance starts with an empty disk, is restored from the bucket (no copy
//!    served by the primary: only the WAL since the archive, counted by its WAL receiver),
//!    joins, and is routed by the replica ELB.
//!
//! moto lacks instance metadata with a lifecycle state and `CompleteLifecycleAction`: the
//! stubs of `tests/harness/imds.rs` and `tests/harness/autoscaling.rs` stand in. moto's ELB
//! does not route traffic: the client asks it which member is registered and connects there.
//! `SPILO_LAB_ROWS` sets how much data the cluster holds before the backup (default 20000
//! rows of 200 bytes; the long form uses more).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use spilo_tests::autoscaling::AutoScalingStub;
use spilo_tests::aws::{Moto, REGION};
use spilo_tests::bins::{bins, plugin_lib};
use spilo_tests::imds::{Imds, LIFECYCLE_STATE};
use spilo_tests::util::run_with_timeout;
use spilo_tests::{note, poll, wait_for, ClusterOpts, TestCluster};

use crate::archive::{fill_and_switch, wait_archived};
use crate::restore::backup_create;
use crate::{BOOTSTRAP, REPLICATION};

const HOOK: &str = "spilo-handover";

/// What the lab learns about the stack moto created.
struct Stack {
    bucket: String,
    key_arn: String,
    primary_elb: String,
    replica_elb: String,
    instances: Vec<String>,
}

fn node_yaml(moto: &Moto, s: &Stack, scope: &str, imds: &Imds, asg: &AutoScalingStub) -> String {
    let ep = moto.endpoint();
    format!(
        "storage:\n  type: s3\n  bucket: {bucket}\n  endpoint: {ep}\n  region: {REGION}\n  \
         access_key_id: test\n  secret_access_key: test\n  sse: aws:kms\n  sse_kms_key_id: {key}\n\
         backup:\n  schedule: ''\n  archive:\n    timeout: 30\n\
         load_balancers:\n{elb}\
         aws:\n  lifecycle_hook: {HOOK}\n  auto_scaling_group: {scope}\n  imds_endpoint: {imds}\n  \
           region: {REGION}\n  autoscaling_endpoint: {asg}\n  lifecycle_poll: 1\n  \
           access_key_id: test\n  secret_access_key: test\n",
        bucket = s.bucket,
        key = s.key_arn,
        elb = moto.elb_entry(
            &s.primary_elb,
            &s.replica_elb,
            &format!("imds_endpoint: {}", imds.endpoint())
        ),
        imds = imds.endpoint(),
        asg = asg.endpoint(),
    )
}

/// Creates the stack from `spiloctl aws template` on moto.
fn create_stack(moto: &Moto, scope: &str, dir: &std::path::Path) -> Stack {
    let base = moto.boto_stack(
        "vpc = ec2.create_vpc(CidrBlock='10.0.0.0/16')['Vpc']['VpcId']\n\
         subs = [ec2.create_subnet(VpcId=vpc, CidrBlock=f'10.0.{i}.0/24', AvailabilityZone=f'us-east-1{z}')['Subnet']['SubnetId'] for i, z in enumerate('abc')]\n\
         ami = ec2.describe_images()['Images'][0]['ImageId']\n\
         route53.create_hosted_zone(Name='example.org.', CallerReference='spilo-lab')\n\
         print(json.dumps({'vpc': vpc, 'subnets': subs, 'ami': ami}))",
    );
    let subnets: Vec<String> = serde_json::from_value(base["subnets"].clone()).expect("subnets");
    let mut cmd = std::process::Command::new(&bins().spiloctl);
    cmd.args(["aws", "template", "--scope", scope, "--replica-elb", "true"])
        .args([
            "--etcd-host",
            "127.0.0.1:2379",
            "--hosted-zone",
            "example.org.",
        ])
        .args(["--spilo-url", "https://example.org/spilo.tar.gz"])
        .args(["--vpc-cidr", "10.0.0.0/16"]);
    for (s, z) in subnets.iter().zip(["a", "b", "c"]) {
        cmd.arg("--subnet").arg(format!("{s}={REGION}{z}"));
    }
    let out = run_with_timeout(cmd, Duration::from_secs(30)).expect("spiloctl aws template");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.join("stack.yaml");
    std::fs::write(&file, &out.stdout).expect("write the template");
    let t0 = Instant::now();
    let v = moto.boto_stack(&format!(
        "cloudformation.create_stack(StackName={scope:?}, TemplateBody=open({path:?}).read(), Capabilities=['CAPABILITY_IAM'], Parameters=[\n\
           dict(ParameterKey='VpcId', ParameterValue={vpc:?}),\n\
           dict(ParameterKey='SubnetIds', ParameterValue={subs:?}),\n\
           dict(ParameterKey='ImageId', ParameterValue={ami:?}),\n\
           dict(ParameterKey='SuperuserPassword', ParameterValue='superuser-secret-1'),\n\
           dict(ParameterKey='ReplicationPassword', ParameterValue='replication-secret-1')])\n\
         st = cloudformation.describe_stacks(StackName={scope:?})['Stacks'][0]\n\
         outs = {{o['OutputKey']: o['OutputValue'] for o in st.get('Outputs', [])}}\n\
         g = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[{scope:?}])['AutoScalingGroups'][0]\n\
         print(json.dumps({{'status': st['StackStatus'], 'outputs': outs, 'instances': [i['InstanceId'] for i in g['Instances']]}}))",
        path = file.display().to_string(),
        vpc = base["vpc"].as_str().expect("vpc"),
        subs = subnets.join(","),
        ami = base["ami"].as_str().expect("ami"),
    ));
    assert_eq!(v["status"], "CREATE_COMPLETE", "{v}");
    note(format!(
        "lab: stack {scope} created on moto in {:?}: {}",
        t0.elapsed(),
        v["outputs"]
    ));
    let out = |k: &str| {
        v["outputs"][k]
            .as_str()
            .unwrap_or_else(|| panic!("output {k}: {v}"))
            .to_string()
    };
    let instances: Vec<String> = serde_json::from_value(v["instances"].clone()).expect("ids");
    assert_eq!(instances.len(), 3, "{v}");
    Stack {
        bucket: out("Bucket"),
        key_arn: out("KmsKeyArn"),
        primary_elb: scope.to_string(),
        replica_elb: format!("{scope}-repl"),
        instances,
    }
}

/// The instances registered with `elb`, sorted.
fn members(moto: &Moto, elb: &str) -> Vec<String> {
    let v = moto.boto(&format!(
        "d = elb.describe_load_balancers(LoadBalancerNames=[{elb:?}])['LoadBalancerDescriptions'][0]\n\
         print(json.dumps(sorted(i['InstanceId'] for i in d['Instances'])))"
    ));
    serde_json::from_value(v).expect("instances")
}

fn wait_members(moto: &Moto, elb: &str, want: &[&str], what: &str) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let r = poll(Duration::from_secs(30), Duration::from_millis(300), || {
        let got = members(moto, elb);
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    if let Err(last) = r {
        panic!("{what}: {elb} should hold {want:?}, holds {last}");
    }
}

#[test]
#[ignore = "the AWS lab: run by scripts/aws-lab.sh (CI runs its short form)"]
fn aws_lab() {
    let rows: u32 = std::env::var("SPILO_LAB_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let moto = Moto::start();
    plugin_lib("libspilo_lb_elb_plugin.so");
    plugin_lib(spilo_core::backup::S3_PLUGIN_FILE);
    let mut opts = ClusterOpts::named("awslab").timing(30, 2, 3);
    // Every BASE_BACKUP the primary serves is logged: the replacement must need none.
    opts.node.pg_parameters = vec![("log_replication_commands".into(), "on".into())];
    // A lab database is small and each pg_switch_wal() skips to the next 16 MiB: Spilo's
    // default 30 % of the backup's size would always send the replacement to pg_basebackup.
    opts.node.extra_postgresql = "  spilo_restore: {threshold_percentage: 10000}\n".into();
    let mut c = TestCluster::start(0, opts);
    let scope = c.scope.clone();
    let stack = create_stack(&moto, &scope, c.root());
    let asg = AutoScalingStub::start(&scope, HOOK);
    let mut imds: Vec<Imds> = Vec::new();
    let mut instance_of = std::collections::BTreeMap::new();
    for (i, id) in stack.instances.iter().enumerate() {
        let name = format!("node{}", i + 1);
        let stub = Imds::start(id);
        let mut o = c.opts.node.clone();
        o.extra_yaml = node_yaml(&moto, &stack, &scope, &stub, &asg);
        let idx = c.add_node(&name, &name, o);
        c.nodes[idx].start();
        imds.push(stub);
        instance_of.insert(name, id.clone());
    }
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let id = |n: &str| instance_of[n].clone();
    let replicas = c.others(&primary);
    let replica_ids: Vec<String> = replicas.iter().map(|n| id(n)).collect();
    let replica_refs: Vec<&str> = replica_ids.iter().map(String::as_str).collect();
    wait_members(
        &moto,
        &stack.primary_elb,
        &[&id(&primary)],
        "after bootstrap",
    );
    wait_members(&moto, &stack.replica_elb, &replica_refs, "after bootstrap");
    let record = moto.boto_stack(&format!(
        "z = route53.list_hosted_zones()['HostedZones'][0]['Id']\n\
         r = [x for x in route53.list_resource_record_sets(HostedZoneId=z)['ResourceRecordSets'] if x['Name'] == '{scope}.example.org.'][0]\n\
         d = elb.describe_load_balancers(LoadBalancerNames=[{elb:?}])['LoadBalancerDescriptions'][0]['DNSName']\n\
         print(json.dumps({{'record': r['ResourceRecords'][0]['Value'], 'elb': d, 'type': r['Type']}}))",
        elb = stack.primary_elb
    ));
    assert_eq!(record["record"], record["elb"], "{record}");
    note(format!(
        "lab: {primary} ({}) is the primary ELB's only member; {scope}.example.org. is a {} to {}",
        id(&primary),
        record["type"],
        record["elb"]
    ));

    // Data, then a base backup into the stack's bucket, then WAL after it.
    let p = c.node(&primary);
    fill_and_switch(p, rows);
    backup_create(&c);
    let objects = moto.boto_stack(&format!(
        "r = s3.list_objects_v2(Bucket={b:?}, Prefix='spilo/{scope}/wal/15/basebackups_005/')\n\
         print(json.dumps([o['Key'] for o in r.get('Contents', [])]))",
        b = stack.bucket
    ));
    let objects: Vec<String> = serde_json::from_value(objects).expect("keys");
    assert!(
        !objects.is_empty(),
        "no backup object in the stack's bucket"
    );
    let last = fill_and_switch(p, rows / 4);
    wait_archived(p, &last, Duration::from_secs(120));
    note(format!(
        "lab: backup in s3://{}/spilo/{scope}/wal/15/basebackups_005/ ({} objects), WAL archived up to {last}",
        stack.bucket,
        objects.len()
    ));

    // Terminate the primary's instance through the lifecycle. The client writes to whichever
    // instance the primary ELB lists; a refused write counts only if its member is still
    // registered right after (an ELB would not have routed a new connection to it otherwise).
    let node_of = |instance: &str| -> Option<String> {
        instance_of
            .iter()
            .find(|(_, i)| i.as_str() == instance)
            .map(|(n, _)| n.clone())
    };
    // Writes for 3 s before the notice and 3 s after the first write through the new member.
    let index: usize = primary.trim_start_matches("node").parse().expect("nodeN");
    let start = Instant::now();
    let mut t0: Option<Instant> = None;
    let (mut acked, mut refused_registered, mut refused_stale) = (0u32, 0u32, 0u32);
    let mut first_new_write: Option<(String, Duration)> = None;
    loop {
        match (t0, &first_new_write) {
            (None, _) if start.elapsed() >= Duration::from_secs(3) => {
                imds[index - 1].set(LIFECYCLE_STATE, Some("Terminated"));
                t0 = Some(Instant::now());
            }
            (Some(t), None) if t.elapsed() > Duration::from_secs(60) => break,
            (Some(t), Some((_, took))) if t.elapsed() > *took + Duration::from_secs(3) => break,
            _ => {}
        }
        let Some(member) = members(&moto, &stack.primary_elb).first().cloned() else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let Some(name) = node_of(&member) else {
            panic!("the primary ELB lists {member}, which is no instance of the group");
        };
        let value = format!("lab-{acked}");
        match c.node(&name).write_value("lab_writes", &value) {
            Ok(()) => {
                acked += 1;
                if let (Some(t), None, true) = (t0, &first_new_write, name != primary) {
                    first_new_write = Some((name, t.elapsed()));
                }
            }
            Err(_) if members(&moto, &stack.primary_elb).contains(&member) => {
                refused_registered += 1
            }
            Err(_) => refused_stale += 1,
        }
    }
    let (new_primary, took) = first_new_write.unwrap_or_else(|| {
        panic!(
            "no write through the ELB's new member in 60 s: {}",
            c.describe()
        )
    });
    note(format!(
        "lab: termination notice to {primary} -> first write through the primary ELB's new member \
         ({new_primary}) in {took:?}; {acked} writes acknowledged, {refused_registered} refused \
         by a registered member, {refused_stale} refused by a member already deregistered"
    ));
    assert_eq!(
        refused_registered, 0,
        "a write was refused by a member the primary ELB still listed"
    );
    // The same hand-over from the daemons' own logs: notice read, promotion, ELB call.
    let at = |node: &str, needle: &str| -> Option<chrono::DateTime<chrono::FixedOffset>> {
        c.node(node)
            .log_text()
            .lines()
            .rfind(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let routed = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        at(&new_primary, "read-write traffic now goes to").ok_or_else(|| "not yet".to_string())
    })
    .map(|(t, _)| t)
    .ok();
    if let (Some(notice), Some(promoted), Some(routed)) = (
        at(&primary, "is terminating this instance"),
        at(&new_primary, "promoted: PostgreSQL takes writes"),
        routed,
    ) {
        type T = chrono::DateTime<chrono::FixedOffset>;
        let ms = |a: T, b: T| (b - a).num_milliseconds();
        note(format!(
            "lab: from the logs: notice read -> {new_primary} promoted {} ms -> registered in \
             the primary ELB {} ms later (the metadata is read every 1 s; the client above also \
             waits for moto's answers, ~0.3 s each)",
            ms(notice, promoted),
            ms(promoted, routed)
        ));
    }
    let done = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        asg.completed()
            .into_iter()
            .find(|x| x.instance_id == id(&primary))
            .ok_or_else(|| format!("{:?}", asg.completed()))
    })
    .unwrap_or_else(|last| panic!("the lifecycle action was not completed: {last}"))
    .0;
    assert_eq!(done.result, "CONTINUE");
    let status = c
        .node_mut(&primary)
        .wait_daemon_exit(Duration::from_secs(60))
        .expect("the terminated node's daemon exits");
    assert!(status.success(), "{status}");
    for i in 0..acked {
        assert!(
            c.node(&new_primary)
                .has_value("lab_writes", &format!("lab-{i}"))
                .expect("read"),
            "acknowledged write lab-{i} is missing on {new_primary}"
        );
    }

    // The replacement instance: an empty disk, restored from the stack's bucket.
    let new_ids = moto.boto(
        "r = ec2.run_instances(ImageId='ami-12345678', MinCount=1, MaxCount=1, InstanceType='t3.medium')\n\
         print(json.dumps([i['InstanceId'] for i in r['Instances']]))",
    );
    let new_id: String = serde_json::from_value::<Vec<String>>(new_ids).expect("id")[0].clone();
    let copies_served = |c: &TestCluster| {
        std::fs::read_to_string(c.node(&new_primary).data_dir.join("spilo-postgres.log"))
            .unwrap_or_default()
            .matches("replication command: BASE_BACKUP")
            .count()
    };
    let copies_before = copies_served(&c);
    let stub = Imds::start(&new_id);
    let mut o = c.opts.node.clone();
    o.extra_yaml = node_yaml(&moto, &stack, &scope, &stub, &asg);
    let t1 = Instant::now();
    let idx = c.add_node("node4", "node4", o);
    c.nodes[idx].start();
    wait_for("node4 streams", REPLICATION * 4, || {
        match c
            .node("node4")
            .sql_value("SELECT status FROM pg_stat_wal_receiver")
        {
            Ok(Some(s)) if s == "streaming" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let joined = t1.elapsed();
    let (streamed, db_size) = crate::restore::sent_to_replica(&c, "node4", &new_primary);
    let log = c.node("node4").log_text();
    assert!(
        log.contains("building this replica from backup base_"),
        "the replacement was not restored from the bucket: {}",
        c.node("node4").log_tail(40)
    );
    assert_eq!(
        copies_served(&c),
        copies_before,
        "the primary served a base backup to the replacement"
    );
    c.wait_for_value(
        "node4",
        "lab_writes",
        &format!("lab-{}", acked - 1),
        REPLICATION,
    );
    let survivors: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.name != primary && n.name != new_primary)
        .map(|n| {
            if n.name == "node4" {
                new_id.clone()
            } else {
                id(&n.name)
            }
        })
        .collect();
    let survivor_refs: Vec<&str> = survivors.iter().map(String::as_str).collect();
    wait_members(
        &moto,
        &stack.replica_elb,
        &survivor_refs,
        "after the replacement joined",
    );
    wait_members(
        &moto,
        &stack.primary_elb,
        &[&id(&new_primary)],
        "after the replacement joined",
    );
    note(format!(
        "lab: replacement node4 ({new_id}) restored from the bucket and streaming in {joined:?}; \
         the primary sent it {streamed} bytes of WAL and no base backup (database {db_size} bytes)"
    ));
    for (i, s) in imds.iter().chain(std::iter::once(&stub)).enumerate() {
        assert_eq!(
            s.tokenless.load(Ordering::SeqCst),
            0,
            "stub {i}: a tokenless request"
        );
    }
}
