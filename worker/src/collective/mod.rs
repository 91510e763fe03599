//! Collectives: how the ranks of a data-parallel job combine their buffers.
//!
//! [`Collective`] is the one interface the training loop sees: sum-all-reduce,
//! reduce-scatter and all-gather over flat `f32` buffers (the gradient buffer
//! and its buckets), broadcast of bytes, all-to-all of `f32` blocks and a
//! barrier. Two implementations:
//!
//! - [`RingCollective`] (`ring`): TCP between processes (or threads). Each
//!   rank connects to rank `(r + 1) % world` and accepts from
//!   `(r - 1) % world`; all-reduce is the bandwidth-optimal ring
//!   (reduce-scatter then all-gather, `2 (world - 1)` steps, chunked into
//!   segments and pipelined: a receiver thread per rank reads segment
//!   `i + 1` while the caller's thread reduces segment `i` and writes the
//!   next one straight from the caller's buffer).
//! - [`LocalCollective`] (`local`): `n` ranks as threads of one process over
//!   channels, for unit tests of code that uses collectives.
//! - `NcclCollective` (`nccl`, feature `cuda`): NCCL between GPU workers,
//!   on the CUDA backend's communication stream; see its module docs.
//!
//! Invariants every implementation keeps:
//!
//! - **Chunking.** Reduce-scatter splits a buffer of `len` elements into
//!   `world` contiguous chunks by [`chunk_range`]: the first `len % world`
//!   chunks hold `len / world + 1` elements, the rest `len / world`. Rank `r`
//!   owns chunk `r`. Any length works, `0` included.
//! - **Determinism.** The summation order is fixed by ranks and chunks, never
//!   by timing, and every rank ends with bit-identical results.
//! - **Sequence numbers.** Each rank numbers its collective calls `1, 2, ...`
//!   ([`Collective::seq`]); every message carries the operation, that number
//!   and the buffer length, so ranks that disagree fail with
//!   [`CollectiveError::Mismatch`] instead of mixing data.
//! - **Failure.** Every wait is bounded by a timeout
//!   ([`CollectiveError::Timeout`] names the silent peer); a peer that goes
//!   away fails the call at once with [`CollectiveError::PeerLost`] naming
//!   it, on every rank. After an error a collective stays failed: every later
//!   call returns the same error.

mod bench;
mod link;
mod local;
#[cfg(feature = "cuda")]
pub mod nccl;
mod rendezvous;
mod ring;
mod shared;
mod wire;

use std::fmt;
use std::ops::Range;
use std::time::Duration;

pub use bench::{BenchResult, bench_all_reduce};
pub use local::{LocalCollective, LocalGroup};
#[cfg(feature = "cuda")]
pub use nccl::{NcclCollective, NcclId, NcclOptions};
pub use ring::{RingCollective, RingOptions};

/// The collective operations of one group of ranks.
///
/// Every rank must make the same calls in the same order with matching
/// arguments (same buffer lengths, same root, consistent counts).
pub trait Collective: Send {
    /// This rank, in `0..world`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world(&self) -> usize;

    /// Number of collective calls this rank has made (the sequence number of
    /// the last one).
    fn seq(&self) -> u64;

    /// Sums `data` elementwise across ranks, in place.
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()>;

    /// As [`Collective::all_reduce_sum`] in bf16: every value is rounded to
    /// bf16, and so is every partial sum, as NCCL's bf16 sums are; the
    /// result is a bf16 value on every rank. The ring sends bf16 (half the
    /// bytes); this default, for collectives without a bf16 wire, rounds
    /// before and after an f32 sum.
    fn all_reduce_sum_bf16(&mut self, data: &mut [f32]) -> Result<()> {
        wire::round_bf16(data);
        self.all_reduce_sum(data)?;
        wire::round_bf16(data);
        Ok(())
    }

    /// Sums `data` across ranks, leaving only this rank's chunk
    /// ([`chunk_range`]`(data.len(), world, rank)`) fully reduced; returns
    /// that range. The rest of `data` holds unspecified partial sums.
    fn reduce_scatter_sum(&mut self, data: &mut [f32]) -> Result<Range<usize>>;

    /// The inverse of [`Collective::reduce_scatter_sum`]: every rank
    /// contributes `data[owned]`, which must be its chunk, and ends with
    /// every rank's chunk in place.
    fn all_gather(&mut self, data: &mut [f32], owned: Range<usize>) -> Result<()>;

    /// Copies `root`'s `data` to every rank.
    fn broadcast(&mut self, data: &mut [u8], root: usize) -> Result<()>;

    /// Sends `send`, split into consecutive blocks of `send_counts[p]`
    /// elements, block `p` to rank `p`; receives into `recv` the block from
    /// each rank `p`, `recv_counts[p]` elements, in rank order.
    fn all_to_all(
        &mut self,
        send: &[f32],
        send_counts: &[usize],
        recv: &mut [f32],
        recv_counts: &[usize],
    ) -> Result<()>;

    /// Returns once every rank has entered the barrier.
    fn barrier(&mut self) -> Result<()>;

    /// Whether this group reduces device memory itself
    /// ([`Collective::all_reduce_sum_device`]); false for the host
    /// collectives.
    fn reduces_device_memory(&self) -> bool {
        false
    }

    /// Enqueues a sum all-reduce of the `len` elements (f32, or bf16 when
    /// `bf16`) at device address `send` into those at `recv` (the same
    /// address for in place) on the group's stream (the backend's
    /// communication stream, ordered against the compute stream by the
    /// caller's events) and returns without waiting for it;
    /// [`Collective::wait_device`] waits for everything enqueued.
    ///
    /// # Safety
    /// `send` and `recv` each address `len` live elements of that type on
    /// this group's device, equal or disjoint, which nothing else writes
    /// (nor, for `recv`, reads) until the reduction has run.
    unsafe fn all_reduce_sum_device(
        &mut self,
        send: u64,
        recv: u64,
        len: usize,
        bf16: bool,
    ) -> Result<()> {
        let _ = (send, recv, len);
        Err(CollectiveError::InvalidArgument {
            rank: self.rank(),
            op: if bf16 {
                Op::AllReduceSumBf16
            } else {
                Op::AllReduceSum
            },
            detail: "this collective reduces host memory only, not device memory".into(),
        })
    }

    /// Waits for the reductions [`Collective::all_reduce_sum_device`]
    /// enqueued, failing as a blocking call would (a lost peer, the job's
    /// cancel flag, the timeout).
    fn wait_device(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Chunk `index` of a buffer of `len` elements split over `world` ranks: the
/// first `len % world` chunks get one element more than the others.
pub fn chunk_range(len: usize, world: usize, index: usize) -> Range<usize> {
    debug_assert!(index < world, "chunk {index} of {world}");
    let (base, extra) = (len / world, len % world);
    let start = index * base + index.min(extra);
    let size = base + usize::from(index < extra);
    start..start + size
}

/// The collective operations, as named in errors and on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    AllReduceSum,
    AllReduceSumBf16,
    ReduceScatterSum,
    AllGather,
    Broadcast,
    AllToAll,
    Barrier,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::AllReduceSum => "all_reduce_sum",
            Op::AllReduceSumBf16 => "all_reduce_sum_bf16",
            Op::ReduceScatterSum => "reduce_scatter_sum",
            Op::AllGather => "all_gather",
            Op::Broadcast => "broadcast",
            Op::AllToAll => "all_to_all",
            Op::Barrier => "barrier",
        }
    }

    // Codes are positions here: new ops go at the end.
    const ALL: [Op; 7] = [
        Op::AllReduceSum,
        Op::ReduceScatterSum,
        Op::AllGather,
        Op::Broadcast,
        Op::AllToAll,
        Op::Barrier,
        Op::AllReduceSumBf16,
    ];

    fn code(self) -> u8 {
        Op::ALL.iter().position(|&o| o == self).expect("listed") as u8 + 1
    }

    fn from_code(code: u8) -> Option<Op> {
        Op::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a collective call failed. `rank` is the rank reporting; `seq` is the
/// sequence number of the call that failed first (see [`Collective::seq`]).
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// A peer went away (its connection closed or reset, or it dropped its
    /// collective) — directly seen, or reported by another rank.
    #[error("rank {rank}: lost rank {peer} during {op} #{seq}: {detail}")]
    PeerLost {
        rank: usize,
        peer: usize,
        op: Op,
        seq: u64,
        detail: String,
    },
    /// `peer` made no progress for `after`.
    #[error("rank {rank}: {op} #{seq} timed out after {after:?} waiting for rank {peer}")]
    Timeout {
        rank: usize,
        peer: usize,
        op: Op,
        seq: u64,
        after: Duration,
    },
    /// `peer` made a different call (operation, sequence number or length).
    #[error("rank {rank}: {op} #{seq} does not match rank {peer}: {detail}")]
    Mismatch {
        rank: usize,
        peer: usize,
        op: Op,
        seq: u64,
        detail: String,
    },
    /// The call's own arguments are inconsistent; nothing was exchanged.
    #[error("rank {rank}: invalid {op} call: {detail}")]
    InvalidArgument { rank: usize, op: Op, detail: String },
    /// Setting up the connections failed.
    #[error("rank {rank}: rendezvous with rank {peer} ({addr}): {detail}")]
    Rendezvous {
        rank: usize,
        peer: usize,
        addr: String,
        detail: String,
    },
    #[error("rank {rank}: {context}: {source}")]
    Io {
        rank: usize,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = CollectiveError> = std::result::Result<T, E>;

/// The first failure of a group, kept so that every later call (and every
/// rank it is reported to) fails the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cause {
    pub kind: CauseKind,
    /// The rank at fault: lost, silent or mismatched.
    pub peer: usize,
    /// The rank that saw it first.
    pub reporter: usize,
    pub op: Op,
    pub seq: u64,
    pub after: Duration,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CauseKind {
    Lost,
    Timeout,
    Mismatch,
    /// `peer` closed its collective on purpose (a group member leaving).
    Closed,
}

impl Cause {
    pub fn new(
        kind: CauseKind,
        peer: usize,
        reporter: usize,
        op: Op,
        seq: u64,
        detail: impl Into<String>,
    ) -> Cause {
        Cause {
            kind,
            peer,
            reporter,
            op,
            seq,
            after: Duration::ZERO,
            detail: detail.into(),
        }
    }

    pub fn timeout(peer: usize, reporter: usize, op: Op, seq: u64, after: Duration) -> Cause {
        Cause {
            after,
            ..Cause::new(CauseKind::Timeout, peer, reporter, op, seq, "")
        }
    }

    /// The error `rank` reports for this cause.
    pub fn error(&self, rank: usize) -> CollectiveError {
        let detail = if self.reporter == rank {
            self.detail.clone()
        } else {
            format!("reported by rank {}: {}", self.reporter, self.detail)
        };
        let (peer, op, seq) = (self.peer, self.op, self.seq);
        match self.kind {
            CauseKind::Lost | CauseKind::Closed => CollectiveError::PeerLost {
                rank,
                peer,
                op,
                seq,
                detail,
            },
            CauseKind::Timeout => CollectiveError::Timeout {
                rank,
                peer,
                op,
                seq,
                after: self.after,
            },
            CauseKind::Mismatch => CollectiveError::Mismatch {
                rank,
                peer,
                op,
                seq,
                detail,
            },
        }
    }
}

/// Checks the arguments of an all-to-all call.
pub(crate) fn check_all_to_all(
    rank: usize,
    world: usize,
    send: &[f32],
    send_counts: &[usize],
    recv: &[f32],
    recv_counts: &[usize],
) -> Result<()> {
    let invalid = |detail: String| CollectiveError::InvalidArgument {
        rank,
        op: Op::AllToAll,
        detail,
    };
    if send_counts.len() != world || recv_counts.len() != world {
        return Err(invalid(format!(
            "{} send counts and {} receive counts for {world} ranks",
            send_counts.len(),
            recv_counts.len()
        )));
    }
    let (sends, recvs): (usize, usize) = (send_counts.iter().sum(), recv_counts.iter().sum());
    if sends != send.len() || recvs != recv.len() {
        return Err(invalid(format!(
            "counts sum to {sends} sent and {recvs} received for buffers of {} and {}",
            send.len(),
            recv.len()
        )));
    }
    if send_counts[rank] != recv_counts[rank] {
        return Err(invalid(format!(
            "this rank sends itself {} elements but expects {}",
            send_counts[rank], recv_counts[rank]
        )));
    }
    Ok(())
}

/// Checks that `owned` is this rank's chunk of `len` elements.
pub(crate) fn check_owned(
    rank: usize,
    world: usize,
    len: usize,
    owned: &Range<usize>,
) -> Result<()> {
    let expected = chunk_range(len, world, rank);
    if *owned != expected {
        return Err(CollectiveError::InvalidArgument {
            rank,
            op: Op::AllGather,
            detail: format!(
                "owned range {owned:?} is not this rank's chunk {expected:?} of {len} elements"
            ),
        });
    }
    Ok(())
}

/// Checks a broadcast root.
pub(crate) fn check_root(rank: usize, world: usize, root: usize) -> Result<()> {
    if root >= world {
        return Err(CollectiveError::InvalidArgument {
            rank,
            op: Op::Broadcast,
            detail: format!("root {root} is not a rank of {world}"),
        });
    }
    Ok(())
}

/// Offsets of consecutive blocks of `counts` elements.
pub(crate) fn block_range(counts: &[usize], index: usize) -> Range<usize> {
    let start: usize = counts[..index].iter().sum();
    start..start + counts[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_tile_the_buffer() {
        for world in 1..7 {
            for len in [0, 1, 2, 5, 7, 13, 64, 1031] {
                let mut next = 0;
                for c in 0..world {
                    let r = chunk_range(len, world, c);
                    assert_eq!(r.start, next);
                    assert!(r.len() == len / world || r.len() == len / world + 1);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn op_codes_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code(0), None);
    }
}
