//! Errors of the worker: unsupported graphs, backend failures, bad data.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Graph(#[from] adjoint_graph::Error),
    #[error("backend: {0}")]
    Backend(#[from] adjoint_kernels::Error),
    #[error("node '{node}' ({op}): {message}")]
    Unsupported {
        node: String,
        op: String,
        message: String,
    },
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Plan(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
