//! The expiry index: which keys hold locks that end when. Pure.
//!
//! Redis expires keys by the wall clock, so the module does not give lock
//! keys a native TTL. Instead every deadline it sets is recorded here, and a
//! module timer (`sweeper.rs`) removes the keys whose locks have ended.
//!
//! Entries are hints, not truth: when an entry comes due the sweeper looks at
//! the key itself. An entry whose key was deleted or renamed away by an
//! operator is simply dropped then, so the index never has to be told about
//! every change to the keyspace. It only must hold an entry at or before the
//! deadline of every lock, and every path that stores a lock adds one. The
//! module's own commands also take out the entry they replace (an extension
//! moves the lock's entry, a release drops it), so a lock has one entry
//! however often it is extended.

use crate::lock::Micros;
use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub deadline: Micros,
    pub db: i32,
    pub key: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct ExpiryIndex {
    entries: BTreeSet<Entry>,
}

impl ExpiryIndex {
    pub const fn new() -> Self {
        ExpiryIndex {
            entries: BTreeSet::new(),
        }
    }

    /// Record that the lock in `key` of `db` ends at `deadline`. Equal
    /// entries collapse into one.
    pub fn insert(&mut self, deadline: Micros, db: i32, key: &[u8]) {
        self.entries.insert(Entry {
            deadline,
            db,
            key: key.to_vec(),
        });
    }

    /// Forget the entry for the lock in `key` of `db` ending at `deadline`
    /// (it was extended or removed by a command); whether there was one.
    pub fn remove(&mut self, deadline: Micros, db: i32, key: &[u8]) -> bool {
        self.entries.remove(&Entry {
            deadline,
            db,
            key: key.to_vec(),
        })
    }

    /// The earliest deadline on record.
    pub fn next_deadline(&self) -> Option<Micros> {
        self.entries.first().map(|e| e.deadline)
    }

    /// Take up to `limit` entries that are due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Micros, limit: usize) -> Vec<Entry> {
        let mut due = Vec::new();
        while due.len() < limit {
            match self.entries.first() {
                Some(first) if first.deadline <= now => {}
                _ => break,
            }
            if let Some(entry) = self.entries.pop_first() {
                due.push(entry);
            }
        }
        due
    }

    /// `SWAPDB a b`: the keys of the two databases trade places.
    pub fn swap_db(&mut self, a: i32, b: i32) {
        let swapped = std::mem::take(&mut self.entries)
            .into_iter()
            .map(|mut e| {
                if e.db == a {
                    e.db = b;
                } else if e.db == b {
                    e.db = a;
                }
                e
            })
            .collect();
        self.entries = swapped;
    }

    /// `FLUSHDB` of `db`, or `FLUSHALL` when `db` is -1.
    pub fn forget_db(&mut self, db: i32) {
        if db < 0 {
            self.entries.clear();
        } else {
            self.entries.retain(|e| e.db != db);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held by the index, roughly: what `MEMORY USAGE` adds per lock.
    pub fn entry_overhead(key_len: usize) -> usize {
        // BTree node share (about 1.5 slots per entry) + the key's heap block.
        std::mem::size_of::<Entry>() * 3 / 2 + key_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_only_due_entries_in_deadline_order() {
        let mut index = ExpiryIndex::new();
        index.insert(30, 0, b"c");
        index.insert(10, 0, b"a");
        index.insert(20, 1, b"b");
        index.insert(10, 0, b"a");
        assert_eq!(index.len(), 3, "equal entries collapse");
        assert_eq!(index.next_deadline(), Some(10));
        let due = index.pop_due(20, 10);
        let keys: Vec<_> = due.iter().map(|e| (e.db, e.key.as_slice())).collect();
        assert_eq!(keys, vec![(0, &b"a"[..]), (1, &b"b"[..])]);
        assert_eq!(index.next_deadline(), Some(30));
        assert!(index.pop_due(29, 10).is_empty());
    }

    #[test]
    fn remove_takes_out_exactly_one_entry() {
        let mut index = ExpiryIndex::new();
        index.insert(10, 0, b"a");
        index.insert(20, 0, b"a");
        index.insert(10, 1, b"a");
        assert!(index.remove(10, 0, b"a"));
        assert!(!index.remove(10, 0, b"a"), "already gone");
        assert!(!index.remove(10, 0, b"b"), "another key");
        assert_eq!(index.len(), 2);
        assert_eq!(index.next_deadline(), Some(10), "db 1's entry stays");
    }

    #[test]
    fn pop_due_respects_the_limit() {
        let mut index = ExpiryIndex::new();
        for i in 0..10u8 {
            index.insert(u64::from(i), 0, &[i]);
        }
        assert_eq!(index.pop_due(100, 4).len(), 4);
        assert_eq!(index.len(), 6);
        assert_eq!(index.next_deadline(), Some(4));
    }

    #[test]
    fn flushes_forget_one_database_or_all() {
        let mut index = ExpiryIndex::new();
        index.insert(1, 0, b"x");
        index.insert(2, 1, b"y");
        index.forget_db(0);
        assert_eq!(index.len(), 1);
        index.forget_db(-1);
        assert!(index.is_empty());
    }

    #[test]
    fn swap_db_exchanges_only_the_two_databases() {
        let mut index = ExpiryIndex::new();
        index.insert(1, 0, b"x");
        index.insert(2, 3, b"y");
        index.insert(3, 5, b"z");
        index.swap_db(0, 3);
        let dbs: Vec<_> = index.pop_due(10, 10).iter().map(|e| e.db).collect();
        assert_eq!(dbs, vec![3, 0, 5]);
    }
}
