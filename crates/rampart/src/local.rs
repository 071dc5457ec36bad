//! A local cluster of `rampart serve` child processes on loopback, for `rampart up`, `rampart demo` and tests:
//! free ports found by binding, data in one directory per node, logs beside it; nodes killed with SIGKILL and
//! restarted on their data, and stopped with SIGTERM (graceful) when the cluster is dropped.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[derive(Debug)]
pub struct LocalNode {
    pub id: String,
    pub http: SocketAddr,
    pub peer: SocketAddr,
    child: Option<Child>,
}

#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    exe: PathBuf,
    initial_cluster: String,
    extra: Vec<String>,
    pub nodes: Vec<LocalNode>,
}

/// A loopback port free for TCP, and for UDP too when `udp` (the peer port carries membership over UDP).
fn free_port(taken: &[u16], udp: bool) -> anyhow::Result<u16> {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if taken.contains(&port) || (udp && UdpSocket::bind(("127.0.0.1", port)).is_err()) {
            continue;
        }
        return Ok(port);
    }
    bail!("no free loopback port found")
}

impl LocalCluster {
    /// Starts `n` nodes with their data under `dir` (`dir/n1`, ...) and `extra` flags for `rampart serve`. Node
    /// `i` (from 1) listens on `http_base + i` and `peer_base + i` when `ports` names the bases, else on free ports.
    pub fn start(n: usize, dir: &Path, ports: Option<(u16, u16)>, extra: &[String]) -> anyhow::Result<LocalCluster> {
        if !(1..=9).contains(&n) {
            bail!("--nodes: use 1 to 9");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut taken = Vec::new();
        let mut nodes = Vec::new();
        for i in 1..=n {
            let (http, peer) = match ports {
                Some((h, p)) => (h + i as u16, p + i as u16),
                None => {
                    let http = free_port(&taken, false)?;
                    taken.push(http);
                    let peer = free_port(&taken, true)?;
                    taken.push(peer);
                    (http, peer)
                }
            };
            nodes.push(LocalNode {
                id: format!("n{i}"),
                http: SocketAddr::from(([127, 0, 0, 1], http)),
                peer: SocketAddr::from(([127, 0, 0, 1], peer)),
                child: None,
            });
        }
        let initial_cluster = nodes.iter().map(|n| format!("{}={}", n.id, n.peer)).collect::<Vec<_>>().join(",");
        let mut cluster = LocalCluster {
            dir: dir.to_owned(),
            exe: std::env::current_exe().context("cannot find the rampart executable")?,
            initial_cluster,
            extra: extra.to_vec(),
            nodes,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", node.id)))
            .context("cannot open the node's log")?;
        let child = Command::new(&self.exe)
            .arg("serve")
            .args(["--id", &node.id, "--http", &node.http.to_string(), "--peer", &node.peer.to_string()])
            .arg("--data-dir")
            .arg(self.dir.join(&node.id))
            .args(["--initial-cluster", &self.initial_cluster])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start rampart serve")?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    pub fn http_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("http://{}", n.http)).collect()
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts a stopped node again on its data.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].child.is_some() {
            bail!("{} is running", self.nodes[i].id);
        }
        self.spawn(i)
    }

    /// SIGTERM to every node, then waits (up to 10 s each, then SIGKILL).
    pub fn stop(&mut self) {
        for node in &self.nodes {
            if let Some(child) = &node.child {
                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until each of the first `nodes` nodes `client` knows answers `/readyz` with 200.
pub async fn wait_ready(client: &rampart_client::Client, nodes: usize, within: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let mut ready = true;
        for i in 0..nodes {
            ready &= client.ready(i).await;
        }
        if ready {
            return Ok(());
        }
        if start.elapsed() > within {
            bail!("the cluster was not ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
