//! The blob store: uploaded blobs (graphs, datasets, initial weights) and
//! job artifacts, through `object_store`.
//!
//! Layout under the store root:
//!
//! - `blobs/<sha256 hex>`: content-addressed uploads ([`BlobStore::upload`]);
//! - `jobs/<job id>/<name>`: artifacts the workers write, and `model.onnx`,
//!   the job's `onnx_blob`, copied there at submission;
//! - `tmp/`: uploads in flight, renamed into `blobs/` once hashed.
//!
//! Workers read blobs and write artifacts in the same store directly (a
//! shared folder or S3), so the coordinator only uploads, downloads and
//! inspects (dataset headers, existence). Every id and name is checked by
//! [`crate::names`] before it becomes a path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use adjoint_proto::v1::{BlobChunk, UploadBlobResponse};
use futures::{Stream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use safetensors::tensor::Metadata;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::names::{self, artifact_path, check_blob_id};
use crate::{Error, Result};

/// Size of the chunks [`BlobStore::download_artifact`] sends.
pub const DOWNLOAD_CHUNK: usize = 1 << 20;

/// The largest safetensors header read when checking a dataset.
const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

/// The store of blobs and artifacts; cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    uploads: Arc<AtomicU64>,
}

impl BlobStore {
    /// Opens the store at `location`: a local folder (created if missing)
    /// or, with the `s3` feature, an `s3://bucket/prefix` URL configured
    /// from the `AWS_*` environment variables.
    pub fn open(location: &str) -> Result<BlobStore> {
        let store: Arc<dyn ObjectStore> = if location.starts_with("s3://") {
            open_s3(location)?
        } else {
            std::fs::create_dir_all(location)?;
            Arc::new(LocalFileSystem::new_with_prefix(location)?)
        };
        Ok(BlobStore {
            store,
            uploads: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Stores a client's upload: the chunks go to a temporary object while
    /// they are hashed, which is then renamed to `blobs/<sha256>`. The first
    /// chunk's name, if any, must be a valid name; it is only logged.
    pub async fn upload<S>(&self, mut chunks: S) -> Result<UploadBlobResponse>
    where
        S: Stream<Item = Result<BlobChunk, tonic::Status>> + Unpin,
    {
        let n = self.uploads.fetch_add(1, Ordering::Relaxed);
        let tmp = Path::from(format!("tmp/upload-{}-{n}", std::process::id()));
        let mut writer = WriteMultipart::new(self.store.put_multipart(&tmp).await?);
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut name = String::new();
        let mut first = true;
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(status) => {
                    writer.abort().await?;
                    return Err(Error::Stream(status));
                }
            };
            if std::mem::take(&mut first) && !chunk.name.is_empty() {
                if let Err(e) = names::check_name("blob name", &chunk.name) {
                    writer.abort().await?;
                    return Err(e);
                }
                name = chunk.name;
            }
            hasher.update(&chunk.data);
            bytes += chunk.data.len() as u64;
            writer.write(&chunk.data);
        }
        writer.finish().await?;
        let blob_id = names::blob_id(&hex(&hasher.finalize()));
        self.store
            .rename(&tmp, &Path::from(blob_id.as_str()))
            .await?;
        tracing::info!(blob = %blob_id, name = %name, bytes, "blob uploaded");
        Ok(UploadBlobResponse { blob_id, bytes })
    }

    /// The size of blob `id`; NOT_FOUND if it is missing.
    pub async fn blob_size(&self, id: &str) -> Result<u64> {
        check_blob_id(id)?;
        match self.store.head(&Path::from(id)).await {
            Ok(meta) => Ok(meta.size),
            Err(object_store::Error::NotFound { .. }) => Err(Error::BlobNotFound(id.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// The whole content of blob `id`.
    pub async fn read_blob(&self, id: &str) -> Result<Vec<u8>> {
        check_blob_id(id)?;
        match self.store.get(&Path::from(id)).await {
            Ok(got) => Ok(got.bytes().await?.to_vec()),
            Err(object_store::Error::NotFound { .. }) => Err(Error::BlobNotFound(id.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads and checks the header of safetensors blob `id` without reading
    /// its data: the header must parse, its offsets must be consistent and
    /// the blob must be exactly as long as they say. `field` names the spec
    /// field in errors.
    pub async fn safetensors_header(&self, field: &'static str, id: &str) -> Result<Metadata> {
        let size = self.blob_size(id).await?;
        let bad = |message: String| Error::Dataset {
            field,
            blob: id.to_owned(),
            message,
        };
        if size < 8 {
            return Err(bad(format!(
                "not a safetensors file: {size} bytes, shorter than its header length"
            )));
        }
        let path = Path::from(id);
        let len_bytes = self.store.get_range(&path, 0..8).await?;
        let len_bytes: [u8; 8] = len_bytes[..].try_into().expect("8 bytes were asked for");
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_SAFETENSORS_HEADER || 8 + header_len > size {
            return Err(bad(format!(
                "not a safetensors file: header length {header_len} does not fit its {size} bytes"
            )));
        }
        let header = self.store.get_range(&path, 8..8 + header_len).await?;
        let metadata: Metadata = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("not a safetensors file: bad header: {e}")))?;
        let expected = 8 + header_len + metadata.data_len() as u64;
        if expected != size {
            return Err(bad(format!(
                "safetensors header describes {expected} bytes, but the blob has {size}"
            )));
        }
        Ok(metadata)
    }

    /// Copies blob `id` to artifact `name` of job `job_id` (all checked).
    pub async fn copy_to_artifact(&self, id: &str, job_id: &str, name: &str) -> Result<()> {
        check_blob_id(id)?;
        let to = Path::from(artifact_path(job_id, name)?);
        match self.store.copy(&Path::from(id), &to).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Err(Error::BlobNotFound(id.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams artifact `name` of job `job_id` in chunks of
    /// [`DOWNLOAD_CHUNK`] bytes (the first chunk carries the name);
    /// NOT_FOUND if it is missing.
    pub async fn download_artifact(
        &self,
        job_id: &str,
        name: &str,
    ) -> Result<ReceiverStream<Result<BlobChunk>>> {
        let path = Path::from(artifact_path(job_id, name)?);
        let got = match self.store.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::ArtifactNotFound {
                    job_id: job_id.to_owned(),
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let (tx, rx) = mpsc::channel(4);
        let name = name.to_owned();
        tokio::spawn(send_in_chunks(got.into_stream(), name.to_owned(), tx));
        Ok(ReceiverStream::new(rx))
    }
}

/// Re-chunks `parts` into [`DOWNLOAD_CHUNK`]-byte [`BlobChunk`]s on `tx`;
/// the first carries `name`, and an empty object still sends one chunk.
async fn send_in_chunks(
    mut parts: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    name: String,
    tx: mpsc::Sender<Result<BlobChunk>>,
) {
    let mut name = Some(name);
    let mut buffer = Vec::with_capacity(DOWNLOAD_CHUNK);
    while let Some(part) = parts.next().await {
        let part = match part {
            Ok(part) => part,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let mut rest = &part[..];
        while !rest.is_empty() {
            let take = rest.len().min(DOWNLOAD_CHUNK - buffer.len());
            buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buffer.len() == DOWNLOAD_CHUNK {
                let data = std::mem::replace(&mut buffer, Vec::with_capacity(DOWNLOAD_CHUNK));
                let chunk = BlobChunk {
                    name: name.take().unwrap_or_default(),
                    data,
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        }
    }
    if !buffer.is_empty() || name.is_some() {
        let chunk = BlobChunk {
            name: name.take().unwrap_or_default(),
            data: buffer,
        };
        let _ = tx.send(Ok(chunk)).await;
    }
}

#[cfg(feature = "s3")]
fn open_s3(url: &str) -> Result<Arc<dyn ObjectStore>> {
    use object_store::aws::AmazonS3Builder;
    use object_store::prefix::PrefixStore;
    let rest = url.strip_prefix("s3://").unwrap_or(url);
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let s3 = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()?;
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        Ok(Arc::new(s3))
    } else {
        Ok(Arc::new(PrefixStore::new(s3, prefix)))
    }
}

#[cfg(not(feature = "s3"))]
fn open_s3(url: &str) -> Result<Arc<dyn ObjectStore>> {
    Err(Error::Internal(format!(
        "store '{url}' needs S3 support: build adjoint-server with the 's3' feature"
    )))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
