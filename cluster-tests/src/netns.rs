//! A private network of network namespaces for partition tests (needs root, `ip` and `nft`):
//! a bridge in the test's namespace and one namespace per `ctld` node, each with its own
//! address on the bridge's /24. Processes in the test's namespace (clients, agents, proxies)
//! reach every node through the bridge; nodes reach each other the same way, so a partition
//! between two nodes is a pair of nftables rules inside their namespaces. Everything is
//! created under unique names and deleted on drop; nothing outside the namespaces and links
//! it created is touched.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use tracing::{info, warn};

/// One node's namespace and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetHost {
    /// The network namespace (`ip netns exec NAME …` runs a process in it).
    pub netns: String,
    /// The node's IPv4 address on the bridge.
    pub ip: String,
    /// The host end of its veth pair (in the test's namespace, enslaved to the bridge).
    veth: String,
}

/// The bridge and the namespaces hanging off it.
#[derive(Debug)]
pub struct Lan {
    tag: String,
    bridge: String,
    subnet: String,
    hosts: Vec<NetHost>,
}

fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs an nftables script inside namespace `netns`.
fn nft(netns: &str, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    std::io::Write::write_all(
        child.stdin.as_mut().context("nft stdin")?,
        script.as_bytes(),
    )?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {netns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Lan {
    /// Whether this process can build one: root, and `ip` and `nft` on the PATH.
    pub fn available() -> bool {
        run(&["id", "-u"]).is_ok_and(|uid| uid.trim() == "0")
            && run(&["ip", "-V"]).is_ok()
            && run(&["nft", "--version"]).is_ok()
    }

    /// A bridge on an unused 10.231.X.0/24 with `hosts` namespaces on it.
    pub fn create(hosts: usize) -> Result<Self> {
        if hosts == 0 || hosts > 200 {
            bail!("a lan holds 1 to 200 hosts");
        }
        let used = run(&["ip", "-4", "-o", "addr", "show"])?;
        let octet = (0..64)
            .map(|_| rand::random::<u8>() % 250 + 2)
            .find(|x| !used.contains(&format!(" 10.231.{x}.")))
            .context("no free 10.231.X.0/24")?;
        let tag = format!("{:04x}", rand::random::<u16>());
        let mut lan = Lan {
            bridge: format!("slb{tag}"),
            subnet: format!("10.231.{octet}"),
            tag,
            hosts: Vec::new(),
        };
        run(&["ip", "link", "add", &lan.bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}.254/24", lan.subnet),
            "dev",
            &lan.bridge,
        ])?;
        run(&["ip", "link", "set", &lan.bridge, "up"])?;
        for n in 1..=hosts {
            let host = lan.add_host(n)?;
            lan.hosts.push(host);
        }
        info!(bridge = %lan.bridge, subnet = %lan.subnet, hosts, "network namespaces ready");
        Ok(lan)
    }

    fn add_host(&self, n: usize) -> Result<NetHost> {
        let netns = format!("sl{}n{n}", self.tag);
        let veth = format!("sl{}h{n}", self.tag);
        let inner = format!("sl{}i{n}", self.tag);
        let ip = format!("{}.{n}", self.subnet);
        run(&["ip", "netns", "add", &netns])?;
        run(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &inner,
        ])?;
        run(&["ip", "link", "set", &inner, "netns", &netns])?;
        run(&["ip", "link", "set", &veth, "master", &self.bridge])?;
        run(&["ip", "link", "set", &veth, "up"])?;
        let exec = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", netns.as_str()];
            all.extend_from_slice(args);
            run(&all)
        };
        exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &inner])?;
        exec(&["ip", "link", "set", &inner, "up"])?;
        exec(&["ip", "link", "set", "lo", "up"])?;
        nft(
            &netns,
            "table inet starling {\n  chain out { type filter hook output priority 0; policy accept; }\n  chain in { type filter hook input priority 0; policy accept; }\n}\n",
        )?;
        Ok(NetHost { netns, ip, veth })
    }

    /// The hosts, in order.
    pub fn hosts(&self) -> &[NetHost] {
        &self.hosts
    }

    /// Drops every packet between `a` and `b`, both ways (existing connections stall).
    pub fn cut(&self, a: &NetHost, b: &NetHost) -> Result<()> {
        for (me, peer) in [(a, b), (b, a)] {
            nft(
                &me.netns,
                &format!(
                    "add rule inet starling out ip daddr {} drop\nadd rule inet starling in ip saddr {} drop\n",
                    peer.ip, peer.ip
                ),
            )?;
        }
        info!(a = %a.ip, b = %b.ip, "partitioned");
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&self) -> Result<()> {
        for host in &self.hosts {
            nft(
                &host.netns,
                "flush chain inet starling out\nflush chain inet starling in\n",
            )?;
        }
        Ok(())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for host in &self.hosts {
            if let Err(e) = run(&["ip", "netns", "del", &host.netns]) {
                warn!(error = %e, "cleaning up the test network");
            }
            // Deleting the namespace deletes the pair; this only matters if it did not.
            let _ = run(&["ip", "link", "del", &host.veth]);
        }
        if let Err(e) = run(&["ip", "link", "del", &self.bridge]) {
            warn!(error = %e, "cleaning up the test network");
        }
    }
}
