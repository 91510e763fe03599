//! The errors of the coordinator, and the one place where they become gRPC
//! statuses.
//!
//! Every fallible function of this crate returns [`Result`]; the gRPC
//! adapters (`crate::grpc`) turn an [`Error`] into a [`tonic::Status`] with
//! `?` through the single `From<Error> for tonic::Status` below, which picks
//! the code. Messages are lowercase and name what is wrong: the spec field,
//! the graph node or value (quoted from `adjoint-graph`'s errors), the
//! dataset tensor, the numbers of a job that does not fit.

use adjoint_proto::v1::JobState;

/// What can go wrong in the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of a `JobSpec` is missing or out of range.
    #[error("job spec: {field}: {message}")]
    InvalidSpec {
        field: &'static str,
        message: String,
    },
    /// The job's graph does not decode, validate, differentiate or plan; the
    /// message names the node or value.
    #[error("graph: {0}")]
    Graph(#[from] adjoint_graph::Error),
    /// A dataset blob is not a safetensors file matching the graph inputs.
    #[error("{field} '{blob}': {message}")]
    Dataset {
        field: &'static str,
        blob: String,
        message: String,
    },
    /// A blob id, job id or artifact name that could escape the store or is
    /// not well formed.
    #[error("invalid {what} '{name}': {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    /// A worker broke the `WorkerControl` protocol (e.g. did not register
    /// first).
    #[error("worker protocol: {0}")]
    Protocol(String),
    #[error("job '{0}' not found")]
    JobNotFound(String),
    #[error("blob '{0}' not found")]
    BlobNotFound(String),
    /// A job spec names a blob its submitter never uploaded (the same
    /// answer whether or not someone else did).
    #[error("{field}: blob '{blob}' not found among your uploads")]
    NotYourBlob { field: &'static str, blob: String },
    #[error("artifact '{name}' of job '{job_id}' not found")]
    ArtifactNotFound { job_id: String, name: String },
    /// The operation needs a job in another state (cancel a finished job).
    #[error("job '{id}' is already {}", state_name(*.state))]
    JobEnded { id: String, state: JobState },
    /// The job needs more memory per worker than any worker that could run
    /// it has.
    #[error(
        "job needs {needed} bytes per worker ({breakdown}), but the largest {device} worker \
         has {largest} bytes"
    )]
    TooBig {
        needed: u64,
        largest: u64,
        device: String,
        breakdown: String,
    },
    /// The client's request stream failed; its status is passed on.
    #[error("request stream: {0}")]
    Stream(tonic::Status),
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
    #[error("job database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A record in the job database does not decode, or a background task
    /// died.
    #[error("internal: {0}")]
    Internal(String),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `JOB_STATE_RUNNING` → `RUNNING`.
pub fn state_name(state: JobState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("JOB_STATE_").unwrap_or(name)
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        use tonic::Code;
        let code = match &error {
            Error::InvalidSpec { .. }
            | Error::Graph(_)
            | Error::Dataset { .. }
            | Error::InvalidName { .. }
            | Error::Protocol(_) => Code::InvalidArgument,
            Error::JobNotFound(_)
            | Error::BlobNotFound(_)
            | Error::NotYourBlob { .. }
            | Error::ArtifactNotFound { .. } => Code::NotFound,
            Error::JobEnded { .. } => Code::FailedPrecondition,
            Error::TooBig { .. } => Code::ResourceExhausted,
            Error::Stream(status) => return status.clone(),
            Error::Store(_)
            | Error::Db(_)
            | Error::Io(_)
            | Error::Transport(_)
            | Error::Internal(_) => {
                tracing::error!(error = %error, "internal error");
                Code::Internal
            }
        };
        tonic::Status::new(code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_kind_of_error() {
        let status = tonic::Status::from(Error::JobEnded {
            id: "job-000001".into(),
            state: JobState::Succeeded,
        });
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "job 'job-000001' is already SUCCEEDED");
        let status = tonic::Status::from(Error::TooBig {
            needed: 10,
            largest: 5,
            device: "cpu".into(),
            breakdown: "arena 10".into(),
        });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("10 bytes"),
            "{}",
            status.message()
        );
        let status = tonic::Status::from(Error::JobNotFound("job-1".into()));
        assert_eq!(status.code(), tonic::Code::NotFound);
    }
}
