//! The in-process collective: the same checks as the ring's (results
//! against sums computed here, bit-identical across ranks) and its failure
//! paths: a dropped rank, mismatched calls, a silent rank.

mod collective_support;

use std::thread;
use std::time::{Duration, Instant};

use adjoint_worker::collective::{Collective, CollectiveError, LocalGroup};
use collective_support::*;
use proptest::prelude::*;

fn lengths() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(2),
        Just(7),
        Just(13),
        Just(1031),
        0usize..5000
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn all_reduce_matches_sums(world in 1usize..=5, len in lengths(), seed: u64, ints: bool) {
        check_all_reduce(LocalGroup::new(world), &inputs(world, len, seed, ints), ints);
    }

    #[test]
    fn reduce_scatter_then_all_gather(world in 1usize..=5, len in lengths(), seed: u64) {
        check_reduce_scatter_gather(LocalGroup::new(world), &inputs(world, len, seed, true));
    }

    #[test]
    fn broadcast_from_any_root(world in 1usize..=5, len in lengths(), root in 0usize..5, seed: u64) {
        check_broadcast(LocalGroup::new(world), len, root % world, seed);
    }

    #[test]
    fn all_to_all_delivers_every_block(world in 1usize..=5, max in prop_oneof![Just(0usize), Just(3), Just(40)], seed: u64) {
        check_all_to_all(LocalGroup::new(world), &counts(world, max, seed));
    }
}

#[test]
fn barrier_waits_for_everyone() {
    for world in 1..=5 {
        check_barrier(LocalGroup::new(world), 3);
    }
}

#[test]
fn one_group_serves_many_calls() {
    let world = 4;
    let mut colls = LocalGroup::new(world);
    for (round, len) in [5usize, 0, 3000, 1].into_iter().enumerate() {
        let seed = round as u64;
        colls = check_all_reduce(colls, &inputs(world, len, seed, false), false);
        colls = check_broadcast(colls, len, round % world, seed);
        colls = check_reduce_scatter_gather(colls, &inputs(world, len, seed, true));
        colls = check_all_to_all(colls, &counts(world, len % 50, seed));
    }
    assert!(colls.iter().all(|c| c.seq() == 4 * 5));
}

#[test]
fn dropped_rank_fails_the_others_at_once() {
    let world = 4;
    let victim = 2;
    let results: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = LocalGroup::new(world)
            .into_iter()
            .map(|mut c| {
                s.spawn(move || {
                    if c.rank() == victim {
                        return None;
                    }
                    let start = Instant::now();
                    let err = c.all_reduce_sum(&mut [1.0; 10]).unwrap_err();
                    let again = c.barrier().unwrap_err();
                    Some((err, again, start.elapsed(), c))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    });
    for (err, again, took, _) in &results {
        for e in [err, again] {
            assert!(
                matches!(e, CollectiveError::PeerLost { peer, .. } if *peer == victim),
                "{e}"
            );
        }
        assert!(*took < Duration::from_secs(20));
    }
}

#[test]
fn mismatched_lengths_and_operations_fail() {
    let (_, errs) = on_ranks(LocalGroup::new(3), |c| {
        let mut data = vec![0f32; 4 + usize::from(c.rank() == 1)];
        c.all_reduce_sum(&mut data).unwrap_err()
    });
    assert!(
        errs.iter()
            .all(|e| matches!(e, CollectiveError::Mismatch { .. })),
        "{errs:?}"
    );
    let (_, errs) = on_ranks(LocalGroup::new(2), |c| {
        if c.rank() == 0 {
            c.barrier().unwrap_err()
        } else {
            c.broadcast(&mut [0u8; 2], 0).unwrap_err()
        }
    });
    for e in &errs {
        assert!(matches!(e, CollectiveError::Mismatch { .. }), "{e}");
    }
}

#[test]
fn silent_rank_times_out_naming_it() {
    let timeout = Duration::from_millis(200);
    let mut colls = LocalGroup::with_timeout(3, timeout);
    let silent = colls.pop().unwrap();
    let (_, errs) = on_ranks(colls, |c| c.all_reduce_sum(&mut [1.0; 3]).unwrap_err());
    for e in &errs {
        assert!(
            matches!(e, CollectiveError::Timeout { peer: 2, after, .. } if *after == timeout),
            "{e}"
        );
    }
    drop(silent);
}
