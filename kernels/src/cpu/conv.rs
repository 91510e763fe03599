//! 2-D convolution by im2col and GEMM, and pooling by direct loops (NCHW,
//! f32).
//!
//! im2col unrolls a chunk of images into columns: image `i`'s block is a
//! `[c·kh·kw, oh·ow]` matrix whose row `(ch, ky, kx)` holds the input tap
//! `(ky, kx)` of channel `ch` for every output position (zero in the
//! padding). Group `g`'s rows are the contiguous block of its channels, so
//! per image and group:
//!
//! - forward: `y_g [mg, oh·ow] = w_g [mg, cg·kh·kw] · col_g`;
//! - input gradient: `dcol_g = w_gᵀ · dy_g`, then col2im adds each column
//!   entry back onto its input tap;
//! - weight gradient: `dw_g += dy_g · col_gᵀ`, accumulated over images.
//!
//! The column matrix lives in a scratch buffer the backend keeps and grows
//! (so a step allocates nothing once the largest convolution has run);
//! chunks of images bound it to [`SCRATCH_FLOATS`] (or one image). A 1×1,
//! stride-1, unpadded convolution skips im2col: the image is its own column
//! matrix. im2col and col2im split over (image, channel) blocks on rayon's
//! pool; the GEMMs run one per image in parallel when they are small and
//! many, else one after another, each threaded inside `gemm`.
//!
//! Pools loop directly, split over planes. A MaxPool window's argmax is its
//! first largest tap in row-major tap order, padding never counting, the
//! reference interpreter's rule.

use rayon::prelude::*;

use super::PARALLEL_THRESHOLD;
use super::matmul::{BATCH_PARALLEL_WORK, Strides, parallelism};
use crate::alloc_audit::third_party;
use crate::backend::{Conv2dDims, Error, Pool2dDims, Result};

/// Floats of column matrix per chunk of images (64 MiB), unless one image
/// needs more.
pub const SCRATCH_FLOATS: usize = 1 << 24;

fn expect_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::Length {
            what,
            expected,
            found,
        })
    }
}

fn overflow(what: &str) -> Error {
    Error::Invalid(format!("{what}: size overflows usize"))
}

fn product(what: &str, xs: &[usize]) -> Result<usize> {
    xs.iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| overflow(what))
}

/// Sizes derived from [`Conv2dDims`], checked for overflow and consistency.
#[derive(Debug, Clone, Copy)]
struct Geom {
    d: Conv2dDims,
    /// Output channels per group.
    mg: usize,
    /// Rows of a group's column block: `cg·kh·kw`.
    kg: usize,
    /// Output positions per image: `oh·ow`.
    p: usize,
    /// Elements per image of x, y and the column matrix.
    x_img: usize,
    y_img: usize,
    col_img: usize,
    /// Elements of w.
    w_len: usize,
}

impl Geom {
    fn new(d: &Conv2dDims) -> Result<Geom> {
        let g = d.groups;
        if g == 0
            || !d.c.is_multiple_of(g)
            || !d.m.is_multiple_of(g)
            || d.strides.contains(&0)
            || d.dilations.contains(&0)
        {
            return Err(Error::Invalid(format!(
                "conv2d: {} input and {} output channels, groups {g}, strides {:?} and dilations {:?} do not fit",
                d.c, d.m, d.strides, d.dilations
            )));
        }
        let (cg, mg) = (d.c / g, d.m / g);
        let kg = product("conv2d", &[cg, d.kh, d.kw])?;
        let p = product("conv2d", &[d.oh, d.ow])?;
        Ok(Geom {
            d: *d,
            mg,
            kg,
            p,
            x_img: product("conv2d", &[d.c, d.h, d.w])?,
            y_img: product("conv2d", &[d.m, p])?,
            col_img: product("conv2d", &[d.c, d.kh, d.kw, p])?,
            w_len: product("conv2d", &[d.m, kg])?,
        })
    }

    fn check(&self, x: usize, w: usize, y: usize, names: [&'static str; 3]) -> Result<()> {
        let n = self.d.n;
        expect_len(names[0], product(names[0], &[n, self.x_img])?, x)?;
        expect_len(names[1], self.w_len, w)?;
        expect_len(names[2], product(names[2], &[n, self.y_img])?, y)
    }

    /// Whether the image is its own column matrix (1×1, stride 1, no pad).
    fn pointwise(&self) -> bool {
        let d = &self.d;
        d.kh == 1
            && d.kw == 1
            && d.strides == [1, 1]
            && d.pads == [0; 4]
            && d.oh == d.h
            && d.ow == d.w
    }

    /// Images per im2col chunk.
    fn chunk(&self) -> usize {
        (SCRATCH_FLOATS / self.col_img.max(1)).clamp(1, self.d.n.max(1))
    }

    /// The input row (or column) of tap `t` of output `o` along axis `a`,
    /// `None` in the padding.
    #[inline]
    fn tap(&self, a: usize, o: usize, t: usize) -> Option<usize> {
        let d = &self.d;
        let size = if a == 0 { d.h } else { d.w };
        let pos = (o * d.strides[a] + t * d.dilations[a]).checked_sub(d.pads[a])?;
        (pos < size).then_some(pos)
    }

    /// One (image, channel) block of the column matrix from its input plane.
    fn im2col_block(&self, plane: &[f32], block: &mut [f32]) {
        let d = &self.d;
        let (oh, ow, w) = (d.oh, d.ow, d.w);
        for ky in 0..d.kh {
            for kx in 0..d.kw {
                let rows = &mut block[(ky * d.kw + kx) * self.p..][..self.p];
                for oy in 0..oh {
                    let out = &mut rows[oy * ow..(oy + 1) * ow];
                    let Some(iy) = self.tap(0, oy, ky) else {
                        out.fill(0.0);
                        continue;
                    };
                    let src = &plane[iy * w..(iy + 1) * w];
                    for (ox, o) in out.iter_mut().enumerate() {
                        *o = self.tap(1, ox, kx).map_or(0.0, |ix| src[ix]);
                    }
                }
            }
        }
    }

    /// One (image, channel) plane of dx from its block of column gradients.
    fn col2im_block(&self, block: &[f32], plane: &mut [f32]) {
        let d = &self.d;
        let (oh, ow, w) = (d.oh, d.ow, d.w);
        plane.fill(0.0);
        for ky in 0..d.kh {
            for kx in 0..d.kw {
                let rows = &block[(ky * d.kw + kx) * self.p..][..self.p];
                for oy in 0..oh {
                    let Some(iy) = self.tap(0, oy, ky) else {
                        continue;
                    };
                    let dst = &mut plane[iy * w..(iy + 1) * w];
                    for (ox, &v) in rows[oy * ow..(oy + 1) * ow].iter().enumerate() {
                        if let Some(ix) = self.tap(1, ox, kx) {
                            dst[ix] += v;
                        }
                    }
                }
            }
        }
    }

    /// Column matrices of `images` consecutive images of `x` into `col`.
    fn im2col(&self, x: &[f32], col: &mut [f32]) {
        let (hw, block) = (self.d.h * self.d.w, self.d.kh * self.d.kw * self.p);
        let run = |(i, b): (usize, &mut [f32])| self.im2col_block(&x[i * hw..][..hw], b);
        if col.len() < PARALLEL_THRESHOLD {
            col.chunks_exact_mut(block).enumerate().for_each(run);
        } else {
            col.par_chunks_exact_mut(block).enumerate().for_each(run);
        }
    }

    /// dx planes of consecutive images from their column gradients.
    fn col2im(&self, col: &[f32], dx: &mut [f32]) {
        let (hw, block) = (self.d.h * self.d.w, self.d.kh * self.d.kw * self.p);
        let run =
            |(i, plane): (usize, &mut [f32])| self.col2im_block(&col[i * block..][..block], plane);
        if col.len() < PARALLEL_THRESHOLD {
            dx.chunks_exact_mut(hw).enumerate().for_each(run);
        } else {
            dx.par_chunks_exact_mut(hw).enumerate().for_each(run);
        }
    }

    /// Whether a chunk's per-image GEMMs run one image per rayon task.
    fn images_in_parallel(&self, images: usize, work: usize) -> bool {
        let threads = rayon::current_num_threads();
        threads > 1
            && images >= threads
            && work < 2 * 64 * 64 * 64
            && work.saturating_mul(images) >= BATCH_PARALLEL_WORK
    }

    /// Runs `image(i, out_i, par)` for each of the `count` images whose
    /// outputs are consecutive `len`-element pieces of `out`: one image
    /// per task when they are many and small, else in turn with the GEMMs
    /// threaded inside.
    fn for_each_image(
        &self,
        out: &mut [f32],
        len: usize,
        count: usize,
        work: usize,
        image: &(impl Fn(usize, &mut [f32], gemm::Parallelism) + Sync),
    ) {
        if self.images_in_parallel(count, work) {
            out.par_chunks_exact_mut(len)
                .enumerate()
                .for_each(|(i, o)| image(i, o, gemm::Parallelism::None));
        } else {
            for (i, o) in out.chunks_exact_mut(len).enumerate() {
                image(i, o, parallelism(work));
            }
        }
    }
}

/// `c = a · b` (or `c += a · b` when `accumulate`) for an `[m, k]` by
/// `[k, n]` product whose operands are described by `st` inside the given
/// slices, which must hold every element the strides reach.
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    st: Strides,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[i * st.dst_rs as usize + j * st.dst_cs as usize] = 0.0;
                }
            }
        }
        return;
    }
    // The largest offset each operand's strides reach must be inside it.
    let last = |rows: usize, cols: usize, rs: isize, cs: isize| {
        (rows - 1) * rs as usize + (cols - 1) * cs as usize
    };
    let ok = last(m, k, st.lhs_rs, st.lhs_cs) < a.len()
        && last(k, n, st.rhs_rs, st.rhs_cs) < b.len()
        && last(m, n, st.dst_rs, st.dst_cs) < c.len();
    debug_assert!(ok, "conv gemm: operand slices too short");
    if !ok {
        return;
    }
    third_party(|| {
        // SAFETY: every element gemm touches, i·rs + j·cs within each
        // operand's rows and columns, is below that operand's slice length
        // (checked above, strides non-negative); `c` is a unique borrow, so
        // it aliases neither input. With read_dst false c's old contents
        // (anything, NaN included) are not read; with it true (accumulate)
        // c holds values this kernel wrote.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                st.dst_cs,
                st.dst_rs,
                accumulate,
                a.as_ptr(),
                st.lhs_cs,
                st.lhs_rs,
                b.as_ptr(),
                st.rhs_cs,
                st.rhs_rs,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            );
        }
    });
}

/// Row-major strides: `a [m, k]` (or its transpose stored `[k, m]`), `b
/// [k, n]` (or stored `[n, k]`), `c [m, n]`.
fn strides(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Strides {
    let (m, n, k) = (m as isize, n as isize, k as isize);
    let (lhs_cs, lhs_rs) = if trans_a { (m, 1) } else { (1, k) };
    let (rhs_cs, rhs_rs) = if trans_b { (k, 1) } else { (1, n) };
    Strides {
        lhs_cs,
        lhs_rs,
        rhs_cs,
        rhs_rs,
        dst_cs: 1,
        dst_rs: n,
    }
}

/// The column matrices of images `i0..i0 + count`: `x` itself for a
/// pointwise convolution, else im2col into `scratch`.
fn columns<'a>(
    g: &Geom,
    x: &'a [f32],
    i0: usize,
    count: usize,
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    let xs = &x[i0 * g.x_img..(i0 + count) * g.x_img];
    if g.pointwise() {
        return xs;
    }
    let need = count * g.col_img;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    g.im2col(xs, &mut scratch[..need]);
    &scratch[..need]
}

/// `y = conv(x, w)`.
pub fn conv2d(
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    dims: &Conv2dDims,
    scratch: &mut Vec<f32>,
) -> Result<()> {
    let g = Geom::new(dims)?;
    g.check(
        x.len(),
        w.len(),
        y.len(),
        ["conv2d x", "conv2d w", "conv2d y"],
    )?;
    let (mg, kg, p) = (g.mg, g.kg, g.p);
    let st = strides(mg, p, kg, false, false);
    let work = g.d.m * kg * p;
    let chunk = g.chunk();
    let mut i0 = 0;
    while i0 < g.d.n {
        let count = chunk.min(g.d.n - i0);
        let col = columns(&g, x, i0, count, scratch);
        let ys = &mut y[i0 * g.y_img..(i0 + count) * g.y_img];
        let image = |i: usize, y_i: &mut [f32], par: gemm::Parallelism| {
            let col_i = &col[i * g.col_img..(i + 1) * g.col_img];
            for grp in 0..g.d.groups {
                let (w_g, c_g) = (
                    &w[grp * mg * kg..][..mg * kg],
                    &col_i[grp * kg * p..][..kg * p],
                );
                let y_g = &mut y_i[grp * mg * p..][..mg * p];
                gemm_into((mg, p, kg), w_g, c_g, y_g, st, false, par);
            }
        };
        g.for_each_image(ys, g.y_img, count, work, &image);
        i0 += count;
    }
    Ok(())
}

/// `dx`: the transpose of [`conv2d`] in x applied to `dy`.
pub fn conv2d_grad_input(
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dims: &Conv2dDims,
    scratch: &mut Vec<f32>,
) -> Result<()> {
    let g = Geom::new(dims)?;
    g.check(
        dx.len(),
        w.len(),
        dy.len(),
        [
            "conv2d_grad_input dx",
            "conv2d_grad_input w",
            "conv2d_grad_input dy",
        ],
    )?;
    let (mg, kg, p) = (g.mg, g.kg, g.p);
    // dcol_g [kg, p] = w_gᵀ · dy_g: w_g is stored [mg, kg].
    let st = strides(kg, p, mg, true, false);
    let work = g.d.m * kg * p;
    let pointwise = g.pointwise();
    let chunk = g.chunk();
    let mut i0 = 0;
    while i0 < g.d.n {
        let count = chunk.min(g.d.n - i0);
        let dys = &dy[i0 * g.y_img..(i0 + count) * g.y_img];
        let dxs = &mut dx[i0 * g.x_img..(i0 + count) * g.x_img];
        // A pointwise convolution's column gradients are dx itself.
        let need = count * g.col_img;
        if !pointwise && scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        let col: &mut [f32] = if pointwise {
            &mut *dxs
        } else {
            &mut scratch[..need]
        };
        let image = |i: usize, col_i: &mut [f32], par: gemm::Parallelism| {
            let dy_i = &dys[i * g.y_img..(i + 1) * g.y_img];
            for grp in 0..g.d.groups {
                let w_g = &w[grp * mg * kg..][..mg * kg];
                let dy_g = &dy_i[grp * mg * p..][..mg * p];
                let c_g = &mut col_i[grp * kg * p..][..kg * p];
                gemm_into((kg, p, mg), w_g, dy_g, c_g, st, false, par);
            }
        };
        g.for_each_image(col, g.col_img, count, work, &image);
        if !pointwise {
            g.col2im(&scratch[..need], dxs);
        }
        i0 += count;
    }
    Ok(())
}

/// `dw`: the transpose of [`conv2d`] in w applied to `dy`.
pub fn conv2d_grad_weight(
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dims: &Conv2dDims,
    scratch: &mut Vec<f32>,
) -> Result<()> {
    let g = Geom::new(dims)?;
    g.check(
        x.len(),
        dw.len(),
        dy.len(),
        [
            "conv2d_grad_weight x",
            "conv2d_grad_weight dw",
            "conv2d_grad_weight dy",
        ],
    )?;
    let (mg, kg, p) = (g.mg, g.kg, g.p);
    // dw_g [mg, kg] += dy_g [mg, p] · col_gᵀ (col_g stored [kg, p]).
    let st = strides(mg, kg, p, false, true);
    let par = parallelism(mg * kg * p);
    if g.d.n == 0 || p == 0 {
        dw.fill(0.0);
        return Ok(());
    }
    let chunk = g.chunk();
    let mut i0 = 0;
    while i0 < g.d.n {
        let count = chunk.min(g.d.n - i0);
        let col = columns(&g, x, i0, count, scratch);
        for i in 0..count {
            let col_i = &col[i * g.col_img..(i + 1) * g.col_img];
            let dy_i = &dy[(i0 + i) * g.y_img..(i0 + i + 1) * g.y_img];
            for grp in 0..g.d.groups {
                let dy_g = &dy_i[grp * mg * p..][..mg * p];
                let c_g = &col_i[grp * kg * p..][..kg * p];
                let dw_g = &mut dw[grp * mg * kg..][..mg * kg];
                gemm_into((mg, kg, p), dy_g, c_g, dw_g, st, i0 + i > 0, par);
            }
        }
        i0 += count;
    }
    Ok(())
}

// ----- pools -----

/// Checked sizes of a pool: elements per input and output plane.
fn pool_sizes(what: &'static str, d: &Pool2dDims, x: usize, y: usize) -> Result<(usize, usize)> {
    if d.strides.contains(&0) || d.dilations.contains(&0) {
        return Err(Error::Invalid(format!(
            "{what}: strides {:?} and dilations {:?} must be positive",
            d.strides, d.dilations
        )));
    }
    let (xp, yp) = (product(what, &[d.h, d.w])?, product(what, &[d.oh, d.ow])?);
    expect_len(what, product(what, &[d.planes, xp])?, x)?;
    expect_len(what, product(what, &[d.planes, yp])?, y)?;
    Ok((xp, yp))
}

/// Window tap `t` of output `o` along axis `a`: its input position (`None`
/// in the padding) and whether it is inside the padded input.
#[inline]
fn pool_tap(d: &Pool2dDims, a: usize, o: usize, t: usize) -> (Option<usize>, bool) {
    let size = if a == 0 { d.h } else { d.w };
    let pos = o * d.strides[a] + t * d.dilations[a];
    let inside = pos >= d.pads[a] && pos < d.pads[a] + size;
    (
        inside.then(|| pos - d.pads[a]),
        pos < d.pads[a] + size + d.pads[a + 2],
    )
}

/// The flat in-plane index of window `(oy, ox)`'s argmax in `plane`.
#[inline]
fn argmax(d: &Pool2dDims, plane: &[f32], oy: usize, ox: usize) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for ky in 0..d.kernel[0] {
        let Some(iy) = pool_tap(d, 0, oy, ky).0 else {
            continue;
        };
        for kx in 0..d.kernel[1] {
            let Some(ix) = pool_tap(d, 1, ox, kx).0 else {
                continue;
            };
            let i = iy * d.w + ix;
            if best.is_none_or(|(_, v)| plane[i] > v) {
                best = Some((i, plane[i]));
            }
        }
    }
    best.map(|(i, _)| i)
}

/// Runs `f(plane index, out plane)` over the `chunk`-sized planes of
/// `out`, in parallel when `work` is large.
fn planes(out: &mut [f32], chunk: usize, work: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if chunk == 0 {
        return;
    }
    if work < PARALLEL_THRESHOLD {
        out.chunks_exact_mut(chunk)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    } else {
        out.par_chunks_exact_mut(chunk)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    }
}

fn window_work(d: &Pool2dDims, y: usize) -> usize {
    y.saturating_mul(d.kernel[0] * d.kernel[1])
}

/// The largest tap of each window.
pub fn max_pool2d(x: &[f32], y: &mut [f32], d: &Pool2dDims) -> Result<()> {
    let (xp, yp) = pool_sizes("max_pool2d", d, x.len(), y.len())?;
    let work = window_work(d, y.len());
    planes(y, yp, work, |i, out| {
        let plane = &x[i * xp..(i + 1) * xp];
        for oy in 0..d.oh {
            for ox in 0..d.ow {
                out[oy * d.ow + ox] =
                    argmax(d, plane, oy, ox).map_or(f32::NEG_INFINITY, |j| plane[j]);
            }
        }
    });
    Ok(())
}

/// `dx`: each `dy` added at its window's argmax in `x`.
pub fn max_pool2d_grad(x: &[f32], dy: &[f32], dx: &mut [f32], d: &Pool2dDims) -> Result<()> {
    let (xp, yp) = pool_sizes("max_pool2d_grad", d, x.len(), dy.len())?;
    expect_len("max_pool2d_grad dx", x.len(), dx.len())?;
    let work = window_work(d, dy.len());
    planes(dx, xp, work, |i, out| {
        let (plane, g) = (&x[i * xp..(i + 1) * xp], &dy[i * yp..(i + 1) * yp]);
        out.fill(0.0);
        for oy in 0..d.oh {
            for ox in 0..d.ow {
                if let Some(j) = argmax(d, plane, oy, ox) {
                    out[j] += g[oy * d.ow + ox];
                }
            }
        }
    });
    Ok(())
}

/// `y`: `v` read at each window's argmax in `x`.
pub fn max_pool2d_select(x: &[f32], v: &[f32], y: &mut [f32], d: &Pool2dDims) -> Result<()> {
    let (xp, yp) = pool_sizes("max_pool2d_select", d, x.len(), y.len())?;
    expect_len("max_pool2d_select v", x.len(), v.len())?;
    let work = window_work(d, y.len());
    planes(y, yp, work, |i, out| {
        let (plane, vs) = (&x[i * xp..(i + 1) * xp], &v[i * xp..(i + 1) * xp]);
        for oy in 0..d.oh {
            for ox in 0..d.ow {
                out[oy * d.ow + ox] = argmax(d, plane, oy, ox).map_or(0.0, |j| vs[j]);
            }
        }
    });
    Ok(())
}

/// `1 / (the window's tap count)` for output `(oy, ox)`, or 0 for a window
/// without taps.
#[inline]
fn avg_scale(d: &Pool2dDims, oy: usize, ox: usize, count_include_pad: bool) -> f32 {
    let count = |a: usize, o: usize| {
        (0..d.kernel[a])
            .filter(|&t| {
                let (pos, padded) = pool_tap(d, a, o, t);
                if count_include_pad {
                    padded
                } else {
                    pos.is_some()
                }
            })
            .count()
    };
    let n = count(0, oy) * count(1, ox);
    if n == 0 { 0.0 } else { 1.0 / n as f32 }
}

/// The mean of each window.
pub fn avg_pool2d(x: &[f32], y: &mut [f32], d: &Pool2dDims, count_include_pad: bool) -> Result<()> {
    let (xp, yp) = pool_sizes("avg_pool2d", d, x.len(), y.len())?;
    let work = window_work(d, y.len());
    planes(y, yp, work, |i, out| {
        let plane = &x[i * xp..(i + 1) * xp];
        for oy in 0..d.oh {
            for ox in 0..d.ow {
                let mut sum = 0.0f32;
                for ky in 0..d.kernel[0] {
                    let Some(iy) = pool_tap(d, 0, oy, ky).0 else {
                        continue;
                    };
                    for kx in 0..d.kernel[1] {
                        if let Some(ix) = pool_tap(d, 1, ox, kx).0 {
                            sum += plane[iy * d.w + ix];
                        }
                    }
                }
                out[oy * d.ow + ox] = sum * avg_scale(d, oy, ox, count_include_pad);
            }
        }
    });
    Ok(())
}

/// The transpose of [`avg_pool2d`].
pub fn avg_pool2d_grad(
    dy: &[f32],
    dx: &mut [f32],
    d: &Pool2dDims,
    count_include_pad: bool,
) -> Result<()> {
    let (xp, yp) = pool_sizes("avg_pool2d_grad", d, dx.len(), dy.len())?;
    let work = window_work(d, dy.len());
    planes(dx, xp, work, |i, out| {
        let g = &dy[i * yp..(i + 1) * yp];
        out.fill(0.0);
        for oy in 0..d.oh {
            for ox in 0..d.ow {
                let v = g[oy * d.ow + ox] * avg_scale(d, oy, ox, count_include_pad);
                for ky in 0..d.kernel[0] {
                    let Some(iy) = pool_tap(d, 0, oy, ky).0 else {
                        continue;
                    };
                    for kx in 0..d.kernel[1] {
                        if let Some(ix) = pool_tap(d, 1, ox, kx).0 {
                            out[iy * d.w + ix] += v;
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
#[path = "tests/conv.rs"]
mod tests;
