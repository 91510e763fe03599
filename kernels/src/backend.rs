//! The `Backend` trait: memory, copies and one method per kernel.

/// A buffer of device memory owned by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BufferId(pub u32);

/// Element types kernels read and write: floats compute in f32 (bf16 and
/// f16 are storage types, widened to f32 for arithmetic), indices are i64
/// or i32, booleans are bytes (0 or 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    F32,
    BF16,
    F16,
    I32,
    I64,
    U8,
}

impl ElemType {
    pub fn size(self) -> usize {
        match self {
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::BF16 | ElemType::F16 => 2,
            ElemType::I64 => 8,
            ElemType::U8 => 1,
        }
    }

    /// bf16 or f16.
    pub fn is_half(self) -> bool {
        matches!(self, ElemType::BF16 | ElemType::F16)
    }

    /// A float type (f32 or a half type).
    pub fn is_float(self) -> bool {
        self == ElemType::F32 || self.is_half()
    }
}

/// `len` elements of `elem` starting `offset` bytes into `buffer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct View {
    pub buffer: BufferId,
    pub offset: usize,
    pub len: usize,
    pub elem: ElemType,
}

impl View {
    pub fn bytes(&self) -> usize {
        self.len * self.elem.size()
    }

    /// Whether the two views share any byte.
    pub fn overlaps(&self, other: &View) -> bool {
        self.buffer == other.buffer
            && self.bytes() > 0
            && other.bytes() > 0
            && self.offset < other.offset + other.bytes()
            && other.offset < self.offset + self.bytes()
    }

    /// Elements `start..start + len` of this view.
    pub fn sub(&self, start: usize, len: usize) -> View {
        debug_assert!(start + len <= self.len);
        View {
            offset: self.offset + start * self.elem.size(),
            len,
            ..*self
        }
    }
}

/// Where work is queued. The CPU runs everything in order on the calling
/// thread; CUDA has one compute and one communication stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Compute,
    Comm,
}

/// A point in a stream that another stream can wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Relu,
    GeluTanh,
    GeluErf,
    Erf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    Greater,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
}

/// Batched `c = op(a) · op(b)`. Each batch entry of `a` is a row-major
/// `[m, k]` matrix (`[k, m]` when `trans_a`), of `b` `[k, n]` (`[n, k]` when
/// `trans_b`), of `c` `[m, n]`. `batch` is the output's batch shape; the
/// stride slices give, per batch axis, how many elements to step in each
/// operand (0 where it broadcasts).
#[derive(Debug, Clone, Copy)]
pub struct MatMulDims<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub batch: &'a [usize],
    pub a_batch_strides: &'a [usize],
    pub b_batch_strides: &'a [usize],
    pub c_batch_strides: &'a [usize],
}

/// Shapes of a grouped matmul over rows packed by expert (see
/// [`Backend::grouped_matmul`]): `rows` packed rows of width `d` in, `h`
/// out, `experts` weight matrices. `transpose`: each expert's matrix is
/// stored `[h, d]` (and read, or for the weight gradient written, as its
/// transpose) instead of `[d, h]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupedMatMulDims {
    pub experts: usize,
    pub rows: usize,
    pub d: usize,
    pub h: usize,
    pub transpose: bool,
}

/// Shapes of a 2-D convolution over NCHW tensors: x `[n, c, h, w]`, w
/// `[m, c/groups, kh, kw]`, y `[n, m, oh, ow]`. A window tap `(ky, kx)` of
/// output `(oy, ox)` reads x at `(oy·s0 + ky·d0 - pads[0], ox·s1 + kx·d1 -
/// pads[1])`, zero outside the input; `pads` are `[top, left, bottom,
/// right]` (the bottom and right ones only shape `oh` and `ow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dDims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub m: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub strides: [usize; 2],
    pub pads: [usize; 4],
    pub dilations: [usize; 2],
    pub groups: usize,
}

/// Shapes of a 2-D pool: `planes` (`N·C`) planes of `[h, w]` in, `[oh, ow]`
/// out; windows as in [`Conv2dDims`], `pads` `[top, left, bottom, right]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dDims {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub pads: [usize; 4],
    pub dilations: [usize; 2],
}

/// What a random kernel draws from: (seed, step, rank, site, element).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RngKey {
    pub seed: u64,
    pub step: u64,
    pub rank: u32,
    pub site: u64,
}

/// Settings of an SGD update (PyTorch's semantics: weight decay added to
/// the gradient, momentum buffer seeded with the first gradient, optional
/// dampening and Nesterov).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdParams {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    /// True on the first step: the momentum buffer is set, not blended.
    pub first_step: bool,
}

/// Settings of an AdamW update (PyTorch's semantics and operation order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count, for bias correction.
    pub step: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error(
        "{what}: view of {len} bytes at offset {offset} is outside buffer {buffer} of {buffer_len} bytes"
    )]
    OutOfBounds {
        what: &'static str,
        buffer: u32,
        offset: usize,
        len: usize,
        buffer_len: usize,
    },
    #[error("{what}: expected {expected} elements, found {found}")]
    Length {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{what}: expected element type {expected:?}, found {found:?}")]
    ElemType {
        what: &'static str,
        expected: ElemType,
        found: ElemType,
    },
    #[error("{what}: output overlaps an input")]
    Overlap { what: &'static str },
    #[error("{what}: view at offset {offset} is not aligned to {align} bytes")]
    Misaligned {
        what: &'static str,
        offset: usize,
        align: usize,
    },
    #[error("{what}: index {index} is out of range [0, {bound})")]
    IndexOutOfRange {
        what: &'static str,
        index: i64,
        bound: usize,
    },
    #[error("cannot allocate {bytes} bytes")]
    Alloc { bytes: usize },
    #[error("{0}")]
    Invalid(String),
}

/// An operand of a [`FusedStep`]: one of the chain's inputs (read through
/// its strides) or the result of an earlier step (contiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedArg {
    Input(usize),
    Step(usize),
}

/// What a [`FusedStep`] computes, with the meaning of the backend call of
/// the same name: `Unary` and `GeluGrad` (`x`, then `dy`) read contiguous
/// operands; `Binary`, `Compare` (f32 operands, a u8 result) and `Select`
/// (`cond`, `a`, `b`) broadcast theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedOp {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Compare(CompareOp),
    Select,
    GeluGrad { tanh: bool },
}

impl FusedOp {
    /// How many operands a step of this op reads.
    pub fn arity(self) -> usize {
        match self {
            FusedOp::Unary(_) => 1,
            FusedOp::Binary(_) | FusedOp::Compare(_) | FusedOp::GeluGrad { .. } => 2,
            FusedOp::Select => 3,
        }
    }
}

/// Step `k` of a chain with its operand count right (pow is never fused),
/// or the error every backend gives.
pub(crate) fn check_fused_step(what: &str, k: usize, s: &FusedStep) -> Result<()> {
    if s.args.len() != s.op.arity() || matches!(s.op, FusedOp::Binary(BinaryOp::Pow)) {
        return Err(Error::Invalid(format!(
            "{what}: step {k} ({:?}) is malformed",
            s.op
        )));
    }
    Ok(())
}

/// Operand `j` of step `k` of a chain with `inputs` inputs (`is_bytes(i)`:
/// input `i` holds u8): an earlier step, or an input, bytes only as a
/// select's condition; else the error every backend gives.
pub(crate) fn check_fused_operand(
    what: &str,
    (k, s): (usize, &FusedStep),
    j: usize,
    inputs: usize,
    is_bytes: impl Fn(usize) -> bool,
) -> Result<()> {
    let ok = match s.args[j] {
        FusedArg::Step(p) => p < k,
        FusedArg::Input(i) => i < inputs && (!is_bytes(i) || (s.op == FusedOp::Select && j == 0)),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{what}: step {k} operand {j} is invalid"
        )))
    }
}

/// An input of a fused chain: a view and its element strides per axis of
/// the chain's shape (0 where it broadcasts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FusedInput {
    pub view: View,
    pub strides: Vec<usize>,
}

/// One step of a fused chain. `out` is where the unfused call would write
/// its result; a fused kernel writes it only when `store` is set (the
/// last step's result is always stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FusedStep {
    pub op: FusedOp,
    pub args: Vec<FusedArg>,
    pub out: View,
    pub store: bool,
}

/// A chain of elementwise calls over one contiguous output shape, run as
/// one pass ([`Backend::fused_elementwise`]). Every stored output is
/// disjoint from every input and from the other stored outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FusedElementwise {
    pub shape: Vec<usize>,
    pub inputs: Vec<FusedInput>,
    pub steps: Vec<FusedStep>,
}

impl FusedElementwise {
    /// The strided view of an operand: an input's own strides, or a step's
    /// output read contiguously.
    pub fn operand(&self, arg: FusedArg) -> (View, std::borrow::Cow<'_, [usize]>) {
        match arg {
            FusedArg::Input(i) => {
                let inp = &self.inputs[i];
                (inp.view, std::borrow::Cow::Borrowed(&inp.strides[..]))
            }
            FusedArg::Step(j) => (
                self.steps[j].out,
                std::borrow::Cow::Owned(contiguous_strides(&self.shape)),
            ),
        }
    }

    /// Runs the chain one call per step, every step's result written to
    /// its `out`: what a backend without a fused kernel does, and the
    /// reference the fused kernels are tested against.
    pub fn run_unfused<B: Backend + ?Sized>(&self, backend: &mut B) -> Result<()> {
        let arg = |s: &FusedStep, i: usize| -> Result<FusedArg> {
            s.args
                .get(i)
                .copied()
                .ok_or_else(|| Error::Invalid(format!("fused {:?}: operand {i} missing", s.op)))
        };
        for s in &self.steps {
            match s.op {
                FusedOp::Unary(op) => {
                    let (x, _) = self.operand(arg(s, 0)?);
                    backend.unary(op, x, s.out)?;
                }
                FusedOp::GeluGrad { tanh } => {
                    let (x, _) = self.operand(arg(s, 0)?);
                    let (dy, _) = self.operand(arg(s, 1)?);
                    backend.gelu_grad(tanh, x, dy, s.out)?;
                }
                FusedOp::Binary(op) => {
                    let (a, sa) = self.operand(arg(s, 0)?);
                    let (b, sb) = self.operand(arg(s, 1)?);
                    backend.binary(op, a, &sa, b, &sb, s.out, &self.shape)?;
                }
                FusedOp::Compare(op) => {
                    let (a, sa) = self.operand(arg(s, 0)?);
                    let (b, sb) = self.operand(arg(s, 1)?);
                    backend.compare(op, a, &sa, b, &sb, s.out, &self.shape)?;
                }
                FusedOp::Select => {
                    let (c, sc) = self.operand(arg(s, 0)?);
                    let (a, sa) = self.operand(arg(s, 1)?);
                    let (b, sb) = self.operand(arg(s, 2)?);
                    backend.select(c, &sc, a, &sa, b, &sb, s.out, &self.shape)?;
                }
            }
        }
        Ok(())
    }
}

/// Row-major element strides of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A compute device. Kernels read input views and write output views that
/// must not overlap them; shapes are row-major and contiguous unless strides
/// are given. Shape and stride slices are the caller's, so a call allocates
/// nothing.
pub trait Backend {
    /// A short description, e.g. "cpu (2 threads)".
    fn name(&self) -> String;

    /// Runs `f` in the backend's execution context. The CPU backend runs it
    /// on a thread of its pool, so kernels split work among the pool's
    /// threads without handing jobs in from outside (which costs time and,
    /// in rayon, an allocation every 63 hand-ins). Training loops run in it.
    fn in_context<R: Send>(f: impl FnOnce() -> R + Send) -> R
    where
        Self: Sized,
    {
        f()
    }

    // ----- memory -----
    fn alloc(&mut self, bytes: usize) -> Result<BufferId>;
    fn buffer_bytes(&self, buffer: BufferId) -> usize;
    /// Host bytes into a view (`data.len() == dst.bytes()`).
    fn write(&mut self, dst: View, data: &[u8]) -> Result<()>;
    /// A view's bytes to the host (`out.len() == src.bytes()`).
    fn read(&self, src: View, out: &mut [u8]) -> Result<()>;
    fn copy(&mut self, src: View, dst: View) -> Result<()>;
    /// Every element of `dst` set to `value` (converted to its type).
    fn fill(&mut self, dst: View, value: f64) -> Result<()>;
    /// The device address of `v`'s first element, for libraries that work
    /// on device memory themselves (NCCL reduces gradient buckets where
    /// they lie); `None` on a host backend, and for a view outside its
    /// buffer.
    fn device_address(&self, v: View) -> Option<u64> {
        let _ = v;
        None
    }

    // ----- ordering -----
    fn record_event(&mut self, stream: Stream) -> Event;
    fn wait_event(&mut self, stream: Stream, event: Event);
    fn synchronize(&mut self) -> Result<()>;

    // ----- elementwise -----
    fn unary(&mut self, op: UnaryOp, x: View, y: View) -> Result<()>;
    /// `out[i] = a[i] op b[i]` over `shape`; `a_strides`/`b_strides` are
    /// element strides per axis of `shape` (0 where the operand broadcasts).
    #[allow(clippy::too_many_arguments)]
    fn binary(
        &mut self,
        op: BinaryOp,
        a: View,
        a_strides: &[usize],
        b: View,
        b_strides: &[usize],
        out: View,
        shape: &[usize],
    ) -> Result<()>;
    /// As [`Backend::binary`], writing 0/1 bytes.
    #[allow(clippy::too_many_arguments)]
    fn compare(
        &mut self,
        op: CompareOp,
        a: View,
        a_strides: &[usize],
        b: View,
        b_strides: &[usize],
        out: View,
        shape: &[usize],
    ) -> Result<()>;
    /// `out = cond ? a : b` with broadcasting strides for all three inputs.
    #[allow(clippy::too_many_arguments)]
    fn select(
        &mut self,
        cond: View,
        cond_strides: &[usize],
        a: View,
        a_strides: &[usize],
        b: View,
        b_strides: &[usize],
        out: View,
        shape: &[usize],
    ) -> Result<()>;
    /// Converts elements between types (to ints truncates, to bool is != 0).
    fn cast(&mut self, x: View, y: View) -> Result<()>;
    /// `dx = dy * gelu'(x)`.
    fn gelu_grad(&mut self, tanh: bool, x: View, dy: View, dx: View) -> Result<()>;
    /// `y = x * mask / (1 - p)`, mask drawn from `key`.
    fn dropout(&mut self, x: View, y: View, p: f32, key: RngKey) -> Result<()>;
    /// `x` viewed as `[batch, t, t]`; entries with column > row become `fill`.
    fn causal_mask(&mut self, x: View, y: View, batch: usize, t: usize, fill: f32) -> Result<()>;

    // ----- layout -----
    /// Copies `shape` elements: the element at multi-index `i` is read at
    /// `src + Σ i·src_strides` and written at `dst + Σ i·dst_strides`
    /// (transpose, broadcast, slice, concat and pad are all this).
    fn copy_strided(
        &mut self,
        src: View,
        src_strides: &[usize],
        dst: View,
        dst_strides: &[usize],
        shape: &[usize],
    ) -> Result<()>;

    // ----- reductions -----
    /// Reduces the axes of `shape` marked in `axes`; `y` holds the kept axes
    /// in order, contiguous.
    fn reduce(
        &mut self,
        op: ReduceOp,
        x: View,
        shape: &[usize],
        axes: &[bool],
        y: View,
    ) -> Result<()>;

    // ----- matmul -----
    fn matmul(&mut self, a: View, b: View, c: View, dims: &MatMulDims<'_>) -> Result<()>;

    // ----- indexing -----
    /// `data` as `[outer, axis, inner]`, `indices` flat (i64 or i32):
    /// `out[o, j, i] = data[o, indices[j], i]`.
    fn gather(
        &mut self,
        data: View,
        indices: View,
        out: View,
        outer: usize,
        axis: usize,
        inner: usize,
    ) -> Result<()>;
    /// `out` as `[outer, size, inner]` set to zero, then
    /// `out[o, indices[j], i] += updates[o, j, i]` (repeats accumulate).
    fn scatter_add(
        &mut self,
        updates: View,
        indices: View,
        out: View,
        outer: usize,
        size: usize,
        inner: usize,
    ) -> Result<()>;
    /// `out[j, c] = (indices[j] == c)` as f32.
    fn one_hot(&mut self, indices: View, out: View, depth: usize) -> Result<()>;

    // ----- normalisation and losses -----
    /// Softmax (or log-softmax) over the middle axis of `[outer, n, inner]`.
    fn softmax(
        &mut self,
        x: View,
        y: View,
        outer: usize,
        n: usize,
        inner: usize,
        log: bool,
    ) -> Result<()>;
    /// LayerNorm over the last axis of `[rows, d]` (biased variance).
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &mut self,
        x: View,
        gamma: View,
        beta: View,
        y: View,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()>;
    /// The LayerNorm backward, statistics recomputed from `x`.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_grad(
        &mut self,
        x: View,
        gamma: View,
        dy: View,
        dx: View,
        dgamma: View,
        dbeta: View,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()>;
    /// Mean cross-entropy of `logits [rows, classes]` against `labels [rows]`.
    fn softmax_cross_entropy(
        &mut self,
        logits: View,
        labels: View,
        loss: View,
        rows: usize,
        classes: usize,
    ) -> Result<()>;
    /// `dlogits = (softmax(logits) - onehot(labels)) * dloss / rows`.
    #[allow(clippy::too_many_arguments)]
    fn softmax_cross_entropy_grad(
        &mut self,
        logits: View,
        labels: View,
        dloss: View,
        dlogits: View,
        rows: usize,
        classes: usize,
    ) -> Result<()>;
    /// Mean of squared differences into the one-element `loss`.
    fn mse(&mut self, pred: View, target: View, loss: View) -> Result<()>;

    // ----- optimizers (over flat buffers) -----
    fn sgd(&mut self, param: View, grad: View, momentum: View, p: &SgdParams) -> Result<()>;
    fn adamw(&mut self, param: View, grad: View, m: View, v: View, p: &AdamWParams) -> Result<()>;

    // ----- convolution and pooling (NCHW, f32) -----
    /// `y = conv(x, w)` (see [`Conv2dDims`]).
    fn conv2d(&mut self, x: View, w: View, y: View, dims: &Conv2dDims) -> Result<()>;
    /// `dx`: the transpose of [`Backend::conv2d`] in x, applied to `dy`.
    fn conv2d_grad_input(&mut self, w: View, dy: View, dx: View, dims: &Conv2dDims) -> Result<()>;
    /// `dw`: the transpose of [`Backend::conv2d`] in w, applied to `dy`.
    fn conv2d_grad_weight(&mut self, x: View, dy: View, dw: View, dims: &Conv2dDims) -> Result<()>;
    /// The largest tap of each window (the first in row-major tap order on
    /// ties; padding never wins; a window without taps in the input gives
    /// -inf).
    fn max_pool2d(&mut self, x: View, y: View, dims: &Pool2dDims) -> Result<()>;
    /// `dx`: zeros with each `dy` added at its window's argmax in `x`.
    fn max_pool2d_grad(&mut self, x: View, dy: View, dx: View, dims: &Pool2dDims) -> Result<()>;
    /// `y`: `v` (shaped like `x`) read at each window's argmax in `x`.
    fn max_pool2d_select(&mut self, x: View, v: View, y: View, dims: &Pool2dDims) -> Result<()>;
    /// The mean of each window over its taps inside the input, or with
    /// `count_include_pad` over its taps inside the padded input.
    fn avg_pool2d(
        &mut self,
        x: View,
        y: View,
        dims: &Pool2dDims,
        count_include_pad: bool,
    ) -> Result<()>;
    /// The transpose of [`Backend::avg_pool2d`].
    fn avg_pool2d_grad(
        &mut self,
        dy: View,
        dx: View,
        dims: &Pool2dDims,
        count_include_pad: bool,
    ) -> Result<()>;

    // ----- mixture of experts -----
    // Packed rows: the `T·k` (token, slot) pairs of a routing, grouped by
    // expert; expert `e` owns rows `offsets[e]..offsets[e + 1]` of an
    // `offsets [E + 1]` (i64 or i32) that kernels read from device memory
    // at run time (checked: `offsets[0] = 0`, non-decreasing,
    // `offsets[E] ≤ rows`).
    /// `x` (f32) as `[rows, n]`: `ids[r, j]` (i64, `[rows, k]`) is the index
    /// of the `j`-th largest entry of row `r`, in descending order of value,
    /// ties to the lower index; NaN ranks below every number. `k ≤ n`.
    fn top_k(&mut self, x: View, ids: View, rows: usize, n: usize, k: usize) -> Result<()>;
    /// Routes the slots of `ids` (i64 or i32 `[T, k]`, an expert in `[0, experts)`
    /// per slot; slot `s = t·k + j`) into packed rows: kept slots grouped by
    /// expert ascending, slot order within an expert, then the dropped slots
    /// in slot order. An expert keeps its first `capacity` slots (`None`:
    /// all). Writes `row_token` (i64 `[T·k]`: the token of each row),
    /// `slot_row` (i64 `[T·k]`: the row of each slot), `slot_keep` (f32
    /// `[T·k]`: 1 kept, 0 dropped) and `offsets` (i64 `[experts + 1]`,
    /// `offsets[experts]` = kept rows). An id out of range is an error.
    #[allow(clippy::too_many_arguments)]
    fn moe_route(
        &mut self,
        ids: View,
        row_token: View,
        slot_row: View,
        slot_keep: View,
        offsets: View,
        k: usize,
        experts: usize,
        capacity: Option<usize>,
    ) -> Result<()>;
    /// `y_r = x_r · w_e` for the rows `r` of group `e` (`x [rows, d]`,
    /// `w [experts, d, h]` or `[experts, h, d]` read transposed, `y [rows,
    /// h]`, f32); rows from `offsets[experts]` on are zero. One GEMM per
    /// non-empty group.
    fn grouped_matmul(
        &mut self,
        x: View,
        w: View,
        offsets: View,
        y: View,
        dims: &GroupedMatMulDims,
    ) -> Result<()>;
    /// `dw_e = Σ_{r in group e} x_rᵀ · dy_r` (`x [rows, d]`, `dy [rows, h]`,
    /// `dw [experts, d, h]`, or each `dw_e` transposed `[experts, h, d]`);
    /// experts without rows get zeros. Rows from `offsets[experts]` on are
    /// ignored.
    fn grouped_matmul_grad_w(
        &mut self,
        x: View,
        dy: View,
        offsets: View,
        dw: View,
        dims: &GroupedMatMulDims,
    ) -> Result<()>;

    // ----- fused (rewrites of the lowered program) -----

    /// Every step of `f` in one pass over its shape: the results equal
    /// [`FusedElementwise::run_unfused`]'s, but only the stored steps'
    /// outputs are written. The default runs the steps one call each.
    fn fused_elementwise(&mut self, f: &FusedElementwise) -> Result<()> {
        f.run_unfused(self)
    }

    /// [`Backend::grouped_matmul`] into `y`, then `act_out = act(y)`
    /// ([`Backend::unary`]); a backend may apply `act` to each group's rows
    /// while they are in cache. The default makes the two calls.
    #[allow(clippy::too_many_arguments)]
    fn grouped_matmul_act(
        &mut self,
        x: View,
        w: View,
        offsets: View,
        y: View,
        dims: &GroupedMatMulDims,
        act: UnaryOp,
        act_out: View,
    ) -> Result<()> {
        self.grouped_matmul(x, w, offsets, y, dims)?;
        self.unary(act, y, act_out)
    }

    /// [`Backend::grouped_matmul`] into `y`, then GELU's backward with `y`
    /// as the cotangent, `dx = y · gelu'(pre)` ([`Backend::gelu_grad`]); a
    /// backend may apply it to each group's rows while they are in cache,
    /// and then need not write `y` at all (it is scratch: the CPU's kernel
    /// leaves it unwritten). The default makes the two calls.
    #[allow(clippy::too_many_arguments)]
    fn grouped_matmul_gelu_grad(
        &mut self,
        x: View,
        w: View,
        offsets: View,
        y: View,
        dims: &GroupedMatMulDims,
        tanh: bool,
        pre: View,
        dx: View,
    ) -> Result<()> {
        self.grouped_matmul(x, w, offsets, y, dims)?;
        self.gelu_grad(tanh, pre, y, dx)
    }
}

// Argument checks every backend makes before it launches a kernel.

/// Every output disjoint from every input and from the other outputs.
pub(crate) fn disjoint(what: &'static str, outputs: &[View], inputs: &[View]) -> Result<()> {
    for (i, o) in outputs.iter().enumerate() {
        if inputs
            .iter()
            .chain(&outputs[i + 1..])
            .any(|v| v.overlaps(o))
        {
            return Err(Error::Overlap { what });
        }
    }
    Ok(())
}

/// `found` elements where `expected` were due, named by `what`.
pub(crate) fn same_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
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
