//! Namespace changes of an embedded (single-writer) volume, merged into one transaction.
//!
//! Each create, rename or unlink would otherwise be a signed transaction of its own; an untar
//! makes tens of thousands. The batch keeps one operation per record (the latest), in the
//! order records were first touched, and drops records that were created and deleted again
//! within it. It is committed when it grows large, before any data commit (which may depend on
//! it), by fsync/fsyncdir, and by the background flusher, so the durability bound is unchanged.
//! Preconditions are not carried: with a single writer the mount's own caches are the truth.

use ate::{Op, Precondition, RecordKey};
use std::collections::{HashMap, HashSet};

/// Operations waiting to be committed together.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    ops: Vec<Option<Op>>,
    at: HashMap<RecordKey, usize>,
    /// Records created in this batch (absent before it): deleting them drops both ops.
    fresh: HashSet<RecordKey>,
    live: usize,
}

impl Batch {
    /// Operations in the batch.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Adds a transaction's operations; `Absent` preconditions mark records as new.
    pub(crate) fn add(&mut self, ops: Vec<Op>, preconditions: &[Precondition]) {
        let absent: HashSet<RecordKey> = preconditions
            .iter()
            .filter_map(|p| match p {
                Precondition::Absent(k) => Some(*k),
                Precondition::AtVersion(..) => None,
            })
            .collect();
        for op in ops {
            let Some(key) = op.record_key() else {
                self.push_new(op);
                continue;
            };
            match (self.at.get(&key).copied(), &op) {
                (Some(i), Op::Delete { .. }) if self.fresh.contains(&key) => {
                    self.ops[i] = None;
                    self.at.remove(&key);
                    self.fresh.remove(&key);
                    self.live -= 1;
                }
                (Some(i), _) => self.ops[i] = Some(op),
                (None, _) => {
                    if absent.contains(&key) && matches!(op, Op::Put { .. }) {
                        self.fresh.insert(key);
                    }
                    self.at.insert(key, self.ops.len());
                    self.push_new(op);
                }
            }
        }
    }

    fn push_new(&mut self, op: Op) {
        self.ops.push(Some(op));
        self.live += 1;
    }

    /// Takes the operations, leaving the batch empty.
    pub(crate) fn take(&mut self) -> Vec<Op> {
        let ops = std::mem::take(&mut self.ops)
            .into_iter()
            .flatten()
            .collect();
        *self = Batch::default();
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: u128) -> Op {
        Op::put(
            &ate::ChainId::default(),
            RecordKey::from_u128(k),
            None,
            Default::default(),
            None,
            b"",
        )
    }
    fn del(k: u128) -> Op {
        Op::Delete {
            key: RecordKey::from_u128(k),
        }
    }
    fn keys(ops: &[Op]) -> Vec<(RecordKey, bool)> {
        ops.iter()
            .map(|o| {
                (
                    o.record_key().unwrap_or_default(),
                    matches!(o, Op::Delete { .. }),
                )
            })
            .collect()
    }

    #[test]
    fn created_then_deleted_disappears_existing_then_deleted_stays() {
        let mut b = Batch::default();
        b.add(
            vec![put(1), put(2)],
            &[Precondition::Absent(RecordKey::from_u128(1))],
        );
        b.add(vec![del(1), del(2), put(3)], &[]);
        assert_eq!(b.len(), 2);
        let ops = b.take();
        assert_eq!(
            keys(&ops),
            vec![
                (RecordKey::from_u128(2), true),
                (RecordKey::from_u128(3), false)
            ]
        );
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn recreated_existing_record_is_an_update_in_first_position() {
        let mut b = Batch::default();
        b.add(vec![put(9), del(5)], &[]);
        b.add(
            vec![put(5)],
            &[Precondition::Absent(RecordKey::from_u128(5))],
        );
        // 5 existed before the batch, so deleting it again must keep a Delete.
        b.add(vec![del(5)], &[]);
        let ops = b.take();
        assert_eq!(
            keys(&ops),
            vec![
                (RecordKey::from_u128(9), false),
                (RecordKey::from_u128(5), true)
            ]
        );
    }
}
