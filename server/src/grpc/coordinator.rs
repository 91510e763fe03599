//! `adjoint.v1.Coordinator`: each method decodes its request, takes the
//! caller the auth interceptor attached, and calls the coordinator; a job
//! the caller may not see is answered as one that does not exist.

use adjoint_proto::v1::coordinator_server;
use adjoint_proto::v1::{
    BlobChunk, CancelJobRequest, DownloadArtifactRequest, Estimate, EstimateJobRequest,
    GetJobRequest, Job, JobEvent, JobState, ListJobsRequest, ListJobsResponse, ListWorkersRequest,
    ListWorkersResponse, SubmitJobRequest, UploadBlobResponse, WatchJobRequest,
};
use tonic::{Request, Response, Status, Streaming};

use super::{ResponseStream, to_status_stream};
use crate::auth::caller_of;
use crate::{Coordinator, Error};

/// The user-facing service.
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    core: Coordinator,
}

impl CoordinatorService {
    pub fn new(core: Coordinator) -> Self {
        CoordinatorService { core }
    }
}

fn spec_of(spec: Option<adjoint_proto::v1::JobSpec>) -> Result<adjoint_proto::v1::JobSpec, Error> {
    spec.ok_or_else(|| Error::InvalidSpec {
        field: "spec",
        message: "is required".into(),
    })
}

#[tonic::async_trait]
impl coordinator_server::Coordinator for CoordinatorService {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let caller = caller_of(&request)?;
        let spec = spec_of(request.into_inner().spec)?;
        Ok(Response::new(self.core.submit_as(spec, &caller).await?))
    }

    async fn estimate_job(
        &self,
        request: Request<EstimateJobRequest>,
    ) -> Result<Response<Estimate>, Status> {
        let caller = caller_of(&request)?;
        let spec = spec_of(request.into_inner().spec)?;
        Ok(Response::new(self.core.estimate_as(spec, &caller).await?))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        let caller = caller_of(&request)?;
        let id = request.into_inner().id;
        Ok(Response::new(self.core.job_for(&caller, &id).await?))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let caller = caller_of(&request)?;
        let states = request
            .into_inner()
            .states
            .into_iter()
            .map(|s| JobState::try_from(s).unwrap_or_default())
            .collect();
        let jobs = self.core.list_as(states, &caller).await?;
        Ok(Response::new(ListJobsResponse { jobs }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let caller = caller_of(&request)?;
        let id = request.into_inner().id;
        self.core.job_for(&caller, &id).await?;
        Ok(Response::new(self.core.cancel(&id).await?))
    }

    type WatchJobStream = ResponseStream<JobEvent>;

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = caller_of(&request)?;
        let WatchJobRequest {
            id,
            after_seq,
            history_only,
        } = request.into_inner();
        self.core.job_for(&caller, &id).await?;
        let events = self.core.watch(&id, after_seq, history_only).await?;
        Ok(Response::new(to_status_stream(events)))
    }

    async fn list_workers(
        &self,
        _request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let workers = self.core.list_workers().await;
        Ok(Response::new(ListWorkersResponse { workers }))
    }

    async fn upload_blob(
        &self,
        request: Request<Streaming<BlobChunk>>,
    ) -> Result<Response<UploadBlobResponse>, Status> {
        let caller = caller_of(&request)?;
        let uploaded = self.core.upload_as(request.into_inner(), &caller).await?;
        Ok(Response::new(uploaded))
    }

    type DownloadArtifactStream = ResponseStream<BlobChunk>;

    async fn download_artifact(
        &self,
        request: Request<DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let caller = caller_of(&request)?;
        let DownloadArtifactRequest { job_id, name } = request.into_inner();
        // A name that could escape the store is refused as such, before
        // anything is looked up.
        crate::names::artifact_path(&job_id, &name)?;
        self.core.job_for(&caller, &job_id).await?;
        let chunks = self.core.blobs().download_artifact(&job_id, &name).await?;
        Ok(Response::new(to_status_stream(chunks)))
    }
}
