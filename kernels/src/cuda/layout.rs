//! Host-side layouts handed to kernels by value, and the checks the CPU
//! kernels make on shapes and strides, made before anything is launched.
//!
//! [`Strided`] and [`ReduceLayout`] mirror the structs of the same names in
//! `kernels/cuda/common.cuh` field for field (`#[repr(C)]`, 8-byte aligned).

use crate::backend::{Error, Result};

/// The highest rank a strided kernel accepts (as the CPU's).
pub const MAX_RANK: usize = 8;

/// Up to three operands stepping through one shape: `stride[k][d]` is
/// operand `k`'s element stride along axis `d` (0 where it broadcasts).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strided {
    pub rank: u32,
    pub pad: u32,
    pub shape: [u64; MAX_RANK],
    pub stride: [[u64; MAX_RANK]; 3],
}

/// The kept and reduced axes of a reduction's input with their strides in
/// `x`, outermost first.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReduceLayout {
    pub kept_rank: u32,
    pub red_rank: u32,
    pub kept_shape: [u64; MAX_RANK],
    pub kept_stride: [u64; MAX_RANK],
    pub red_shape: [u64; MAX_RANK],
    pub red_stride: [u64; MAX_RANK],
}

/// The element count of `shape`, checking the rank and for overflow.
pub fn check_shape(what: &'static str, shape: &[usize]) -> Result<usize> {
    if shape.len() > MAX_RANK {
        return Err(Error::Invalid(format!(
            "{what}: rank {} exceeds {MAX_RANK}",
            shape.len()
        )));
    }
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Invalid(format!("{what}: shape {shape:?} overflows")))
}

/// One stride per axis, and every element of `shape` inside `len`.
pub fn check_strides(
    what: &'static str,
    shape: &[usize],
    strides: &[usize],
    len: usize,
) -> Result<()> {
    if strides.len() != shape.len() {
        return Err(Error::Invalid(format!(
            "{what}: {} strides for rank {}",
            strides.len(),
            shape.len()
        )));
    }
    if shape.contains(&0) {
        return Ok(());
    }
    let last = shape.iter().zip(strides).try_fold(0usize, |a, (&d, &s)| {
        (d - 1).checked_mul(s).and_then(|o| a.checked_add(o))
    });
    match last {
        Some(last) if last < len => Ok(()),
        _ => Err(Error::Invalid(format!(
            "{what}: strides {strides:?} over shape {shape:?} reach past the {len} elements of the slice"
        ))),
    }
}

impl Strided {
    /// The layout of `K ≤ 3` operands over a contiguous output of
    /// `out_len` elements, checked (as the CPU's broadcasting kernels) and
    /// simplified: axes of size 1 dropped, neighbours merged where every
    /// operand steps through them contiguously. Returns the element count.
    pub fn broadcast<const K: usize>(
        what: &'static str,
        shape: &[usize],
        strides: [&[usize]; K],
        lens: [usize; K],
        out_len: usize,
    ) -> Result<(Strided, usize)> {
        debug_assert!(K <= 3);
        let numel = check_shape(what, shape)?;
        if numel != out_len {
            return Err(Error::Length {
                what,
                expected: numel,
                found: out_len,
            });
        }
        for k in 0..K {
            check_strides(what, shape, strides[k], lens[k])?;
        }
        Ok((Strided::merged(shape, &strides), numel))
    }

    /// The layout of a strided copy (`[src, dst]`), checked as the CPU's
    /// `copy_strided` and simplified. Returns the element count.
    pub fn copy(
        shape: &[usize],
        src_strides: &[usize],
        src_len: usize,
        dst_strides: &[usize],
        dst_len: usize,
    ) -> Result<(Strided, usize)> {
        let n = check_shape("copy_strided", shape)?;
        check_strides("copy_strided src", shape, src_strides, src_len)?;
        check_strides("copy_strided dst", shape, dst_strides, dst_len)?;
        Ok((Strided::merged(shape, &[src_strides, dst_strides]), n))
    }

    /// Drops size-1 axes and merges axis `d` into the one before it where
    /// every operand's stride there is `stride[d]·shape[d]`.
    fn merged(shape: &[usize], strides: &[&[usize]]) -> Strided {
        let mut s = Strided {
            rank: 0,
            pad: 0,
            shape: [1; MAX_RANK],
            stride: [[0; MAX_RANK]; 3],
        };
        let mut r = 0usize;
        for (d, &n) in shape.iter().enumerate() {
            if n == 1 {
                continue;
            }
            let n = n as u64;
            let mergeable = r > 0
                && strides
                    .iter()
                    .enumerate()
                    .all(|(k, st)| (st[d] as u64).checked_mul(n) == Some(s.stride[k][r - 1]));
            if mergeable {
                s.shape[r - 1] *= n;
                for (k, st) in strides.iter().enumerate() {
                    s.stride[k][r - 1] = st[d] as u64;
                }
            } else {
                s.shape[r] = n;
                for (k, st) in strides.iter().enumerate() {
                    s.stride[k][r] = st[d] as u64;
                }
                r += 1;
            }
        }
        s.rank = r.max(1) as u32;
        s
    }
}

impl ReduceLayout {
    /// The simplified layout of reducing the axes of `shape` marked in
    /// `axes` (contiguous input), and whether the innermost remaining axis
    /// is reduced. Size-1 axes go, neighbours both reduced or both kept
    /// merge; a reduction to nothing becomes one reduced axis of size 1.
    pub fn new(shape: &[usize], axes: &[bool]) -> (ReduceLayout, bool) {
        let mut dims = [(1usize, false); MAX_RANK];
        let mut r = 0;
        for (&n, &red) in shape.iter().zip(axes) {
            if n == 1 {
                continue;
            }
            if r > 0 && dims[r - 1].1 == red {
                dims[r - 1].0 *= n;
            } else {
                dims[r] = (n, red);
                r += 1;
            }
        }
        if r == 0 {
            (dims[0], r) = ((1, true), 1);
        }
        let mut l = ReduceLayout {
            kept_rank: 0,
            red_rank: 0,
            kept_shape: [1; MAX_RANK],
            kept_stride: [0; MAX_RANK],
            red_shape: [1; MAX_RANK],
            red_stride: [0; MAX_RANK],
        };
        // Strides from the innermost axis out, then placed outermost first.
        let mut stride = 1u64;
        let (mut kept, mut red) = ([(1u64, 0u64); MAX_RANK], [(1u64, 0u64); MAX_RANK]);
        let (mut nk, mut nr) = (0usize, 0usize);
        for &(n, is_red) in dims[..r].iter().rev() {
            let entry = (n as u64, stride);
            if is_red {
                red[nr] = entry;
                nr += 1;
            } else {
                kept[nk] = entry;
                nk += 1;
            }
            stride *= n as u64;
        }
        for (i, &(n, s)) in kept[..nk].iter().rev().enumerate() {
            (l.kept_shape[i], l.kept_stride[i]) = (n, s);
        }
        for (i, &(n, s)) in red[..nr].iter().rev().enumerate() {
            (l.red_shape[i], l.red_stride[i]) = (n, s);
        }
        l.kept_rank = nk as u32;
        l.red_rank = nr as u32;
        (l, dims[r - 1].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_merges_contiguous_axes_and_keeps_bias_rows() {
        let (s, n) =
            Strided::broadcast("t", &[2, 3, 4], [&[12, 4, 1], &[0, 0, 1]], [24, 4], 24).unwrap();
        assert_eq!(n, 24);
        assert_eq!(s.rank, 2);
        assert_eq!(&s.shape[..2], &[6, 4]);
        assert_eq!(&s.stride[0][..2], &[4, 1]);
        assert_eq!(&s.stride[1][..2], &[0, 1]);
        let (s, _) = Strided::broadcast("t", &[2, 3], [&[3, 1], &[3, 1]], [6, 6], 6).unwrap();
        assert_eq!((s.rank, s.shape[0], s.stride[0][0]), (1, 6, 1));
        assert!(Strided::broadcast("t", &[2, 3], [&[3, 1]], [5], 6).is_err());
        assert!(Strided::broadcast("t", &[2, 3], [&[3, 1]], [6], 7).is_err());
    }

    #[test]
    fn reduce_layout_splits_kept_and_reduced_axes() {
        // [A, B, C] reducing B: kept A (stride B·C) and C (stride 1).
        let (l, last_red) = ReduceLayout::new(&[2, 3, 4], &[false, true, false]);
        assert!(!last_red);
        assert_eq!(l.kept_rank, 2);
        assert_eq!(&l.kept_shape[..2], &[2, 4]);
        assert_eq!(&l.kept_stride[..2], &[12, 1]);
        assert_eq!((l.red_rank, l.red_shape[0], l.red_stride[0]), (1, 3, 4));
        // Full reduction: one reduced axis.
        let (l, last_red) = ReduceLayout::new(&[5, 7], &[true, true]);
        assert!(last_red);
        assert_eq!((l.kept_rank, l.red_rank, l.red_shape[0]), (0, 1, 35));
    }
}
