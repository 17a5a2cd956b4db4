//! Queues of waiters per lock key, served in ticket order. Pure: the glue
//! (`waiters.rs`) keeps the blocked-client handles in the `T` it stores here.
//!
//! A ticket is a microsecond timestamp: the client's own (`TICKET`), or the
//! node's clock at arrival. Without tickets the order is arrival order
//! (FIFO). With them, every node orders the same clients the same way, so
//! the queues of a node set agree on who is next, which is what keeps a
//! quorum client from being split across nodes; ties go by arrival.

use std::collections::{HashMap, VecDeque};

/// A lock key: database and name.
pub type KeyId = (i32, Vec<u8>);

#[derive(Debug)]
pub struct WaitQueues<T> {
    /// (ticket, id), sorted.
    queues: HashMap<KeyId, VecDeque<(u64, u64)>>,
    waiters: HashMap<u64, (KeyId, T)>,
    next_id: u64,
}

impl<T> Default for WaitQueues<T> {
    fn default() -> Self {
        WaitQueues {
            queues: HashMap::new(),
            waiters: HashMap::new(),
            next_id: 1,
        }
    }
}

impl<T> WaitQueues<T> {
    /// Queue a waiter behind every waiter of `key` with a ticket not
    /// greater than its own; returns its id.
    pub fn push(&mut self, key: KeyId, ticket: u64, waiter: T) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let queue = self.queues.entry(key.clone()).or_default();
        let at = queue.partition_point(|(t, _)| *t <= ticket);
        queue.insert(at, (ticket, id));
        self.waiters.insert(id, (key, waiter));
        id
    }

    /// Take the waiter at the front of `key`'s queue.
    pub fn pop_front(&mut self, key: &KeyId) -> Option<(u64, T)> {
        let queue = self.queues.get_mut(key)?;
        let id = queue.pop_front().map(|(_, id)| id);
        if queue.is_empty() {
            self.queues.remove(key);
        }
        let id = id?;
        self.waiters.remove(&id).map(|(_, w)| (id, w))
    }

    /// Take a waiter out wherever it is (timeout, disconnect).
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let (key, waiter) = self.waiters.remove(&id)?;
        if let Some(queue) = self.queues.get_mut(&key) {
            queue.retain(|(_, w)| *w != id);
            if queue.is_empty() {
                self.queues.remove(&key);
            }
        }
        Some(waiter)
    }

    /// Take out every waiter of `key` that `which` picks, in queue order
    /// (a client cancelling its own waits).
    pub fn remove_where(&mut self, key: &KeyId, mut which: impl FnMut(&T) -> bool) -> Vec<T> {
        let Some(queue) = self.queues.get(key) else {
            return Vec::new();
        };
        let ids: Vec<u64> = queue
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| self.waiters.get(id).is_some_and(|(_, w)| which(w)))
            .collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    pub fn len(&self, key: &KeyId) -> usize {
        self.queues.get(key).map_or(0, VecDeque::len)
    }

    pub fn total(&self) -> usize {
        self.waiters.len()
    }

    /// The keys that have waiters in `db` (-1: every database).
    pub fn keys_in(&self, db: i32) -> Vec<KeyId> {
        self.queues
            .keys()
            .filter(|(d, _)| db < 0 || *d == db)
            .cloned()
            .collect()
    }

    /// The waiter `id`, wherever it is queued.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        self.waiters.get_mut(&id).map(|(_, w)| w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> KeyId {
        (0, name.as_bytes().to_vec())
    }

    #[test]
    fn waiters_are_served_in_arrival_order_per_key() {
        let mut q = WaitQueues::default();
        let a = q.push(key("x"), 5, "a");
        let _b = q.push(key("y"), 1, "b");
        let c = q.push(key("x"), 5, "c");
        assert_eq!(q.len(&key("x")), 2);
        assert_eq!(q.pop_front(&key("x")), Some((a, "a")));
        assert_eq!(q.pop_front(&key("x")), Some((c, "c")));
        assert_eq!(q.pop_front(&key("x")), None);
        assert_eq!(q.total(), 1);
    }

    #[test]
    fn lower_tickets_go_first_and_ties_keep_arrival_order() {
        let mut q = WaitQueues::default();
        let late = q.push(key("x"), 300, "late");
        let early = q.push(key("x"), 100, "early");
        let tie = q.push(key("x"), 100, "tie");
        let order: Vec<_> =
            std::iter::from_fn(|| q.pop_front(&key("x")).map(|(id, _)| id)).collect();
        assert_eq!(order, vec![early, tie, late]);
    }

    #[test]
    fn a_removed_waiter_is_skipped_and_empty_queues_vanish() {
        let mut q = WaitQueues::default();
        let a = q.push(key("x"), 0, 1);
        let b = q.push(key("x"), 0, 2);
        assert_eq!(q.remove(a), Some(1));
        assert_eq!(q.remove(a), None);
        assert_eq!(q.pop_front(&key("x")), Some((b, 2)));
        assert!(q.keys_in(-1).is_empty());
        assert_eq!(q.total(), 0);
    }

    #[test]
    fn waiters_picked_by_a_predicate_leave_and_the_others_keep_their_order() {
        let mut q = WaitQueues::default();
        let a = q.push(key("x"), 1, "tok-a");
        q.push(key("x"), 2, "tok-b");
        let c = q.push(key("x"), 3, "tok-a2");
        let d = q.push(key("x"), 4, "tok-c");
        q.push(key("y"), 0, "tok-b");
        assert_eq!(q.remove_where(&key("x"), |w| *w == "tok-b"), vec!["tok-b"]);
        assert_eq!(q.remove_where(&key("z"), |_| true), Vec::<&str>::new());
        let order: Vec<_> =
            std::iter::from_fn(|| q.pop_front(&key("x")).map(|(id, _)| id)).collect();
        assert_eq!(order, vec![a, c, d]);
        assert_eq!(q.remove_where(&key("y"), |_| true), vec!["tok-b"]);
        assert_eq!(q.total(), 0);
        assert!(q.keys_in(-1).is_empty());
    }

    #[test]
    fn a_queued_waiter_can_be_updated_in_place_and_is_gone_once_served() {
        let mut q = WaitQueues::default();
        let a = q.push(key("x"), 0, 1);
        *q.get_mut(a).unwrap() = 7;
        assert_eq!(q.pop_front(&key("x")), Some((a, 7)));
        assert_eq!(q.get_mut(a), None);
    }
}
