//! The parent -> children index of a view. Most parents have one child (a file's only block,
//! a directory's only entry), and a `BTreeSet` of one is a whole B-tree node (about 200
//! bytes); one child is kept inline, a set only from the second on. For a volume of 50,000
//! one-block files that was a third of the view's memory (`bench/src/bin/view-memory.rs`).

use crate::ids::RecordKey;
use std::collections::hash_map::Entry;
use std::collections::{btree_set, BTreeSet, HashMap};

/// The live children of each record that has any.
#[derive(Debug, Default)]
pub(super) struct Children(HashMap<RecordKey, Set>);

#[derive(Debug)]
enum Set {
    One(RecordKey),
    Many(BTreeSet<RecordKey>),
}

impl Children {
    /// Records `child` under `parent`.
    pub(super) fn insert(&mut self, parent: RecordKey, child: RecordKey) {
        match self.0.entry(parent) {
            Entry::Vacant(v) => {
                v.insert(Set::One(child));
            }
            Entry::Occupied(mut o) => match o.get_mut() {
                Set::One(k) if *k == child => {}
                Set::One(k) => {
                    let first = *k;
                    o.insert(Set::Many(BTreeSet::from([first, child])));
                }
                Set::Many(set) => {
                    set.insert(child);
                }
            },
        }
    }

    /// Removes `child` from under `parent`.
    pub(super) fn remove(&mut self, parent: &RecordKey, child: &RecordKey) {
        let Entry::Occupied(mut o) = self.0.entry(*parent) else {
            return;
        };
        match o.get_mut() {
            Set::One(k) if k == child => {
                o.remove();
            }
            Set::One(_) => {}
            Set::Many(set) => {
                set.remove(child);
                if set.len() == 1 {
                    if let Some(last) = set.pop_first() {
                        o.insert(Set::One(last));
                    }
                }
            }
        }
    }

    /// The children of `parent`, in key order.
    pub(super) fn of(&self, parent: &RecordKey) -> Iter<'_> {
        match self.0.get(parent) {
            None => Iter::One(None),
            Some(Set::One(k)) => Iter::One(Some(k)),
            Some(Set::Many(set)) => Iter::Many(set.iter()),
        }
    }
}

/// Iterator over one record's children.
#[derive(Debug)]
pub enum Iter<'a> {
    /// None or one child.
    One(Option<&'a RecordKey>),
    /// Two or more.
    Many(btree_set::Iter<'a, RecordKey>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a RecordKey;
    fn next(&mut self) -> Option<&'a RecordKey> {
        match self {
            Iter::One(k) => k.take(),
            Iter::Many(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(c: &Children, p: u128) -> Vec<u128> {
        c.of(&RecordKey::from_u128(p))
            .map(|k| u128::from_le_bytes(k.0))
            .collect()
    }

    #[test]
    fn one_child_then_many_then_one_again() {
        let mut c = Children::default();
        let (p, k) = (RecordKey::from_u128, RecordKey::from_u128);
        assert!(keys(&c, 1).is_empty());
        c.insert(p(1), k(30));
        c.insert(p(1), k(30));
        assert_eq!(keys(&c, 1), [30]);
        c.insert(p(1), k(10));
        c.insert(p(1), k(20));
        assert_eq!(keys(&c, 1), [10, 20, 30]);
        c.remove(&p(1), &k(10));
        c.remove(&p(1), &k(99));
        assert_eq!(keys(&c, 1), [20, 30]);
        c.remove(&p(1), &k(30));
        assert_eq!(keys(&c, 1), [20]);
        assert!(matches!(c.0.get(&p(1)), Some(Set::One(_))));
        c.remove(&p(1), &k(21));
        assert_eq!(keys(&c, 1), [20]);
        c.remove(&p(1), &k(20));
        assert!(keys(&c, 1).is_empty());
        assert!(c.0.is_empty());
        c.remove(&p(2), &k(20));
        assert!(c.0.is_empty());
    }
}
