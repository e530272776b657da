//! A fault-injecting TCP proxy for partitions on loopback without root: one listener per
//! upstream endpoint, all of a [`Link`] switched together between [`LinkMode::Pass`],
//! [`LinkMode::Drop`] and [`LinkMode::Blackhole`].
//!
//! TLS passes through untouched (the bytes are copied, never looked at), so certificates that
//! name 127.0.0.1 still verify. Every connection task ends when the link is cut, when either
//! side closes, or when the [`Link`] is dropped.

use std::fmt;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Duration};

/// How long the proxy waits to connect upstream.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a link does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Forward everything.
    Pass,
    /// Refuse new connections (accepted, then closed at once) and cut existing ones: the peer
    /// sees resets, as with a rejecting firewall.
    Drop,
    /// Accept new connections but forward nothing, and stop forwarding on existing ones: the
    /// peer sees silence until its timeouts fire, as with a dropping firewall. Held connections
    /// are closed when the link changes mode again.
    Blackhole,
}

impl fmt::Display for LinkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkMode::Pass => "pass",
            LinkMode::Drop => "drop",
            LinkMode::Blackhole => "blackhole",
        })
    }
}

/// A set of proxied endpoints switched together (e.g. every node of one controller as other
/// controllers and clients see it).
pub struct Link {
    mode: watch::Sender<LinkMode>,
    listen: Vec<String>,
    tasks: Vec<JoinHandle<()>>,
}

impl Link {
    /// Starts one listener on a free loopback port per entry of `upstreams` (host:port), in
    /// pass mode. Must be called inside a tokio runtime.
    pub async fn start(upstreams: &[String]) -> Result<Self> {
        let (mode, _) = watch::channel(LinkMode::Pass);
        let mut listen = Vec::new();
        let mut tasks = Vec::new();
        for upstream in upstreams {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding a proxy port")?;
            listen.push(listener.local_addr()?.to_string());
            let rx = mode.subscribe();
            tasks.push(tokio::spawn(accept_loop(listener, upstream.clone(), rx)));
        }
        Ok(Link {
            mode,
            listen,
            tasks,
        })
    }

    /// The proxy's endpoints, in the order of the upstreams.
    pub fn endpoints(&self) -> &[String] {
        &self.listen
    }

    /// Switches the link.
    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Dropping the sender ends every connection task (their `changed()` fails).
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, rx: watch::Receiver<LinkMode>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        let mode = *rx.borrow();
        match mode {
            LinkMode::Drop => drop(inbound),
            LinkMode::Blackhole => {
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    // Hold the socket, silent, until the link changes (or the link is gone).
                    let _ = rx.changed().await;
                    drop(inbound);
                });
            }
            LinkMode::Pass => {
                tokio::spawn(forward(inbound, upstream.clone(), rx.clone()));
            }
        }
    }
}

async fn forward(mut inbound: TcpStream, upstream: String, mut rx: watch::Receiver<LinkMode>) {
    let Ok(Ok(mut outbound)) =
        timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(&upstream)).await
    else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let cut = async {
        loop {
            if rx.changed().await.is_err() {
                return LinkMode::Drop;
            }
            let mode = *rx.borrow_and_update();
            if mode != LinkMode::Pass {
                return mode;
            }
        }
    };
    let mode = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
        mode = cut => mode,
    };
    if mode == LinkMode::Blackhole {
        // Keep both sockets open and silent until the link changes again.
        let _ = rx.changed().await;
    }
}
