//! The faults: which ones exist, how one is picked from the seed, and how it is applied and
//! healed on the real processes and network.

use std::time::Duration;

use crate::dcs::Dcs;
use crate::net::Topology;
use crate::nodes::Node;
use crate::report::Expect;

/// A small deterministic generator (xorshift64*), so a seed gives the same schedule.
pub struct Rng(u64);

impl Rng {
    /// From a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Uniform in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// The kinds of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SIGKILL of the daemon (PostgreSQL keeps running, the fence guards it).
    KillDaemon,
    /// SIGKILL of the postmaster (the daemon restarts it or fails over).
    KillPostmaster,
    /// SIGKILL of everything in the node's namespace.
    KillNode,
    /// SIGSTOP of the daemon, SIGCONT at heal.
    FreezeDaemon,
    /// Node ↔ DCS cut both ways.
    PartitionDcs,
    /// Node ↔ every other node and DCS server (the checkers still reach it).
    Isolate,
    /// Packets from the DCS to the node dropped; the node's own still arrive.
    AsymmetricDcs,
    /// Packets from the node to the other nodes dropped; theirs still arrive.
    AsymmetricPeers,
    /// SIGKILL of the DCS leader (etcd raft leader, ZooKeeper leader); quorum kept.
    KillDcsLeader,
    /// Two of the three DCS servers killed.
    DcsQuorumLoss,
    /// A replica cut from the DCS, then a switchover asked of the primary.
    SwitchoverDuringFault,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 11] = [
        Kind::KillDaemon,
        Kind::KillPostmaster,
        Kind::KillNode,
        Kind::FreezeDaemon,
        Kind::PartitionDcs,
        Kind::Isolate,
        Kind::AsymmetricDcs,
        Kind::AsymmetricPeers,
        Kind::KillDcsLeader,
        Kind::DcsQuorumLoss,
        Kind::SwitchoverDuringFault,
    ];

    /// The report's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::KillDaemon => "kill-daemon",
            Kind::KillPostmaster => "kill-postmaster",
            Kind::KillNode => "kill-node",
            Kind::FreezeDaemon => "freeze-daemon",
            Kind::PartitionDcs => "partition-dcs",
            Kind::Isolate => "isolate-node",
            Kind::AsymmetricDcs => "asymmetric-dcs",
            Kind::AsymmetricPeers => "asymmetric-peers",
            Kind::KillDcsLeader => "kill-dcs-leader",
            Kind::DcsQuorumLoss => "dcs-quorum-loss",
            Kind::SwitchoverDuringFault => "switchover-during-fault",
        }
    }

    /// Whether the fault hits one node (then the target is picked).
    fn targets_node(self) -> bool {
        !matches!(
            self,
            Kind::KillDcsLeader | Kind::DcsQuorumLoss | Kind::SwitchoverDuringFault
        )
    }
}

/// A fault picked, before it is applied.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The kind.
    pub kind: Kind,
    /// The node index it hits (for node faults).
    pub node: Option<usize>,
    /// How long it lasts before the heal.
    pub hold: Duration,
    /// A random number for choices made when the fault is applied (which replica to cut).
    pub aux: u64,
}

/// What the picks may choose from (`--faults`, `--target primary`, `--hold`).
#[derive(Clone, Debug)]
pub struct Menu {
    /// The kinds allowed.
    pub kinds: Vec<Kind>,
    /// Node faults always hit the primary.
    pub primary_only: bool,
    /// A fixed hold instead of a random one.
    pub hold: Option<Duration>,
}

impl Default for Menu {
    fn default() -> Menu {
        Menu {
            kinds: Kind::ALL.to_vec(),
            primary_only: false,
            hold: None,
        }
    }
}

impl Menu {
    /// Parses a comma-separated list of kind names.
    pub fn parse_kinds(list: &str) -> Result<Vec<Kind>, String> {
        list.split(',')
            .map(|name| {
                Kind::ALL
                    .into_iter()
                    .find(|k| k.name() == name.trim())
                    .ok_or_else(|| {
                        format!(
                            "--faults: unknown fault {name:?}; known: {}",
                            Kind::ALL.map(Kind::name).join(", ")
                        )
                    })
            })
            .collect()
    }
}

/// Picks the next fault: the primary is the target half of the time.
pub fn pick(rng: &mut Rng, menu: &Menu, primary: Option<usize>, nodes: usize, ttl: u64) -> Plan {
    let kind = menu.kinds[rng.below(menu.kinds.len() as u64) as usize];
    let node = kind.targets_node().then(|| match primary {
        Some(p) if menu.primary_only || rng.below(2) == 0 => p,
        _ => rng.below(nodes as u64) as usize,
    });
    let ttl_ms = ttl * 1000;
    let hold = match kind {
        _ if menu.hold.is_some() => menu.hold.unwrap_or_default(),
        // Shorter and longer than the lease, so both outcomes happen.
        Kind::FreezeDaemon | Kind::PartitionDcs | Kind::Isolate | Kind::AsymmetricDcs => {
            rng.millis(1_000, ttl_ms * 2)
        }
        Kind::DcsQuorumLoss => rng.millis(ttl_ms / 2, ttl_ms * 2),
        _ => rng.millis(1_000, ttl_ms),
    };
    let aux = rng.next();
    Plan {
        kind,
        node,
        hold,
        aux,
    }
}

/// The expectation for `plan` given which node was primary.
pub fn expectation(plan: &Plan, primary: Option<usize>) -> (Expect, bool) {
    let on_primary = plan.node.is_some() && plan.node == primary;
    match plan.kind {
        Kind::SwitchoverDuringFault => (Expect::Failover, false),
        Kind::DcsQuorumLoss => (Expect::Either, false),
        Kind::KillDcsLeader => (Expect::NoFailover, false),
        _ if !on_primary => (Expect::NoFailover, false),
        // Kill -9 of the postmaster: restarted in place, or a failover if that takes too long.
        Kind::KillPostmaster => (Expect::Either, false),
        // Short faults end before the lease does.
        Kind::FreezeDaemon | Kind::PartitionDcs | Kind::Isolate | Kind::AsymmetricDcs => {
            (Expect::Either, true)
        }
        // A primary's daemon killed: PostgreSQL runs on fenced, so a failover is allowed
        // (restarted daemons pick their old role back up when quick enough).
        Kind::KillDaemon => (Expect::Either, true),
        Kind::KillNode => (Expect::Either, false),
        Kind::AsymmetricPeers => (Expect::NoFailover, false),
    }
}

/// What has to be undone at heal time.
#[derive(Default)]
pub struct Applied {
    /// Daemons to restart.
    pub restart: Vec<usize>,
    /// Daemons to continue.
    pub thaw: Vec<usize>,
    /// DCS servers to restart.
    pub dcs_restart: bool,
    /// Network cuts to remove.
    pub cuts: bool,
    /// A line for the log (what exactly happened).
    pub detail: String,
}

/// Applies `plan`.
pub fn apply(
    plan: &Plan,
    topo: &mut Topology,
    dcs: &mut Dcs,
    nodes: &mut [Node],
    primary: Option<usize>,
) -> Result<Applied, String> {
    let mut a = Applied::default();
    let dcs_names: Vec<String> = dcs.hosts.iter().map(|h| h.name.clone()).collect();
    let node_names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    match plan.kind {
        Kind::KillDaemon => {
            let i = plan.node.expect("node fault");
            nodes[i].signal_daemon(libc::SIGKILL);
            a.restart.push(i);
            a.detail = format!("SIGKILL daemon of {}", nodes[i].name);
        }
        Kind::KillPostmaster => {
            let i = plan.node.expect("node fault");
            match nodes[i].postmaster_pid() {
                Some(pid) => {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    a.detail = format!("SIGKILL postmaster {pid} of {}", nodes[i].name);
                }
                None => a.detail = format!("{}: no postmaster running", nodes[i].name),
            }
        }
        Kind::KillNode => {
            let i = plan.node.expect("node fault");
            let pids = crate::net::kill_namespace(&nodes[i].host.ns);
            nodes[i].signal_daemon(libc::SIGKILL);
            a.restart.push(i);
            a.detail = format!("SIGKILL of {} processes in {}", pids.len(), nodes[i].name);
        }
        Kind::FreezeDaemon => {
            let i = plan.node.expect("node fault");
            nodes[i].signal_daemon(libc::SIGSTOP);
            a.thaw.push(i);
            a.detail = format!("SIGSTOP daemon of {}", nodes[i].name);
        }
        Kind::PartitionDcs => {
            let i = plan.node.expect("node fault");
            for d in &dcs_names {
                topo.cut_both(&node_names[i], d)?;
            }
            a.cuts = true;
            a.detail = format!("{} <-/-> DCS", node_names[i]);
        }
        Kind::Isolate => {
            let i = plan.node.expect("node fault");
            for other in dcs_names.iter().chain(node_names.iter()) {
                if *other != node_names[i] {
                    topo.cut_both(&node_names[i], other)?;
                }
            }
            a.cuts = true;
            a.detail = format!("{} isolated from every node and DCS server", node_names[i]);
        }
        Kind::AsymmetricDcs => {
            let i = plan.node.expect("node fault");
            for d in &dcs_names {
                topo.cut(d, &node_names[i])?;
            }
            a.cuts = true;
            a.detail = format!("DCS -/-> {} (its own packets still arrive)", node_names[i]);
        }
        Kind::AsymmetricPeers => {
            let i = plan.node.expect("node fault");
            for other in &node_names {
                if *other != node_names[i] {
                    topo.cut(&node_names[i], other)?;
                }
            }
            a.cuts = true;
            a.detail = format!("{} -/-> other nodes (theirs still arrive)", node_names[i]);
        }
        Kind::KillDcsLeader => match dcs.leader() {
            Some(l) => {
                dcs.kill(l);
                a.dcs_restart = true;
                a.detail = format!("SIGKILL DCS leader {}", dcs.hosts[l].name);
            }
            None => a.detail = "no DCS leader found".into(),
        },
        Kind::DcsQuorumLoss => {
            let keep = dcs.leader().map(|l| (l + 1) % 3).unwrap_or(0);
            let mut killed = Vec::new();
            for i in 0..dcs.hosts.len() {
                if i != keep {
                    dcs.kill(i);
                    killed.push(dcs.hosts[i].name.clone());
                }
            }
            a.dcs_restart = true;
            a.detail = format!("SIGKILL DCS servers {}", killed.join(", "));
        }
        Kind::SwitchoverDuringFault => {
            let Some(p) = primary else {
                a.detail = "no primary: nothing to switch over".into();
                return Ok(a);
            };
            let replicas: Vec<usize> = (0..nodes.len()).filter(|&k| k != p).collect();
            let cut = replicas[(plan.aux % replicas.len() as u64) as usize];
            for d in &dcs_names {
                topo.cut_both(&node_names[cut], d)?;
            }
            a.cuts = true;
            let body = format!("{{\"leader\": \"{}\"}}", node_names[p]);
            let answer = nodes[p].post("/switchover", &body, Duration::from_secs(30));
            a.detail = format!(
                "{} <-/-> DCS, then POST /switchover on {}: {}",
                node_names[cut],
                node_names[p],
                match answer {
                    Ok((code, text)) => format!("{code} {}", text.trim()),
                    Err(e) => e,
                }
            );
        }
    }
    Ok(a)
}

/// Undoes what `apply` did.
pub fn heal(
    a: &Applied,
    topo: &mut Topology,
    dcs: &mut Dcs,
    nodes: &mut [Node],
) -> Result<(), String> {
    if a.cuts {
        topo.heal()?;
    }
    for &i in &a.thaw {
        nodes[i].signal_daemon(libc::SIGCONT);
    }
    if a.dcs_restart {
        dcs.start_all()?;
    }
    for &i in &a.restart {
        nodes[i].start()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_and_every_kind_comes_up() {
        let schedule = |seed| {
            let mut r = Rng::new(seed);
            (0..200)
                .map(|_| {
                    let p = pick(&mut r, &Menu::default(), Some(1), 3, 10);
                    (p.kind, p.node, p.hold)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(schedule(7), schedule(7));
        assert_ne!(schedule(7), schedule(8));
        let s = schedule(7);
        for k in Kind::ALL {
            assert!(
                s.iter().any(|(kind, _, _)| *kind == k),
                "{k:?} never picked"
            );
        }
        // Node faults name a node in range; the others none.
        for (kind, node, hold) in s {
            assert_eq!(node.is_some(), kind.targets_node());
            assert!(node.unwrap_or(0) < 3);
            assert!(hold >= Duration::from_millis(1000) && hold <= Duration::from_secs(20));
        }
    }

    #[test]
    fn a_restricted_menu_is_obeyed() {
        let menu = Menu {
            kinds: Menu::parse_kinds("freeze-daemon,kill-node").unwrap(),
            primary_only: true,
            hold: Some(Duration::from_secs(15)),
        };
        let mut r = Rng::new(3);
        for _ in 0..50 {
            let p = pick(&mut r, &menu, Some(2), 3, 10);
            assert!(matches!(p.kind, Kind::FreezeDaemon | Kind::KillNode));
            assert_eq!((p.node, p.hold), (Some(2), Duration::from_secs(15)));
        }
        let e = Menu::parse_kinds("freeze-daemon,nap").unwrap_err();
        assert!(e.contains("\"nap\"") && e.contains("kill-node"), "{e}");
    }

    #[test]
    fn faults_on_replicas_expect_no_failover() {
        let plan = Plan {
            kind: Kind::PartitionDcs,
            node: Some(2),
            hold: Duration::from_secs(1),
            aux: 0,
        };
        assert_eq!(expectation(&plan, Some(0)), (Expect::NoFailover, false));
        assert_eq!(expectation(&plan, Some(2)), (Expect::Either, true));
    }
}
