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
//!
//! The index holds the key's name once, packed: entries are grouped in
//! buckets of [`BUCKET_MICROS`] by deadline, and a bucket is one byte string
//! of `varint db, varint length, name` records. A lock with a 12-byte name
//! costs about 14 bytes here plus its share of the bucket's slack, instead
//! of a tree node slot, a separate allocation for the name and its rounding.
//! Finding one entry (an extension, a release) scans one bucket: the locks
//! that end within the same [`BUCKET_MICROS`].

use crate::pure::lock::Micros;
use std::collections::BTreeMap;

/// Width of a bucket, as a power of two of microseconds (128 us).
const BUCKET_SHIFT: u32 = 7;

/// Width of a bucket in microseconds.
pub const BUCKET_MICROS: Micros = 1 << BUCKET_SHIFT;

/// What a bucket costs besides its bytes: its slot in the tree's nodes
/// (about 1.5 slots per bucket) and the allocation's header rounding.
const BUCKET_OVERHEAD: usize = std::mem::size_of::<(u64, Vec<u8>)>() * 3 / 2;

/// An entry that came due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The end of the entry's bucket: at or after the deadline it recorded.
    pub deadline: Micros,
    pub db: i32,
    pub key: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct ExpiryIndex {
    /// Bucket number (deadline >> BUCKET_SHIFT) -> packed records.
    buckets: BTreeMap<u64, Vec<u8>>,
    entries: usize,
    /// Bytes of all records.
    payload: usize,
    /// Bytes held: the buckets' capacities plus their overhead.
    held: usize,
}

fn bucket_of(deadline: Micros) -> u64 {
    deadline >> BUCKET_SHIFT
}

/// When the entries of `bucket` are due: the end of the bucket, so every
/// deadline recorded in it has passed by then.
fn due_at(bucket: u64) -> Micros {
    bucket.saturating_add(1).saturating_mul(BUCKET_MICROS)
}

fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(n);
        }
    }
    None
}

/// One record of a bucket: (db, name, bytes it spans).
fn read_record(bytes: &[u8], at: usize) -> Option<(i32, &[u8], usize)> {
    let mut pos = at;
    let db = i32::try_from(get_varint(bytes, &mut pos)?).ok()?;
    let len = usize::try_from(get_varint(bytes, &mut pos)?).ok()?;
    let key = bytes.get(pos..pos.checked_add(len)?)?;
    Some((db, key, pos + len - at))
}

/// Bytes of the record for `key` of `db`.
fn record_len(db: i32, key_len: usize) -> usize {
    varint_len(u64::from(db.unsigned_abs())) + varint_len(key_len as u64) + key_len
}

fn put_record(out: &mut Vec<u8>, db: i32, key: &[u8]) {
    put_varint(out, u64::from(db.unsigned_abs()));
    put_varint(out, key.len() as u64);
    out.extend_from_slice(key);
}

/// The records of a bucket, in order.
fn records(bytes: &[u8]) -> impl Iterator<Item = (i32, &[u8], usize)> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let (db, key, len) = read_record(bytes, at)?;
        let start = at;
        at += len;
        Some((db, key, start))
    })
}

impl ExpiryIndex {
    pub const fn new() -> Self {
        ExpiryIndex {
            buckets: BTreeMap::new(),
            entries: 0,
            payload: 0,
            held: 0,
        }
    }

    /// Run `f` on bucket `n` (created if missing), keeping the byte counts,
    /// and drop the bucket if it is left empty.
    fn edit<R>(&mut self, n: u64, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let before = self
            .buckets
            .get(&n)
            .map_or(0, |b| b.capacity() + BUCKET_OVERHEAD);
        let bucket = self.buckets.entry(n).or_default();
        let out = f(bucket);
        let after = if bucket.is_empty() {
            self.buckets.remove(&n);
            0
        } else {
            bucket.capacity() + BUCKET_OVERHEAD
        };
        self.held = self.held.saturating_sub(before).saturating_add(after);
        out
    }

    /// Record that the lock in `key` of `db` ends at `deadline`.
    pub fn insert(&mut self, deadline: Micros, db: i32, key: &[u8]) {
        let n = bucket_of(deadline);
        // A bucket no longer at the end is mostly complete (deadlines mostly
        // grow): give back its growth slack.
        if let Some((&last, _)) = self.buckets.last_key_value() {
            if last < n {
                self.edit(last, Vec::shrink_to_fit);
            }
        }
        self.edit(n, |bucket| put_record(bucket, db, key));
        self.entries += 1;
        self.payload += record_len(db, key.len());
    }

    /// Forget the entry for the lock in `key` of `db` ending at `deadline`
    /// (it was extended or removed by a command); whether there was one.
    pub fn remove(&mut self, deadline: Micros, db: i32, key: &[u8]) -> bool {
        let n = bucket_of(deadline);
        let Some(bucket) = self.buckets.get(&n) else {
            return false;
        };
        let Some(start) = records(bucket)
            .find(|(d, k, _)| *d == db && *k == key)
            .map(|(_, _, start)| start)
        else {
            return false;
        };
        let len = record_len(db, key.len());
        self.edit(n, |bucket| {
            bucket.drain(start..start + len);
        });
        self.entries -= 1;
        self.payload -= len;
        true
    }

    /// When the earliest entry on record is due.
    pub fn next_deadline(&self) -> Option<Micros> {
        self.buckets.first_key_value().map(|(n, _)| due_at(*n))
    }

    /// Take up to `limit` entries that are due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Micros, limit: usize) -> Vec<Entry> {
        let mut due = Vec::new();
        while due.len() < limit {
            let Some((&n, bucket)) = self.buckets.first_key_value() else {
                break;
            };
            if due_at(n) > now {
                break;
            }
            let mut consumed = 0;
            for (db, key, start) in records(bucket) {
                if due.len() >= limit {
                    break;
                }
                due.push(Entry {
                    deadline: due_at(n),
                    db,
                    key: key.to_vec(),
                });
                consumed = start + record_len(db, key.len());
                self.entries -= 1;
                self.payload -= record_len(db, key.len());
            }
            if consumed == 0 {
                // A bucket that does not parse (never happens): drop it.
                self.edit(n, Vec::clear);
                continue;
            }
            self.edit(n, |bucket| {
                bucket.drain(..consumed);
            });
        }
        due
    }

    /// Rebuild every record through `f` (`None`: drop it).
    fn rewrite(&mut self, f: impl Fn(i32) -> Option<i32>) {
        let old = std::mem::take(&mut self.buckets);
        *self = ExpiryIndex::new();
        for (n, bucket) in old {
            for (db, key, _) in records(&bucket) {
                if let Some(db) = f(db) {
                    self.insert(due_at(n) - 1, db, key);
                }
            }
        }
    }

    /// `SWAPDB a b`: the keys of the two databases trade places.
    pub fn swap_db(&mut self, a: i32, b: i32) {
        self.rewrite(|db| {
            Some(if db == a {
                b
            } else if db == b {
                a
            } else {
                db
            })
        });
    }

    /// `FLUSHDB` of `db`, or `FLUSHALL` when `db` is -1.
    pub fn forget_db(&mut self, db: i32) {
        if db < 0 {
            *self = ExpiryIndex::new();
        } else {
            self.rewrite(|d| (d != db).then_some(d));
        }
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Bytes the index holds in all.
    pub fn bytes(&self) -> usize {
        self.held
    }

    /// What the entry of a lock named `key_len` bytes in `db` costs: its
    /// record, and its even share of what the index holds besides records
    /// (bucket slack and overhead). What `MEMORY USAGE` adds per lock.
    pub fn entry_cost(&self, db: i32, key_len: usize) -> usize {
        let shared = self.held.saturating_sub(self.payload);
        record_len(db, key_len) + shared.checked_div(self.entries).unwrap_or(BUCKET_OVERHEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_only_due_entries_in_deadline_order() {
        let mut index = ExpiryIndex::new();
        index.insert(3000, 0, b"c");
        index.insert(1000, 0, b"a");
        index.insert(2000, 1, b"b");
        assert_eq!(index.len(), 3);
        assert!(index.next_deadline().unwrap() >= 1000);
        assert!(index.next_deadline().unwrap() < 1000 + BUCKET_MICROS);
        let due = index.pop_due(2000 + BUCKET_MICROS, 10);
        let keys: Vec<_> = due.iter().map(|e| (e.db, e.key.as_slice())).collect();
        assert_eq!(keys, vec![(0, &b"a"[..]), (1, &b"b"[..])]);
        assert!(due.iter().all(|e| e.deadline >= 1000));
        assert!(index.next_deadline().unwrap() >= 3000);
        assert!(
            index.pop_due(2999, 10).is_empty(),
            "not due before its deadline"
        );
    }

    #[test]
    fn remove_takes_out_exactly_one_entry() {
        let mut index = ExpiryIndex::new();
        index.insert(1000, 0, b"a");
        index.insert(2000, 0, b"a");
        index.insert(1000, 1, b"a");
        index.insert(1001, 0, b"ab");
        assert!(index.remove(1000, 0, b"a"));
        assert!(!index.remove(1000, 0, b"a"), "already gone");
        assert!(!index.remove(1000, 0, b"b"), "another key");
        assert_eq!(index.len(), 3);
        assert!(index.next_deadline().unwrap() < 2000, "db 1's entry stays");
        assert!(index.remove(1001, 0, b"ab"));
        assert!(index.remove(1000, 1, b"a"));
        assert!(index.remove(2000, 0, b"a"));
        assert!(index.is_empty());
        assert_eq!(index.bytes(), 0, "empty buckets go");
    }

    #[test]
    fn pop_due_respects_the_limit() {
        let mut index = ExpiryIndex::new();
        for i in 0..10u8 {
            index.insert(u64::from(i) * 1000, 0, &[i]);
        }
        index.insert(5, 0, b"same bucket");
        let first = index.pop_due(100_000, 1);
        assert_eq!(first.len(), 1);
        assert_eq!(index.pop_due(100_000, 3).len(), 3);
        assert_eq!(index.len(), 7);
        assert!(index.next_deadline().unwrap() >= 2000);
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
        index.insert(1000, 0, b"x");
        index.insert(2000, 3, b"y");
        index.insert(3000, 500, b"z");
        index.swap_db(0, 3);
        let due = index.pop_due(10_000, 10);
        let dbs: Vec<_> = due.iter().map(|e| e.db).collect();
        assert_eq!(dbs, vec![3, 0, 500]);
        assert_eq!(due[2].key, b"z");
    }

    #[test]
    fn long_names_and_large_databases_round_trip() {
        let mut index = ExpiryIndex::new();
        let long = vec![7u8; 70_000];
        index.insert(10, i32::MAX, &long);
        index.insert(10, 0, b"");
        assert!(index.remove(10, 0, b""));
        let due = index.pop_due(u64::MAX, 10);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].db, due[0].key.len()), (i32::MAX, 70_000));
    }

    #[test]
    fn the_cost_of_an_entry_is_its_record_plus_a_share_of_the_slack() {
        let mut index = ExpiryIndex::new();
        for i in 0..10_000u64 {
            index.insert(1_000_000 + i * 10, 0, format!("lock:{i:07}").as_bytes());
        }
        let cost = index.entry_cost(0, 12);
        assert!(cost >= 14, "{cost}");
        assert!(cost <= 24, "{cost}: 14 bytes of record, little slack");
        assert!(index.bytes() >= index.len() * 14);
    }
}
