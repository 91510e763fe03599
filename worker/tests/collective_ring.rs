//! The TCP ring collective: every rank a thread with its own
//! `RingCollective` over real loopback sockets. Results against sums
//! computed here, bit-identical across ranks, for world sizes 2–5 and
//! awkward lengths; and the failure paths: a lost peer, mismatched calls, a
//! silent peer, a wrong job token.

mod collective_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use adjoint_worker::collective::{Collective, CollectiveError, Op, RingCollective, RingOptions};
use collective_support::*;
use proptest::prelude::*;

/// Far below any timeout used here: a failure that takes this long was not
/// "fast" but waited for something.
const HANG_GUARD: Duration = Duration::from_secs(20);

fn ring(world: usize, segment_bytes: usize) -> Vec<RingCollective> {
    let opts = RingOptions {
        segment_bytes,
        token: "test".into(),
        ..RingOptions::default()
    };
    RingCollective::loopback(world, opts).unwrap()
}

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

fn segments() -> impl Strategy<Value = usize> {
    prop_oneof![Just(64usize), Just(4096), Just(1 << 20)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn all_reduce_matches_sums(world in 2usize..=5, len in lengths(), seg in segments(), seed: u64, ints: bool) {
        check_all_reduce(ring(world, seg), &inputs(world, len, seed, ints), ints);
    }

    #[test]
    fn reduce_scatter_then_all_gather(world in 2usize..=5, len in lengths(), seg in segments(), seed: u64) {
        check_reduce_scatter_gather(ring(world, seg), &inputs(world, len, seed, true));
    }

    #[test]
    fn broadcast_from_any_root(world in 2usize..=5, len in lengths(), seg in segments(), root in 0usize..5, seed: u64) {
        check_broadcast(ring(world, seg), len, root % world, seed);
    }

    #[test]
    fn all_to_all_delivers_every_block(world in 2usize..=5, max in prop_oneof![Just(0usize), Just(3), Just(40)], seed: u64) {
        check_all_to_all(ring(world, 256), &counts(world, max, seed));
    }
}

#[test]
fn barrier_waits_for_everyone() {
    for world in 2..=5 {
        check_barrier(ring(world, 1 << 20), 3);
    }
}

#[test]
fn megabytes_all_reduce() {
    let len = (3 << 20) / 4 + 3;
    for world in [2, 3, 4] {
        check_all_reduce(ring(world, 1 << 20), &inputs(world, len, 7, true), true);
        check_all_reduce(ring(world, 1 << 18), &inputs(world, len, 8, false), false);
    }
}

#[test]
fn megabytes_of_everything_else() {
    let len = (3 << 20) / 4 + 1;
    let world = 3;
    let colls = check_reduce_scatter_gather(ring(world, 1 << 20), &inputs(world, len, 9, true));
    let colls = check_broadcast(colls, 3 << 20, 2, 10);
    check_all_to_all(colls, &counts(world, 300_000, 11));
}

#[test]
fn one_ring_serves_many_calls() {
    let world = 3;
    let mut colls = ring(world, 1024);
    for (round, len) in [5usize, 0, 3000, 1, 20_000, 7].into_iter().enumerate() {
        let seed = round as u64;
        colls = check_all_reduce(colls, &inputs(world, len, seed, true), true);
        colls = check_broadcast(colls, len, round % world, seed);
        colls = check_reduce_scatter_gather(colls, &inputs(world, len, seed + 100, true));
        colls = check_all_to_all(colls, &counts(world, len % 50, seed));
        colls = check_barrier(colls, 1);
    }
    assert!(
        colls.iter().all(|c| c.seq() == 6 * 7),
        "sequence numbers count calls"
    );
}

#[test]
fn world_of_one_is_a_no_op() {
    let mut c = ring(1, 1 << 20).pop().unwrap();
    let mut data = vec![1.5f32, 2.0];
    c.all_reduce_sum(&mut data).unwrap();
    assert_eq!(data, [1.5, 2.0]);
    assert_eq!(c.reduce_scatter_sum(&mut data).unwrap(), 0..2);
    c.all_gather(&mut data, 0..2).unwrap();
    c.broadcast(&mut [1, 2, 3], 0).unwrap();
    let mut recv = [0f32; 2];
    c.all_to_all(&data, &[2], &mut recv, &[2]).unwrap();
    assert_eq!(recv, [1.5, 2.0]);
    c.barrier().unwrap();
    assert_eq!(c.seq(), 6);
}

/// Listeners and their addresses for a ring of `world`.
fn listeners(world: usize) -> (Vec<TcpListener>, Vec<SocketAddr>) {
    let ls: Vec<_> = (0..world)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .collect();
    let addrs = ls.iter().map(|l| l.local_addr().unwrap()).collect();
    (ls, addrs)
}

/// A rank that speaks the rendezvous protocol by hand, waits until data
/// arrives from its ring predecessor (so the others are mid-call), then
/// vanishes like a crashed process: sockets closed, no goodbye.
fn crashing_rank(
    rank: usize,
    world: usize,
    listener: TcpListener,
    peers: &[SocketAddr],
    token: &str,
) {
    let next = peers[(rank + 1) % world];
    let mut to_next = loop {
        match TcpStream::connect(next) {
            Ok(s) => break s,
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    };
    let mut hello = b"ADJH".to_vec();
    for x in [1u32, world as u32, rank as u32, token.len() as u32] {
        hello.extend_from_slice(&x.to_le_bytes());
    }
    hello.extend_from_slice(token.as_bytes());
    to_next.write_all(&hello).unwrap();
    let (mut from_prev, _) = listener.accept().unwrap();
    let mut their_hello = vec![0u8; 20 + token.len()];
    from_prev.read_exact(&mut their_hello).unwrap();
    let mut ok = b"ADJH\0".to_vec();
    ok.extend_from_slice(&(rank as u32).to_le_bytes());
    ok.extend_from_slice(&0u32.to_le_bytes());
    from_prev.write_all(&ok).unwrap();
    let mut answer = [0u8; 13];
    to_next.read_exact(&mut answer).unwrap();
    assert_eq!(answer[4], 0, "the ring accepted the hand-made hello");
    let mut first = [0u8; 48];
    from_prev.read_exact(&mut first).unwrap();
}

fn assert_lost(err: &CollectiveError, victim: usize) {
    match err {
        CollectiveError::PeerLost { peer, .. } => assert_eq!(*peer, victim, "{err}"),
        other => panic!("expected PeerLost naming rank {victim}, got: {other}"),
    }
}

#[test]
fn lost_peer_fails_every_rank_fast() {
    let token = "crash";
    for (world, victim) in [(2, 1), (3, 0), (3, 2), (5, 3)] {
        let (ls, peers) = listeners(world);
        let results: Vec<_> = thread::scope(|s| {
            let handles: Vec<_> = ls
                .into_iter()
                .enumerate()
                .map(|(rank, l)| {
                    let peers = &peers;
                    s.spawn(move || {
                        if rank == victim {
                            crashing_rank(rank, world, l, peers, token);
                            return None;
                        }
                        let opts = RingOptions {
                            token: token.into(),
                            ..RingOptions::default()
                        };
                        let mut c = RingCollective::connect(rank, world, l, peers, opts).unwrap();
                        let mut data = vec![1f32; 1 << 20];
                        let start = Instant::now();
                        let err = c.all_reduce_sum(&mut data).unwrap_err();
                        let took = start.elapsed();
                        // Later calls fail the same way, at once.
                        assert_lost(&c.barrier().unwrap_err(), victim);
                        Some((rank, err, took))
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        for (rank, err, took) in results {
            eprintln!(
                "world {world}, rank {victim} crashed: rank {rank} failed after {took:?}: {err}"
            );
            assert_lost(&err, victim);
            assert!(took < HANG_GUARD, "rank {rank} took {took:?}");
        }
    }
}

#[test]
fn dropped_collective_fails_its_peers() {
    for (world, victim) in [(2, 0), (4, 2)] {
        let colls = ring(world, 1 << 16);
        let results: Vec<_> = thread::scope(|s| {
            let handles: Vec<_> = colls
                .into_iter()
                .map(|mut c| {
                    s.spawn(move || {
                        if c.rank() == victim {
                            drop(c);
                            return None;
                        }
                        let mut data = vec![1f32; 1 << 20];
                        let start = Instant::now();
                        let err = c.all_reduce_sum(&mut data).unwrap_err();
                        Some((c.rank(), err, start.elapsed(), c))
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        for (rank, err, took, _) in &results {
            eprintln!(
                "world {world}, rank {victim} dropped: rank {rank} failed after {took:?}: {err}"
            );
            assert_lost(err, victim);
            assert!(*took < HANG_GUARD);
        }
    }
}

#[test]
fn mismatched_lengths_fail_every_rank() {
    for (world, odd, len) in [(2, 1, 10), (3, 2, 7), (4, 0, 4000), (3, 1, 0)] {
        let (_, errs) = on_ranks(ring(world, 1024), |c| {
            let mut data = vec![1f32; if c.rank() == odd { len + 1 } else { len }];
            c.all_reduce_sum(&mut data).unwrap_err()
        });
        for (rank, err) in errs.iter().enumerate() {
            assert!(
                matches!(err, CollectiveError::Mismatch { .. }),
                "rank {rank}: {err}"
            );
        }
    }
}

#[test]
fn mismatched_operations_fail() {
    let (_, errs) = on_ranks(ring(3, 1024), |c| {
        if c.rank() == 1 {
            c.broadcast(&mut [0u8; 12], 0).unwrap_err()
        } else {
            c.all_reduce_sum(&mut [0f32; 3]).unwrap_err()
        }
    });
    for (rank, err) in errs.iter().enumerate() {
        assert!(
            matches!(err, CollectiveError::Mismatch { .. }),
            "rank {rank}: {err}"
        );
    }
    let direct = errs.iter().find(|e| {
        matches!(
            e,
            CollectiveError::Mismatch {
                rank: 1,
                peer: 0,
                ..
            }
        )
    });
    assert!(
        direct.is_some_and(|e| e.to_string().contains("all_reduce_sum")),
        "{errs:?}"
    );
}

#[test]
fn silent_peer_times_out_naming_it() {
    let timeout = Duration::from_millis(300);
    for (world, silent) in [(2, 1), (3, 2)] {
        let opts = RingOptions {
            timeout,
            ..RingOptions::default()
        };
        let colls = RingCollective::loopback(world, opts).unwrap();
        let (release, wait) = mpsc::channel::<()>();
        let wait = Mutex::new(wait);
        let errs: Vec<_> = thread::scope(|s| {
            let handles: Vec<_> = colls
                .into_iter()
                .map(|mut c| {
                    let (release, wait) = (release.clone(), &wait);
                    s.spawn(move || {
                        if c.rank() == silent {
                            // Alive but never calls: holds its sockets open
                            // until the others have failed.
                            drop(release);
                            let wait = wait.lock().unwrap();
                            for _ in 0..world - 1 {
                                let _ = wait.recv_timeout(HANG_GUARD);
                            }
                            return None;
                        }
                        let start = Instant::now();
                        let err = c.all_reduce_sum(&mut [1f32; 100]).unwrap_err();
                        release.send(()).unwrap();
                        Some((c.rank(), err, start.elapsed()))
                    })
                })
                .collect();
            drop(release);
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        for (rank, err, took) in errs {
            eprintln!(
                "world {world}, rank {silent} silent: rank {rank} failed after {took:?}: {err}"
            );
            let CollectiveError::Timeout { peer, after, .. } = err else {
                panic!("rank {rank}: {err}")
            };
            assert_eq!(after, timeout);
            assert_eq!(peer, silent, "rank {rank} names the silent rank");
            assert!(took >= timeout / 2 && took < HANG_GUARD, "{took:?}");
        }
    }
}

#[test]
fn wrong_job_token_is_rejected() {
    let (ls, peers) = listeners(2);
    let errs: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = ls
            .into_iter()
            .enumerate()
            .map(|(rank, l)| {
                let peers = &peers;
                s.spawn(move || {
                    let opts = RingOptions {
                        token: format!("job-{rank}"),
                        connect_timeout: Duration::from_millis(500),
                        ..RingOptions::default()
                    };
                    RingCollective::connect(rank, 2, l, peers, opts).unwrap_err()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for err in errs {
        assert!(matches!(err, CollectiveError::Rendezvous { .. }), "{err}");
        assert!(err.to_string().contains("wrong job token"), "{err}");
    }
}

#[test]
fn rendezvous_gives_up_without_peers() {
    let (mut ls, peers) = listeners(2);
    drop(ls.pop());
    let opts = RingOptions {
        connect_timeout: Duration::from_millis(200),
        ..RingOptions::default()
    };
    let err = RingCollective::connect(0, 2, ls.pop().unwrap(), &peers, opts).unwrap_err();
    assert!(
        matches!(err, CollectiveError::Rendezvous { peer: 1, .. }),
        "{err}"
    );
}

#[test]
fn invalid_arguments_are_refused_without_talking() {
    let (colls, errs) = on_ranks(ring(2, 1024), |c| {
        let mut data = [0f32; 5];
        let bad_owned = c.all_gather(&mut data, 0..5).unwrap_err();
        let bad_root = c.broadcast(&mut [0u8; 3], 2).unwrap_err();
        let bad_counts = c
            .all_to_all(&[0.0; 3], &[1, 1], &mut [0.0; 2], &[1, 1])
            .unwrap_err();
        // The group is still usable.
        c.all_reduce_sum(&mut data).unwrap();
        [bad_owned, bad_root, bad_counts]
    });
    for err in errs.iter().flatten() {
        assert!(
            matches!(err, CollectiveError::InvalidArgument { .. }),
            "{err}"
        );
    }
    let CollectiveError::InvalidArgument { op, .. } = &errs[0][1] else {
        unreachable!()
    };
    assert_eq!(*op, Op::Broadcast);
    assert!(colls.iter().all(|c| c.seq() == 1));
}

#[test]
fn a_cancelled_rendezvous_stops_waiting_for_a_peer_that_never_comes() {
    // Rank 1 holds a listener but never joins: without the cancel, rank 0
    // would wait the whole minute of connect_timeout.
    for listening in [true, false] {
        let (mut ls, peers) = listeners(2);
        let absent = ls.pop().expect("two listeners");
        if !listening {
            drop(absent);
        }
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opts = RingOptions {
            connect_timeout: Duration::from_secs(60),
            cancel: Some(cancel.clone()),
            ..RingOptions::default()
        };
        let setter = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let listener = ls.pop().expect("rank 0's listener");
        let err = RingCollective::connect(0, 2, listener, &peers, opts).unwrap_err();
        setter.join().unwrap();
        assert!(err.to_string().contains("cancelled"), "{err}");
    }
}

#[test]
fn bf16_all_reduce_sends_half_the_bytes_and_agrees_on_every_rank() {
    let (world, len) = (3, 40_000);
    let data = |rank: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7 + rank * 13) as f32 * 0.01).sin() * 3.0)
            .collect()
    };
    let run = |bf16: bool| {
        on_ranks(ring(world, 4096), |c| {
            let mut x = data(c.rank());
            let before = c.bytes_sent();
            if bf16 {
                c.all_reduce_sum_bf16(&mut x).unwrap();
            } else {
                c.all_reduce_sum(&mut x).unwrap();
            }
            (x, c.bytes_sent() - before)
        })
        .1
    };
    let (full, half) = (run(false), run(true));
    let inputs: Vec<Vec<f32>> = (0..world).map(data).collect();
    let exact: Vec<f64> = (0..len)
        .map(|i| inputs.iter().map(|x| f64::from(x[i])).sum())
        .collect();
    let (sent32, sent16) = (full[0].1, half[0].1);
    // Payload halves; frame headers are the same count.
    assert!(
        (sent16 as f64) < 0.52 * sent32 as f64,
        "bf16 sent {sent16} bytes, f32 {sent32}"
    );
    let first = &half[0].0;
    for (rank, (x, _)) in half.iter().enumerate() {
        assert_eq!(x, first, "rank {rank} differs from rank 0");
    }
    for (i, (&got, &want)) in first.iter().zip(&exact).enumerate() {
        assert_eq!(
            got,
            half::bf16::from_f32(got).to_f32(),
            "[{i}] is not a bf16"
        );
        // Three roundings of at most half a bf16 ulp (2^-9) each.
        assert!(
            (f64::from(got) - want).abs() <= 3.0 * 2f64.powi(-8) * want.abs().max(3.0),
            "[{i}]: {got} vs {want}"
        );
    }
}
