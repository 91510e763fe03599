//! Shapes: static dimensions plus one optional symbolic batch dimension.
//!
//! A graph may leave its batch size open (`Dim::Batch`); shape inference
//! treats it as an unknown positive size, and [`crate::Graph::bind_batch`]
//! replaces it with a number when a plan is made. Transforms that need
//! numbers (autodiff, the interpreter) require a bound graph.

use std::fmt;

/// One dimension of a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dim {
    Fixed(usize),
    /// The symbolic batch dimension, bound when a plan is made.
    Batch,
}

impl Dim {
    pub fn fixed(self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(n),
            Dim::Batch => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Batch => f.write_str("batch"),
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n)
    }
}

/// A tensor shape, outermost dimension first. The empty shape is a scalar.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }

    /// A shape of fixed dimensions.
    pub fn of(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Fixed(d)).collect())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    pub fn is_static(&self) -> bool {
        self.0.iter().all(|d| matches!(d, Dim::Fixed(_)))
    }

    /// The dimensions as numbers, if the shape holds no symbol.
    pub fn to_static(&self) -> Option<Vec<usize>> {
        self.0.iter().map(|d| d.fixed()).collect()
    }

    /// Number of elements, if static.
    pub fn numel(&self) -> Option<usize> {
        self.to_static().map(|d| d.iter().product())
    }

    /// Number of elements with the batch dimension counted as `batch`.
    pub fn numel_with_batch(&self, batch: usize) -> usize {
        self.0
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Batch => batch,
            })
            .product()
    }

    /// How many times the batch symbol occurs.
    pub fn batch_count(&self) -> usize {
        self.0.iter().filter(|d| matches!(d, Dim::Batch)).count()
    }

    /// Product of the fixed dimensions (the batch symbol counts as 1).
    pub fn fixed_product(&self) -> usize {
        self.0.iter().filter_map(|d| d.fixed()).product()
    }

    /// This shape with the batch symbol replaced by `batch`.
    pub fn bind_batch(&self, batch: usize) -> Shape {
        Shape(
            self.0
                .iter()
                .map(|d| match d {
                    Dim::Batch => Dim::Fixed(batch),
                    fixed => *fixed,
                })
                .collect(),
        )
    }

    /// Resolves a possibly negative axis against this rank.
    pub fn axis(&self, axis: i64) -> Option<usize> {
        normalize_axis(axis, self.rank())
    }
}

/// Resolves a possibly negative axis against `rank`.
pub fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let rank = rank as i64;
    let a = if axis < 0 { axis + rank } else { axis };
    (0..rank).contains(&a).then_some(a as usize)
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// The shape two operands broadcast to (numpy rules, aligned at the right).
/// The batch symbol broadcasts with itself and with 1.
pub fn broadcast_shapes(a: &Shape, b: &Shape) -> Option<Shape> {
    let rank = a.rank().max(b.rank());
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = dim_from_right(a, rank - 1 - i);
        let db = dim_from_right(b, rank - 1 - i);
        out.push(broadcast_dim(da, db)?);
    }
    Some(Shape(out))
}

fn dim_from_right(s: &Shape, from_right: usize) -> Dim {
    if from_right < s.rank() {
        s.0[s.rank() - 1 - from_right]
    } else {
        Dim::Fixed(1)
    }
}

fn broadcast_dim(a: Dim, b: Dim) -> Option<Dim> {
    match (a, b) {
        (x, y) if x == y => Some(x),
        (Dim::Fixed(1), y) => Some(y),
        (x, Dim::Fixed(1)) => Some(x),
        _ => None,
    }
}

/// Whether `from` broadcasts to exactly `to`.
pub fn broadcasts_to(from: &Shape, to: &Shape) -> bool {
    from.rank() <= to.rank() && broadcast_shapes(from, to).as_ref() == Some(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy_with_a_batch_symbol() {
        let a = Shape(vec![Dim::Batch, Dim::Fixed(1), Dim::Fixed(4)]);
        let b = Shape::of(&[3, 1]);
        assert_eq!(
            broadcast_shapes(&a, &b),
            Some(Shape(vec![Dim::Batch, Dim::Fixed(3), Dim::Fixed(4)]))
        );
        assert_eq!(broadcast_shapes(&Shape::of(&[2]), &Shape::of(&[3])), None);
        assert_eq!(
            broadcast_shapes(&Shape(vec![Dim::Batch]), &Shape::of(&[5])),
            None
        );
        assert!(broadcasts_to(&Shape::of(&[4]), &a));
        assert!(!broadcasts_to(&a, &Shape::of(&[4])));
    }

    #[test]
    fn negative_axes_resolve_against_the_rank() {
        assert_eq!(normalize_axis(-1, 3), Some(2));
        assert_eq!(normalize_axis(3, 3), None);
        assert_eq!(normalize_axis(-4, 3), None);
    }
}
