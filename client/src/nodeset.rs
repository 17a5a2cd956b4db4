//! The one fan-out: a request sent to every selected node in parallel, each
//! bounded by the node's own timeouts, and each node's answer yielded as it
//! arrives, tagged with the node's index. The futures own their node, so a
//! decided round can leave its stragglers to a background task.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::{join, ready, Join, Ready};
use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::node::Node;

/// One node's request, its answer tagged with the node's index. (A named
/// type: it borrows nothing from the closure that made it.)
pub(crate) type Tagged<Fut> = Join<Ready<usize>, Fut>;

/// Sends `request` to each node of `nodes` that `select` picks; poll the
/// result for `(index, answer)` pairs in the order the answers come.
pub(crate) fn fan_out<Fut: Future>(
    nodes: &[Arc<Node>],
    select: impl Fn(usize) -> bool,
    request: impl Fn(Arc<Node>) -> Fut,
) -> FuturesUnordered<Tagged<Fut>> {
    nodes
        .iter()
        .filter(|node| select(node.index))
        .map(|node| join(ready(node.index), request(node.clone())))
        .collect()
}

/// Every node's answer to `request`, in node order, once all have come.
pub(crate) async fn each<Fut: Future>(
    nodes: &[Arc<Node>],
    request: impl Fn(Arc<Node>) -> Fut,
) -> Vec<Fut::Output> {
    let mut answers: Vec<(usize, Fut::Output)> = fan_out(nodes, all, request).collect().await;
    answers.sort_unstable_by_key(|(i, _)| *i);
    answers.into_iter().map(|(_, answer)| answer).collect()
}

/// Feeds each answer of `pending` to `note` as it comes, until `note`
/// says the round is decided (true) or every answer is in; whether it was
/// decided. What is still pending stays in `pending`.
pub(crate) async fn drive<Fut: Future>(
    pending: &mut FuturesUnordered<Tagged<Fut>>,
    mut note: impl FnMut(usize, Fut::Output) -> bool,
) -> bool {
    while let Some((i, answer)) = pending.next().await {
        if note(i, answer) {
            return true;
        }
    }
    false
}

/// Every node.
pub(crate) fn all(_: usize) -> bool {
    true
}

/// A set of nodes by index: at most [`NodeMask::MAX`] nodes (the
/// configuration refuses more).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct NodeMask(u64);

impl NodeMask {
    pub(crate) const MAX: usize = 64;

    /// Nodes `0..n`.
    pub(crate) fn all(n: usize) -> NodeMask {
        match n {
            0 => NodeMask(0),
            n if n >= Self::MAX => NodeMask(u64::MAX),
            n => NodeMask((1u64 << n) - 1),
        }
    }

    pub(crate) fn contains(self, i: usize) -> bool {
        i < Self::MAX && self.0 & (1u64 << i) != 0
    }

    pub(crate) fn insert(&mut self, i: usize) {
        if i < Self::MAX {
            self.0 |= 1u64 << i;
        }
    }

    pub(crate) fn remove(&mut self, i: usize) {
        if i < Self::MAX {
            self.0 &= !(1u64 << i);
        }
    }
}

impl NodeMask {
    /// The nodes of the set among `0..n`, in order.
    pub(crate) fn iter(self, n: usize) -> impl Iterator<Item = usize> {
        (0..n.min(Self::MAX)).filter(move |&i| self.contains(i))
    }
}

impl FromIterator<usize> for NodeMask {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        let mut mask = NodeMask::default();
        for i in iter {
            mask.insert(i);
        }
        mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_hold_their_nodes() {
        assert!(!NodeMask::all(0).contains(0));
        assert!(NodeMask::all(5).contains(4) && !NodeMask::all(5).contains(5));
        assert!(NodeMask::all(64).contains(63));
        let mut m: NodeMask = [0, 3, 63].into_iter().collect();
        assert!(m.contains(3) && m.contains(63) && !m.contains(1) && !m.contains(64));
        m.remove(3);
        m.insert(64); // out of range: ignored
        assert_eq!(m, [0, 63].into_iter().collect());
        assert_eq!(m.iter(64).collect::<Vec<_>>(), [0, 63]);
        assert_eq!(m.iter(10).collect::<Vec<_>>(), [0]);
    }
}
