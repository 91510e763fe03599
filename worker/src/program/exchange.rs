//! Collective instructions: the graph's `AllToAll`, `AllToAllCombine` and
//! `AllReduce` ops (`adjoint_graph::ops::collective`, whose docs define the
//! layouts) carried out through the job's [`Collective`].
//!
//! A backend computes but does not talk to other ranks, so these are not
//! backend calls: the executor hands them the collective. Each reads its
//! operands to the host, exchanges them with the rank's group (`ranks`
//! consecutive ranks of the world) by one or two `all_to_all` calls and
//! writes its outputs back. Host buffers live in [`ExchangeScratch`] and
//! grow only on the first step.

use std::ops::Range;

use adjoint_kernels::{Backend, View};

use crate::collective::{Collective, CollectiveError};
use crate::{Error, Result};

/// Sizes of an expert exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeDims {
    /// Ranks in the group.
    pub ranks: usize,
    /// Experts over the whole group (E).
    pub experts: usize,
    /// Packed rows on each rank (rows of the op's `[..., width]` side).
    pub rows: usize,
    /// Elements per row.
    pub width: usize,
}

impl ExchangeDims {
    fn local(&self) -> usize {
        self.experts / self.ranks
    }
}

/// One collective instruction.
#[derive(Debug, Clone)]
pub enum Exchange {
    /// Packed rows `x` to the owners of their experts: `y` (rows by local
    /// expert, then source place), `local_offsets`, `counts`.
    AllToAll {
        x: View,
        offsets: View,
        y: View,
        local_offsets: View,
        counts: View,
        dims: ExchangeDims,
    },
    /// Rows of `y` back to the places and packed positions they came from.
    Combine {
        y: View,
        offsets: View,
        counts: View,
        x: View,
        dims: ExchangeDims,
    },
    /// `y` = the sum of `x` over the group.
    AllReduce { x: View, y: View, ranks: usize },
}

/// Host buffers the exchanges reuse from step to step.
#[derive(Debug, Default)]
pub struct ExchangeScratch {
    rows: Vec<f32>,
    received: Vec<f32>,
    offsets: Vec<i64>,
    counts: Vec<i64>,
    small_send: Vec<f32>,
    small_recv: Vec<f32>,
    send_counts: Vec<usize>,
    recv_counts: Vec<usize>,
}

impl Exchange {
    /// The views this instruction writes.
    pub fn outputs(&self) -> Vec<View> {
        match self {
            Exchange::AllToAll {
                y,
                local_offsets,
                counts,
                ..
            } => vec![*y, *local_offsets, *counts],
            Exchange::Combine { x, .. } => vec![*x],
            Exchange::AllReduce { y, .. } => vec![*y],
        }
    }

    /// Runs the exchange; returns the bytes this rank sent to other ranks.
    pub fn run<B: Backend>(
        &self,
        backend: &mut B,
        coll: &mut dyn Collective,
        s: &mut ExchangeScratch,
    ) -> Result<u64> {
        match self {
            Exchange::AllToAll {
                x,
                offsets,
                y,
                local_offsets,
                counts,
                dims,
            } => dispatch(
                backend,
                coll,
                s,
                [*x, *offsets],
                [*y, *local_offsets, *counts],
                dims,
            ),
            Exchange::Combine {
                y,
                offsets,
                counts,
                x,
                dims,
            } => combine(backend, coll, s, [*y, *offsets, *counts], *x, dims),
            Exchange::AllReduce { x, y, ranks } => {
                let group = group_of(coll, *ranks)?;
                s.rows.resize(x.len, 0.0);
                backend.read(*x, bytemuck::cast_slice_mut(&mut s.rows))?;
                let sent = group_all_reduce(coll, &mut s.rows, group, &mut s.received)?;
                backend.write(*y, bytemuck::cast_slice(&s.rows))?;
                Ok(sent)
            }
        }
    }
}

/// The world ranks of this rank's group of `ranks`.
fn group_of(coll: &dyn Collective, ranks: usize) -> Result<Range<usize>> {
    let (rank, world) = (coll.rank(), coll.world());
    if ranks == 0 || world % ranks != 0 {
        return Err(Error::Data(format!(
            "a collective op over groups of {ranks} ranks needs a world that is a multiple of {ranks}; this job has {world} ranks"
        )));
    }
    let base = rank / ranks * ranks;
    Ok(base..base + ranks)
}

fn exchange_error(what: &str) -> impl Fn(CollectiveError) -> Error + '_ {
    move |e| Error::Collective(format!("{what}: {e}"))
}

/// Reads int64 offsets `[E+1]` and checks them against `rows`.
fn read_offsets<B: Backend>(
    backend: &B,
    view: View,
    rows: usize,
    out: &mut Vec<i64>,
) -> Result<()> {
    out.resize(view.len, 0);
    backend.read(view, bytemuck::cast_slice_mut(out))?;
    let ok = out.first() == Some(&0)
        && out.windows(2).all(|w| w[0] <= w[1])
        && out.last().is_some_and(|&l| l as usize <= rows);
    if !ok {
        return Err(Error::Data(format!(
            "expert offsets {out:?} must start at 0, not decrease and stay within {rows} rows"
        )));
    }
    Ok(())
}

/// Sets `send`/`recv` counts (in elements, world-long) to zero outside
/// `group`.
fn reset_counts(counts: &mut Vec<usize>, world: usize) {
    counts.clear();
    counts.resize(world, 0);
}

fn dispatch<B: Backend>(
    backend: &mut B,
    coll: &mut dyn Collective,
    s: &mut ExchangeScratch,
    [x, offsets]: [View; 2],
    [y, local_offsets, counts]: [View; 3],
    d: &ExchangeDims,
) -> Result<u64> {
    let group = group_of(coll, d.ranks)?;
    let (world, local, w) = (coll.world(), d.local(), d.width);
    read_offsets(backend, offsets, d.rows, &mut s.offsets)?;
    let o = &s.offsets;
    let mut sent = 0u64;

    // 1. Counts: place p learns how many rows of each of its experts this
    // rank sends.
    s.small_send.clear();
    s.small_send
        .extend(o.windows(2).map(|pair| (pair[1] - pair[0]) as f32));
    reset_counts(&mut s.send_counts, world);
    reset_counts(&mut s.recv_counts, world);
    for q in group.clone() {
        s.send_counts[q] = local;
        s.recv_counts[q] = local;
    }
    s.small_recv.resize(d.ranks * local, 0.0);
    coll.all_to_all(
        &s.small_send,
        &s.send_counts,
        &mut s.small_recv,
        &s.recv_counts,
    )
    .map_err(exchange_error("expert all-to-all (counts)"))?;
    sent += (d.ranks - 1) as u64 * local as u64 * 4;
    s.counts.clear();
    s.counts.extend(s.small_recv.iter().map(|&c| c as i64));

    // 2. Rows: place p gets rows offsets[p·E_l] .. offsets[(p+1)·E_l].
    let used = o[d.experts] as usize;
    s.rows.resize(used * w, 0.0);
    backend.read(x.sub(0, used * w), bytemuck::cast_slice_mut(&mut s.rows))?;
    let me = coll.rank() - group.start;
    for (p, q) in group.clone().enumerate() {
        let block = (o[(p + 1) * local] - o[p * local]) as usize;
        s.send_counts[q] = block * w;
        let from_q: i64 = s.counts[p * local..(p + 1) * local].iter().sum();
        s.recv_counts[q] = from_q as usize * w;
        if p != me {
            sent += (block * w * 4) as u64;
        }
    }
    let total: usize = s.recv_counts.iter().sum();
    if total > d.ranks * d.rows * w {
        return Err(Error::Data(format!(
            "expert all-to-all: {} rows arrive, more than the {} the layout holds",
            total / w.max(1),
            d.ranks * d.rows
        )));
    }
    s.received.resize(total, 0.0);
    coll.all_to_all(&s.rows, &s.send_counts, &mut s.received, &s.recv_counts)
        .map_err(exchange_error("expert all-to-all (rows)"))?;

    // 3. Regroup by local expert, each group in place order; zero the rest.
    s.rows.clear();
    s.rows.resize(d.ranks * d.rows * w, 0.0);
    let local_off = expert_starts(&s.counts, d.ranks, local);
    // Where each source's rows for expert e start in `received` (blocks in
    // place order, each by local expert); advanced expert by expert.
    let mut next_row: Vec<usize> = s
        .counts
        .chunks_exact(local.max(1))
        .scan(0usize, |at, block| {
            let start = *at;
            *at += block.iter().sum::<i64>() as usize;
            Some(start)
        })
        .collect();
    let mut dst = 0usize;
    for e in 0..local {
        for (p, row) in next_row.iter_mut().enumerate() {
            let n = s.counts[p * local + e] as usize;
            let src = *row * w;
            *row += n;
            s.rows[dst * w..(dst + n) * w].copy_from_slice(&s.received[src..src + n * w]);
            dst += n;
        }
    }
    backend.write(y, bytemuck::cast_slice(&s.rows))?;
    backend.write(local_offsets, bytemuck::cast_slice(&local_off))?;
    backend.write(counts, bytemuck::cast_slice(&s.counts))?;
    Ok(sent)
}

fn combine<B: Backend>(
    backend: &mut B,
    coll: &mut dyn Collective,
    s: &mut ExchangeScratch,
    [y, offsets, counts]: [View; 3],
    x: View,
    d: &ExchangeDims,
) -> Result<u64> {
    let group = group_of(coll, d.ranks)?;
    let (world, local, w) = (coll.world(), d.local(), d.width);
    read_offsets(backend, offsets, d.rows, &mut s.offsets)?;
    s.counts.resize(counts.len, 0);
    backend.read(counts, bytemuck::cast_slice_mut(&mut s.counts))?;
    if s.counts.iter().any(|&c| c < 0) {
        return Err(Error::Data(format!(
            "expert combine: negative row counts {:?}",
            s.counts
        )));
    }
    let held: usize = s.counts.iter().sum::<i64>() as usize;
    if held > d.ranks * d.rows {
        return Err(Error::Data(format!(
            "expert combine: the counts name {held} rows, more than the {} the layout holds",
            d.ranks * d.rows
        )));
    }
    s.received.resize(held * w, 0.0);
    backend.read(
        y.sub(0, held * w),
        bytemuck::cast_slice_mut(&mut s.received),
    )?;

    // Rows by place (each place's block by local expert), from the layout
    // grouped by local expert.
    s.rows.clear();
    let expert_start = expert_starts(&s.counts, d.ranks, local);
    reset_counts(&mut s.send_counts, world);
    reset_counts(&mut s.recv_counts, world);
    let me = coll.rank() - group.start;
    let mut sent = 0u64;
    for (p, q) in group.clone().enumerate() {
        let mut block = 0usize;
        for (e, &start) in expert_start[..local].iter().enumerate() {
            let before: usize = (0..p).map(|pp| s.counts[pp * local + e] as usize).sum();
            let n = s.counts[p * local + e] as usize;
            let src = (start as usize + before) * w;
            s.rows.extend_from_slice(&s.received[src..src + n * w]);
            block += n;
        }
        s.send_counts[q] = block * w;
        if p != me {
            sent += (block * w * 4) as u64;
        }
        let o = &s.offsets;
        s.recv_counts[q] = (o[(p + 1) * local] - o[p * local]) as usize * w;
    }
    let used = s.offsets[d.experts] as usize;
    s.received.clear();
    s.received.resize(d.rows * w, 0.0);
    coll.all_to_all(
        &s.rows,
        &s.send_counts,
        &mut s.received[..used * w],
        &s.recv_counts,
    )
    .map_err(exchange_error("expert all-to-all (combine)"))?;
    backend.write(x, bytemuck::cast_slice(&s.received))?;
    Ok(sent)
}

/// Where each local expert's rows start in the layout grouped by local
/// expert (`local + 1` entries): prefix sums of the counts `[ranks, local]`
/// over places.
fn expert_starts(counts: &[i64], ranks: usize, local: usize) -> Vec<i64> {
    let mut starts = Vec::with_capacity(local + 1);
    let mut at = 0;
    starts.push(at);
    for e in 0..local {
        at += (0..ranks).map(|p| counts[p * local + e]).sum::<i64>();
        starts.push(at);
    }
    starts
}

/// Sums `data` over the world ranks `members` (this rank among them) with
/// one `all_to_all`: every member sends its buffer to every other member
/// and adds what it receives in rank order, so all members end with the
/// same bits. Returns the bytes sent. `scratch` grows to
/// `members.len() · data.len()`.
pub fn group_all_reduce(
    coll: &mut dyn Collective,
    data: &mut [f32],
    members: impl Iterator<Item = usize> + Clone,
    scratch: &mut Vec<f32>,
) -> Result<u64> {
    let world = coll.world();
    let n = data.len();
    let count = members.clone().count();
    if count <= 1 {
        return Ok(0);
    }
    let mut send_counts = vec![0usize; world];
    for q in members.clone() {
        send_counts[q] = n;
    }
    scratch.resize(count * n, 0.0);
    let send: Vec<f32> = std::iter::repeat_n(&*data, count)
        .flatten()
        .copied()
        .collect();
    coll.all_to_all(&send, &send_counts, scratch, &send_counts)
        .map_err(exchange_error("group all-reduce"))?;
    data.fill(0.0);
    for block in scratch.chunks_exact(n.max(1)).take(count) {
        for (d, &v) in data.iter_mut().zip(block) {
            *d += v;
        }
    }
    Ok(((count - 1) * n * 4) as u64)
}
