//! The Rust client of the adjoint coordinator: submit, watch, cancel and
//! pull jobs, upload blobs. The `adjoint` CLI is built on it; other Rust
//! services can use it as is.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use adjoint_client::Client;
//! let mut client = Client::connect("http://127.0.0.1:7070").await?;
//! for job in client.list_jobs(&[]).await? {
//!     println!("{} {:?}", job.id, job.state());
//! }
//! # Ok(())
//! # }
//! ```

use adjoint_proto::dial::{Authorize, Credentials, error_chain};
use adjoint_proto::v1::coordinator_client::CoordinatorClient;
use adjoint_proto::v1::{
    BlobChunk, CancelJobRequest, DownloadArtifactRequest, Estimate, EstimateJobRequest,
    GetJobRequest, Job, JobEvent, JobSpec, JobState, ListJobsRequest, ListWorkersRequest,
    SubmitJobRequest, WatchJobRequest, WorkerInfo,
};
use adjoint_telemetry::propagate::TraceInterceptor;
use anyhow::{Context, Result};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Bytes per upload chunk.
const CHUNK: usize = 1 << 20;

/// The largest message the client accepts (big payloads go by stream).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A connection to a coordinator.
#[derive(Debug, Clone)]
pub struct Client {
    /// Every call carries the current span's W3C trace context and the
    /// bearer token, if any.
    inner: CoordinatorClient<InterceptedService<Channel, Authorize<TraceInterceptor>>>,
}

/// `addr` as a URI: `host:port` gets `http://` in front (`https://` when
/// `tls`).
pub fn endpoint(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

impl Client {
    /// Connects to the coordinator at `addr` (`host:port` or a URI) with
    /// no token: for a coordinator without authentication.
    pub async fn connect(addr: &str) -> Result<Client> {
        Client::connect_with(addr, &Credentials::none()).await
    }

    /// Connects to the coordinator at `addr` presenting `credentials`: a
    /// bearer token, and the CA that signed the server's certificate (then
    /// `host:port` means `https://host:port`).
    ///
    /// ```no_run
    /// # async fn run() -> anyhow::Result<()> {
    /// use adjoint_client::{Client, Credentials};
    /// let credentials = Credentials::none()
    ///     .with_token(std::env::var("ADJOINT_TOKEN")?)
    ///     .with_ca_pem(std::fs::read("ca.pem")?);
    /// let mut client = Client::connect_with("adjoint.internal:7070", &credentials).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_with(addr: &str, credentials: &Credentials) -> Result<Client> {
        let uri = endpoint(addr, credentials.trusts_a_ca());
        let channel = credentials
            .endpoint(&uri)
            .map_err(anyhow::Error::msg)?
            .connect()
            .await
            .map_err(|e| {
                let why = error_chain(&e);
                let hint = if why.contains("certificate") {
                    "; is --ca-file (ADJOINT_CA_FILE) the CA that signed the coordinator's \
                     certificate, and does that certificate name this host (--tls-domain)?"
                } else {
                    ""
                };
                anyhow::anyhow!("cannot reach the coordinator at {uri}: {why}{hint}")
            })?;
        let interceptor = credentials
            .interceptor(TraceInterceptor)
            .map_err(anyhow::Error::msg)?;
        let inner = CoordinatorClient::with_interceptor(channel, interceptor)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Client { inner })
    }

    /// Uploads bytes as a blob; returns its id.
    pub async fn upload_blob(&mut self, name: &str, bytes: Vec<u8>) -> Result<String> {
        let name = name.to_owned();
        let chunks: Vec<BlobChunk> = if bytes.is_empty() {
            vec![BlobChunk {
                name,
                data: Vec::new(),
            }]
        } else {
            bytes
                .chunks(CHUNK)
                .enumerate()
                .map(|(i, c)| BlobChunk {
                    name: if i == 0 { name.clone() } else { String::new() },
                    data: c.to_vec(),
                })
                .collect()
        };
        let response = self
            .inner
            .upload_blob(tokio_stream::iter(chunks))
            .await
            .context("uploading a blob")?;
        Ok(response.into_inner().blob_id)
    }

    pub async fn submit(&mut self, spec: JobSpec) -> Result<Job> {
        Ok(self
            .inner
            .submit_job(SubmitJobRequest { spec: Some(spec) })
            .await?
            .into_inner())
    }

    pub async fn estimate(&mut self, spec: JobSpec) -> Result<Estimate> {
        Ok(self
            .inner
            .estimate_job(EstimateJobRequest { spec: Some(spec) })
            .await?
            .into_inner())
    }

    pub async fn get_job(&mut self, id: &str) -> Result<Job> {
        Ok(self
            .inner
            .get_job(GetJobRequest { id: id.to_owned() })
            .await?
            .into_inner())
    }

    /// Jobs in any of `states` (all jobs when empty).
    pub async fn list_jobs(&mut self, states: &[JobState]) -> Result<Vec<Job>> {
        let request = ListJobsRequest {
            states: states.iter().map(|s| *s as i32).collect(),
        };
        Ok(self.inner.list_jobs(request).await?.into_inner().jobs)
    }

    pub async fn cancel(&mut self, id: &str) -> Result<Job> {
        Ok(self
            .inner
            .cancel_job(CancelJobRequest { id: id.to_owned() })
            .await?
            .into_inner())
    }

    pub async fn workers(&mut self) -> Result<Vec<WorkerInfo>> {
        Ok(self
            .inner
            .list_workers(ListWorkersRequest {})
            .await?
            .into_inner()
            .workers)
    }

    /// The job's events after `after_seq`, as they happen, until it ends.
    pub async fn watch(&mut self, id: &str, after_seq: u64) -> Result<tonic::Streaming<JobEvent>> {
        let request = WatchJobRequest {
            id: id.to_owned(),
            after_seq,
            history_only: false,
        };
        Ok(self.inner.watch_job(request).await?.into_inner())
    }

    /// The job's events after `after_seq` recorded so far; the stream ends
    /// there even if the job is still running.
    pub async fn history(
        &mut self,
        id: &str,
        after_seq: u64,
    ) -> Result<tonic::Streaming<JobEvent>> {
        let request = WatchJobRequest {
            id: id.to_owned(),
            after_seq,
            history_only: true,
        };
        Ok(self.inner.watch_job(request).await?.into_inner())
    }

    /// An artifact of a job (e.g. `weights.safetensors`).
    pub async fn download(&mut self, job_id: &str, name: &str) -> Result<Vec<u8>> {
        let request = DownloadArtifactRequest {
            job_id: job_id.to_owned(),
            name: name.to_owned(),
        };
        let mut stream = self.inner.download_artifact(request).await?.into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?.data);
        }
        Ok(out)
    }
}
