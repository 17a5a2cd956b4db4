//! A local Redis Cluster of primaries with the module loaded.

use crate::{eventually, Flavor, Server};
use std::time::Duration;

const SLOTS: u16 = 16384;

/// `n` primaries, slots split evenly, all reporting `cluster_state:ok`.
pub struct Cluster {
    pub nodes: Vec<Server>,
}

impl Cluster {
    pub fn start(n: usize, flavor: Flavor) -> Cluster {
        assert!(n >= 1 && n <= usize::from(SLOTS), "cluster size {n}");
        let nodes: Vec<Server> = (0..n)
            .map(|_| {
                Server::builder(flavor)
                    .arg("cluster-enabled", "yes")
                    .arg("cluster-config-file", "nodes.conf")
                    .arg("cluster-node-timeout", "5000")
                    .start()
            })
            .collect();
        let per = usize::from(SLOTS) / n;
        for (i, node) in nodes.iter().enumerate() {
            let first = i * per;
            let last = if i + 1 == n {
                usize::from(SLOTS) - 1
            } else {
                (i + 1) * per - 1
            };
            let mut c = node.conn();
            let () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query(&mut c)
                .expect("CLUSTER ADDSLOTSRANGE");
        }
        let mut first = nodes[0].conn();
        for node in &nodes[1..] {
            let () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port())
                .query(&mut first)
                .expect("CLUSTER MEET");
        }
        for node in &nodes {
            let mut c = node.conn();
            eventually(
                Duration::from_secs(30),
                "cluster_state:ok on every node",
                || {
                    let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).ok()?;
                    let known = format!("cluster_known_nodes:{n}");
                    (info.contains("cluster_state:ok") && info.contains(&known)).then_some(())
                },
            );
        }
        Cluster { nodes }
    }

    /// The node that serves `key`'s slot.
    pub fn node_for(&self, key: &str) -> &Server {
        let mut c = self.nodes[0].conn();
        let slot: usize = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .expect("KEYSLOT");
        let per = usize::from(SLOTS) / self.nodes.len();
        &self.nodes[(slot / per).min(self.nodes.len() - 1)]
    }
}
