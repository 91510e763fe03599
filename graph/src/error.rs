//! Errors of the graph crate. Every message names what is wrong: the node
//! (with its op and provenance), the value, what was expected and found.

use std::fmt;

/// Where in a graph an error sits: a node, with its op and provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    pub name: String,
    pub op: String,
    pub provenance: String,
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node '{}' ({})", self.name, self.op)?;
        if !self.provenance.is_empty() {
            write!(f, " from '{}'", self.provenance)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An op's shape, dtype, arity or attribute rule rejected a node.
    #[error("{node}: {message}")]
    InvalidNode { node: NodeRef, message: String },
    #[error("{node}: unknown op '{op}'")]
    UnknownOp { node: NodeRef, op: String },
    #[error("{node}: bad attribute: {message}")]
    BadAttribute { node: NodeRef, message: String },
    #[error("{node}: input '{value}' is not defined before this node")]
    DanglingValue { node: NodeRef, value: String },
    #[error("cycle: {node} reads '{value}', which it or a later node produces")]
    Cycle { node: NodeRef, value: String },
    #[error("value '{value}' is defined twice ({first} and {second})")]
    DuplicateValue {
        value: String,
        first: String,
        second: String,
    },
    #[error("value '{value}': {message}")]
    InvalidValue { value: String, message: String },
    #[error("value '{value}': declared {declared}, but {node} produces {inferred}")]
    DeclaredTypeMismatch {
        value: String,
        node: NodeRef,
        declared: String,
        inferred: String,
    },
    #[error("decode: {0}")]
    Decode(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("interpreter: {0}")]
    Eval(String),
    /// A checkpoint policy string that does not parse.
    #[error("checkpoint policy '{input}': {message}")]
    BadPolicy { input: String, message: String },
    /// No checkpoint plan's planned peak fits the memory budget; `minimum`
    /// is the smallest that does.
    #[error(
        "memory budget {budget} B ({}) is too small: the smallest feasible planned peak is {minimum} B ({})",
        crate::checkpoint::format_bytes(*.budget),
        crate::checkpoint::format_bytes(*.minimum)
    )]
    BudgetTooSmall { budget: usize, minimum: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
