//! The chaos topology: one network namespace per node and per DCS server, each with a veth
//! into one bridge in the root namespace, on a private /24 that exists only here; the root
//! namespace keeps `.1` on the bridge for the checkers. Partitions are nftables `drop` rules
//! inside the namespaces (silent loss, as on a real network, never an immediate error).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Which lab (0–99): several runs can go side by side, each with its own names and /24.
static LAB: std::sync::OnceLock<u8> = std::sync::OnceLock::new();

/// Sets the lab number (once, before anything is created).
pub fn set_lab(n: u8) {
    let _ = LAB.set(n);
}

fn lab() -> u8 {
    *LAB.get_or_init(|| 0)
}

/// The bridge in the root namespace.
pub fn bridge() -> String {
    format!("spchaos{}", lab())
}

/// The prefix of every namespace and host-side veth of this lab.
pub fn prefix() -> String {
    format!("spc{}-", lab())
}

/// The first three octets of the lab's test network (10.213.77+lab.0/24).
pub fn net() -> String {
    format!("10.213.{}", 77 + u32::from(lab()))
}

/// The root namespace's address on the bridge (the checkers').
pub fn root_addr() -> String {
    format!("{}.1", net())
}

/// Runs a command, returning its stdout or an error naming it and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {} {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `args` inside namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// One host (namespace) of the topology.
#[derive(Clone, Debug)]
pub struct Host {
    /// Short name, e.g. `n1` or `d2`.
    pub name: String,
    /// The namespace, `spc-<name>`.
    pub ns: String,
    /// Its address on the bridge.
    pub addr: String,
}

/// The namespaces and bridge; removed on drop (every process in them is killed first).
pub struct Topology {
    /// Every host, nodes first.
    pub hosts: Vec<Host>,
    /// The current cuts: (from host, to host), meaning packets from `from` to `to` are dropped.
    cuts: BTreeSet<(String, String)>,
}

impl Topology {
    /// Checks that this can run here (root, `ip`, `nft`).
    pub fn preflight() -> Result<(), String> {
        if unsafe { libc::geteuid() } != 0 {
            return Err("the chaos suite creates network namespaces and must run as root".into());
        }
        run("ip", &["-V"]).map_err(|e| format!("iproute2 is needed: {e}"))?;
        run("nft", &["--version"])
            .map_err(|e| format!("nftables is needed (apt-get install nftables): {e}"))?;
        Ok(())
    }

    /// Removes whatever an earlier run left behind (processes, namespaces, veths, bridge).
    pub fn remove_leftovers() {
        if let Ok(list) = run("ip", &["netns", "list"]) {
            for line in list.lines() {
                let ns = line.split_whitespace().next().unwrap_or("");
                if ns.starts_with(&prefix()) {
                    kill_namespace(ns);
                    let _ = run("ip", &["netns", "del", ns]);
                }
            }
        }
        if let Ok(links) = run("ip", &["-o", "link", "show"]) {
            for line in links.lines() {
                if let Some(name) = line.split(": ").nth(1) {
                    let name = name.split('@').next().unwrap_or("");
                    if name.starts_with(&prefix()) || name == bridge() {
                        let _ = run("ip", &["link", "del", name]);
                    }
                }
            }
        }
    }

    /// Creates the bridge and one namespace per name in `names` (`n1`, `d1`, …), the host
    /// with index `i` at address `.(base + i)` where `base` depends on the name's letter:
    /// nodes `n*` at .11+, DCS servers `d*` at .21+.
    pub fn create(names: &[&str]) -> Result<Topology, String> {
        Topology::remove_leftovers();
        run("ip", &["link", "add", &bridge(), "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", root_addr()),
                "dev",
                &bridge(),
            ],
        )?;
        run("ip", &["link", "set", &bridge(), "up"])?;
        let mut topo = Topology {
            hosts: Vec::new(),
            cuts: BTreeSet::new(),
        };
        for name in names {
            let (letter, num) = name.split_at(1);
            let num: u32 = num
                .parse()
                .map_err(|_| format!("host name {name}: expected a letter and a number"))?;
            let base = match letter {
                "n" => 10,
                "d" => 20,
                _ => return Err(format!("host name {name}: expected n<k> or d<k>")),
            };
            let host = Host {
                name: name.to_string(),
                ns: format!("{}{name}", prefix()),
                addr: format!("{}.{}", net(), base + num),
            };
            let veth = format!("{}{name}h", prefix());
            run("ip", &["netns", "add", &host.ns])?;
            topo.hosts.push(host.clone());
            in_ns(&host.ns, &["ip", "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &host.ns,
                ],
            )?;
            run("ip", &["link", "set", &veth, "master", &bridge()])?;
            run("ip", &["link", "set", &veth, "up"])?;
            in_ns(
                &host.ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", host.addr),
                    "dev",
                    "eth0",
                ],
            )?;
            in_ns(&host.ns, &["ip", "link", "set", "eth0", "up"])?;
            // One table per namespace; the chains drop what `cuts` says.
            in_ns(
                &host.ns,
                &[
                    "nft",
                    "add table inet chaos; \
                     add chain inet chaos input { type filter hook input priority 0; policy accept; }; \
                     add chain inet chaos output { type filter hook output priority 0; policy accept; }",
                ],
            )?;
        }
        // The bridge forwards between its ports without the root namespace's firewall.
        let _ = std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "0");
        topo.wait_reachable()?;
        Ok(topo)
    }

    /// Waits until the root namespace reaches every host (the links come up asynchronously).
    fn wait_reachable(&self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for h in &self.hosts {
            loop {
                // An ARP-resolvable neighbour: connect to a closed port gets RST at once.
                let addr: std::net::SocketAddr = format!("{}:9", h.addr).parse().expect("addr");
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                    Err(e) => {
                        if std::time::Instant::now() > deadline {
                            return Err(format!("{} ({}) not reachable: {e}", h.name, h.addr));
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
        Ok(())
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Drops packets from `from` to `to` (one direction): an output rule in `from` and an
    /// input rule in `to`, so neither side's stack sees them.
    pub fn cut(&mut self, from: &str, to: &str) -> Result<(), String> {
        if !self.cuts.insert((from.to_string(), to.to_string())) {
            return Ok(());
        }
        let (f, t) = (self.host(from).clone(), self.host(to).clone());
        in_ns(
            &f.ns,
            &[
                "nft",
                &format!("add rule inet chaos output ip daddr {} drop", t.addr),
            ],
        )?;
        in_ns(
            &t.ns,
            &[
                "nft",
                &format!("add rule inet chaos input ip saddr {} drop", f.addr),
            ],
        )?;
        Ok(())
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&mut self, a: &str, b: &str) -> Result<(), String> {
        self.cut(a, b)?;
        self.cut(b, a)
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> Result<(), String> {
        for h in &self.hosts {
            in_ns(&h.ns, &["nft", "flush chain inet chaos input"])?;
            in_ns(&h.ns, &["nft", "flush chain inet chaos output"])?;
        }
        self.cuts.clear();
        Ok(())
    }
}

/// The pids in namespace `ns`.
pub fn ns_pids(ns: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", ns])
        .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILLs (after SIGCONT, so frozen ones die too) every process in namespace `ns`.
pub fn kill_namespace(ns: &str) -> Vec<i32> {
    let pids = ns_pids(ns);
    for p in &pids {
        unsafe {
            libc::kill(*p, libc::SIGKILL);
            libc::kill(*p, libc::SIGCONT);
        }
    }
    pids
}

impl Drop for Topology {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_namespace(&h.ns);
        }
        std::thread::sleep(Duration::from_millis(300));
        Topology::remove_leftovers();
    }
}
