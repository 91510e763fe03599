//! Serving the coordinator on a TCP listener: `adjoint.v1.Coordinator`,
//! `adjoint.v1.WorkerControl`, gRPC health and server reflection on one
//! port (TLS when configured; the two adjoint services behind their bearer
//! token checks), until [`ServerHandle::shutdown`].

use std::net::SocketAddr;
use std::time::Duration;

use adjoint_proto::v1::coordinator_server::CoordinatorServer;
use adjoint_proto::v1::worker_control_server::WorkerControlServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

use crate::grpc::{CoordinatorService, WorkerControlService};
use crate::{Config, Coordinator, Error, Result};

/// The largest gRPC message accepted or sent, either way (64 MiB): an
/// inline graph with its initial values fits; larger inputs go through
/// `UploadBlob`'s stream of chunks.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How long [`ServerHandle::shutdown`] lets open calls finish before it
/// stops serving anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    /// The metrics endpoint's address and task.
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
    core: Coordinator,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
    tls: bool,
}

impl ServerHandle {
    /// The address it listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.0)
    }

    /// `http://ADDR` (`https://` with TLS), for a tonic `Endpoint`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The coordinator behind the services.
    pub fn coordinator(&self) -> &Coordinator {
        &self.core
    }

    /// Stops gracefully: watch and worker streams end, the server stops
    /// accepting and lets open calls finish (for a few seconds at most).
    pub async fn shutdown(mut self) -> Result<()> {
        self.core.close().await;
        if let Some((_, task)) = self.metrics.take() {
            task.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(joined) => joined.map_err(|e| Error::Internal(format!("server task: {e}")))?,
            Err(_) => {
                tracing::warn!("open calls did not finish in time; stopping anyway");
                self.task.abort();
                Ok(())
            }
        }
    }

    /// Waits until the server stops by itself (an error); mostly for
    /// `main`, which calls [`ServerHandle::shutdown`] on a signal instead.
    pub async fn wait(&mut self) -> Result<()> {
        (&mut self.task)
            .await
            .map_err(|e| Error::Internal(format!("server task: {e}")))?
    }
}

/// Opens the coordinator of `config` and serves it on `listener`; returns
/// once it is ready to take calls.
///
/// ```no_run
/// # async fn demo() -> adjoint_server::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let handle = adjoint_server::serve(listener, adjoint_server::Config::new("/tmp/adjoint")).await?;
/// println!("listening on {}", handle.url());
/// handle.shutdown().await
/// # }
/// ```
pub async fn serve(listener: TcpListener, config: Config) -> Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let core = Coordinator::open(config).await?;
    let routes = routes(core.clone()).await?;
    let liveness = core.clone();
    tokio::spawn(async move { liveness.run_liveness().await });
    let metrics = match core.config().metrics_listen {
        Some(at) => {
            let (bound, task) =
                adjoint_telemetry::http::bind(at, crate::metrics::collect(core.clone()))
                    .await
                    .map_err(|e| crate::error::Error::Internal(format!("metrics on {at}: {e}")))?;
            tracing::info!(%bound, "metrics served at /metrics");
            Some((bound, task))
        }
        None => None,
    };
    let mut builder = tonic::transport::Server::builder();
    let tls = core.config().tls.clone();
    if let Some(identity) = &tls {
        builder = builder
            .tls_config(identity.server_config())
            .map_err(|e| Error::Internal(format!("TLS: {e}")))?;
    }
    let (stop, stopped) = oneshot::channel::<()>();
    // Small replies (a submitted job, a heartbeat's answer) go out at once:
    // with Nagle's algorithm on, each waited for the client's delayed ACK
    // (about 40 ms per call).
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
        })
    });
    let task = tokio::spawn(async move {
        builder
            .trace_fn(request_span)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await?;
        Ok(())
    });
    let auth = core.config().auth.is_on();
    tracing::info!(%addr, tls = tls.is_some(), auth, "adjoint-server listening");
    Ok(ServerHandle {
        addr,
        metrics,
        core,
        stop: Some(stop),
        task,
        tls: tls.is_some(),
    })
}

/// The span of one gRPC call, a child of the caller's span when the call
/// carries W3C trace context (`traceparent` metadata). Set here, when the
/// span is made, because a remote parent set on an entered span is
/// ignored.
fn request_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("grpc", path = %request.uri().path());
    if let Some(tp) = adjoint_telemetry::propagate::header_traceparent(request.headers()) {
        adjoint_telemetry::propagate::set_remote_parent(&span, tp);
    }
    span
}

/// Every service of the server, each with the message limits of
/// [`MAX_MESSAGE_BYTES`]: the one place they are set. The job API admits
/// user tokens, worker control the worker token; health and reflection
/// are open (probes, tools).
async fn routes(core: Coordinator) -> Result<Routes> {
    let users = core.config().auth.clone();
    let workers_auth = users.clone();
    let coordinator = CoordinatorServer::new(CoordinatorService::new(core.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let coordinator = InterceptedService::new(coordinator, move |r| users.user_call(r));
    let workers = WorkerControlServer::new(WorkerControlService::new(core))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let workers = InterceptedService::new(workers, move |r| workers_auth.worker_call(r));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    health
        .set_serving::<WorkerControlServer<WorkerControlService>>()
        .await;
    let reflection_error =
        |e: tonic_reflection::server::Error| Error::Internal(format!("reflection service: {e}"));
    // Reflection describes every service on the port, health and
    // reflection included; v1alpha too, for older tools.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(adjoint_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
    };
    let reflection_alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    let reflection = reflection().build_v1().map_err(reflection_error)?;
    let mut routes = Routes::builder();
    routes
        .add_service(coordinator)
        .add_service(workers)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha);
    Ok(routes.routes())
}
