//! Errors of the worker: unsupported graphs, backend failures, bad data.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Boxed: graph errors carry node names and messages, and sit on the
    /// cold path.
    #[error(transparent)]
    Graph(Box<adjoint_graph::Error>),
    #[error(transparent)]
    Backend(#[from] adjoint_kernels::Error),
    #[error("node '{node}' ({op}): {message}")]
    Unsupported {
        node: String,
        op: String,
        message: String,
    },
    #[error("{0}")]
    Data(String),
    /// A collective failed: a peer was lost, went silent or disagreed.
    /// The job's other ranks, not its data, are at fault, so the job may
    /// be restarted.
    #[error("{0}")]
    Collective(String),
    #[error("{0}")]
    Plan(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<adjoint_graph::Error> for Error {
    fn from(e: adjoint_graph::Error) -> Error {
        Error::Graph(Box::new(e))
    }
}
