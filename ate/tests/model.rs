//! Reference model: random transactions against a plain in-memory model of records, versions,
//! parents and preconditions, including reopen (replay) and compaction between steps.
#![allow(clippy::unwrap_used)]

mod common;

use ate::storage::{MemStorage, Storage};
use ate::{Chain, Op, Precondition, RecordKey, RootAuthority, Transaction};
use common::{key, Fixture};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Debug)]
enum MOp {
    Put {
        k: u8,
        parent: Option<u8>,
        data: Vec<u8>,
    },
    Delete {
        k: u8,
    },
}

#[derive(Clone, Debug)]
enum Step {
    Tx {
        ops: Vec<MOp>,
        absent: Vec<u8>,
        at: Vec<(u8, u64)>,
    },
    Reopen,
    Crash,
    Compact,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct MRecord {
    version: u64,
    live: Option<(Option<u8>, Vec<u8>)>,
}

fn mop() -> impl Strategy<Value = MOp> {
    prop_oneof![
        3 => (0u8..8, proptest::option::of(0u8..8), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(k, parent, data)| MOp::Put { k, parent, data }),
        1 => (0u8..8).prop_map(|k| MOp::Delete { k }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (
            proptest::collection::vec(mop(), 1..4),
            proptest::collection::vec(0u8..8, 0..2),
            proptest::collection::vec((0u8..8, 0u64..4), 0..2)
        ).prop_map(|(ops, absent, at)| Step::Tx { ops, absent, at }),
        1 => Just(Step::Reopen),
        1 => Just(Step::Crash),
        1 => Just(Step::Compact),
    ]
}

/// Applies a transaction to the model; None when the chain must refuse it.
fn model_apply(
    m: &BTreeMap<u8, MRecord>,
    ops: &[MOp],
    absent: &[u8],
    at: &[(u8, u64)],
) -> Option<BTreeMap<u8, MRecord>> {
    let mut seen = std::collections::HashSet::new();
    for op in ops {
        let k = match op {
            MOp::Put { k, .. } | MOp::Delete { k } => *k,
        };
        if !seen.insert(k) {
            return None;
        }
    }
    for k in absent {
        if m.get(k).is_some_and(|r| r.live.is_some()) {
            return None;
        }
    }
    for (k, v) in at {
        if m.get(k).map(|r| r.version) != Some(*v) {
            return None;
        }
    }
    let mut n = m.clone();
    for op in ops {
        match op {
            MOp::Put { k, parent, data } => {
                if let Some(p) = parent {
                    if n.get(p).is_none_or(|r| r.live.is_none()) {
                        return None;
                    }
                }
                let r = n.entry(*k).or_default();
                r.version += 1;
                r.live = Some((*parent, data.clone()));
            }
            MOp::Delete { k } => {
                let r = n.get_mut(k).filter(|r| r.live.is_some())?;
                r.version += 1;
                r.live = None;
            }
        }
    }
    Some(n)
}

fn rk(k: u8) -> RecordKey {
    key(k as u128 + 1)
}

fn check(f: &Fixture, chain: &Chain, m: &BTreeMap<u8, MRecord>) {
    for k in 0..8u8 {
        let want = m.get(&k);
        let got = chain.record(&rk(k));
        assert_eq!(
            got.as_ref().map(|e| e.version),
            want.map(|r| r.version),
            "version of {k}"
        );
        let plain = chain.read_plain(&rk(k), &f.data).unwrap();
        let want_live = want.and_then(|r| r.live.clone());
        assert_eq!(
            plain.as_ref().map(|(_, p)| p.clone()),
            want_live.as_ref().map(|(_, d)| d.clone()),
            "data of {k}"
        );
        assert_eq!(
            got.filter(|e| !e.is_deleted()).and_then(|e| e.parent),
            want_live.and_then(|(p, _)| p).map(rk),
            "parent of {k}"
        );
        let mut kids: Vec<RecordKey> = m
            .iter()
            .filter(|(_, r)| matches!(&r.live, Some((Some(p), _)) if *p == k))
            .map(|(c, _)| rk(*c))
            .collect();
        kids.sort();
        assert_eq!(chain.children(&rk(k)), kids, "children of {k}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn chain_matches_model(steps in proptest::collection::vec(step(), 1..40)) {
        let f = Fixture::new();
        let mem = MemStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(mem.clone());
        let mut chain = f.open(&storage);
        chain.commit(f.genesis(RootAuthority::single_owner(f.owner.public()))).unwrap();
        let mut model = BTreeMap::new();
        for s in steps {
            match s {
                Step::Tx { ops, absent, at } => {
                    let mut tx = Transaction::new(f.chain_id, f.owner.public());
                    tx.preconditions.extend(absent.iter().map(|k| Precondition::Absent(rk(*k))));
                    tx.preconditions.extend(at.iter().map(|(k, v)| Precondition::AtVersion(rk(*k), *v)));
                    for op in &ops {
                        tx.ops.push(match op {
                            MOp::Put { k, parent, data } => Op::put(&f.chain_id, rk(*k), parent.map(rk), Default::default(), Some(&f.data), data),
                            MOp::Delete { k } => Op::Delete { key: rk(*k) },
                        });
                    }
                    let expect = model_apply(&model, &ops, &absent, &at);
                    let got = chain.commit(tx.sign(&f.owner));
                    prop_assert_eq!(got.is_ok(), expect.is_some(), "commit result {:?}", got);
                    if let Some(n) = expect {
                        model = n;
                    }
                }
                Step::Reopen => {
                    drop(chain);
                    chain = f.open(&storage);
                }
                Step::Crash => {
                    // Everything acknowledged was fsynced, so a power cut loses nothing.
                    let image: Arc<dyn Storage> = Arc::new(mem.crash_image());
                    let crashed = f.open(&image);
                    check(&f, &crashed, &model);
                }
                Step::Compact => {
                    chain.compact().unwrap();
                }
            }
            check(&f, &chain, &model);
        }
    }
}
