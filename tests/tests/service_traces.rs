//! One job is one trace: with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an
//! OTLP receiver in this test (a tonic server implementing the collector's
//! TraceService), `adjoint submit` and a coordinator with two worker
//! processes export spans that share one trace id, parented as
//! cli → grpc → submit (→ validate → plan) → schedule → job (per rank) →
//! step → forward, backward, allreduce (bytes, peers), optimizer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adjoint_client::local::{LocalCluster, binary};
use adjoint_tests::{logs, runtime, wait_until, write_example};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio_stream::wrappers::TcpListenerStream;

const TIMEOUT: Duration = Duration::from_secs(60);

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Got {
                    service: service.clone(),
                    name: span.name,
                    trace: span.trace_id,
                    id: span.span_id,
                    parent: span.parent_span_id,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = text(kv.value.as_ref().and_then(|v| v.value.as_ref()));
                            (kv.key.clone(), v)
                        })
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// The spans named `name` of `service`.
fn named<'a>(spans: &'a [Got], service: &str, name: &str) -> Vec<&'a Got> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect()
}

fn parent_of<'a>(spans: &'a [Got], s: &Got) -> Option<&'a Got> {
    spans
        .iter()
        .find(|p| p.id == s.parent && p.trace == s.trace)
}

#[test]
fn one_job_is_one_trace_across_cli_coordinator_and_workers() {
    let rt = runtime();
    let receiver = Receiver::default();
    let addr: SocketAddr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    });
    let endpoint = format!("http://{addr}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];

    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 256).unwrap();
    let cluster = LocalCluster::start_with_env(&dir.path().join("cluster"), 2, &env).unwrap();
    let out = Command::new(binary("adjoint"))
        .args(["submit", "--graph"])
        .arg(dir.path().join("model.json"))
        .arg("--data")
        .arg(dir.path().join("train.safetensors"))
        .args([
            "--workers",
            "2",
            "--batch-size",
            "16",
            "--steps",
            "3",
            "--watch",
        ])
        .env("ADJOINT_ADDR", &cluster.addr)
        .envs(env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "submit: {}{}",
        String::from_utf8_lossy(&out.stderr),
        logs(&cluster)
    );

    // Wait for every process's spans: both ranks' last steps included.
    let spans = rt
        .block_on(wait_until("the job's spans", TIMEOUT, async || {
            let spans = receiver.spans.lock().unwrap().clone();
            // Every span the checks below read: each process exports in
            // its own batches, so the coordinator's may come after the
            // workers' steps.
            let steps = named(&spans, "adjoint-worker", "step").len();
            let all_there = ["submit", "validate", "plan", "schedule"]
                .iter()
                .all(|name| !named(&spans, "adjoint-server", name).is_empty())
                && !named(&spans, "adjoint-cli", "cli").is_empty()
                && named(&spans, "adjoint-worker", "job").len() >= 2;
            Ok((steps >= 4 && all_there).then_some(spans))
        }))
        .unwrap_or_else(|e| {
            let spans = receiver.spans.lock().unwrap().clone();
            let names: Vec<_> = spans.iter().map(|s| (&s.service, &s.name)).collect();
            panic!("{e:#}: got {names:?}{}", logs(&cluster))
        });

    let cli = named(&spans, "adjoint-cli", "cli")[0];
    let trace = &cli.trace;
    assert!(cli.parent.is_empty(), "the CLI's span is the root");
    let submit = named(&spans, "adjoint-server", "submit");
    assert_eq!(submit.len(), 1, "one submit span");
    let submit = submit[0];
    assert_eq!(
        &submit.trace, trace,
        "the coordinator joined the CLI's trace"
    );
    let grpc = parent_of(&spans, submit).expect("submit has a parent");
    assert_eq!(grpc.name, "grpc");
    assert_eq!(grpc.attributes["path"], "/adjoint.v1.Coordinator/SubmitJob");
    assert_eq!(
        grpc.parent, cli.id,
        "the gRPC call's span is a child of the CLI's"
    );
    let validate = named(&spans, "adjoint-server", "validate")[0];
    assert_eq!(validate.parent, submit.id);
    let plan = named(&spans, "adjoint-server", "plan")[0];
    assert_eq!(plan.parent, validate.id);
    let schedule = named(&spans, "adjoint-server", "schedule")[0];
    assert_eq!(schedule.parent, submit.id);
    assert_eq!(&schedule.trace, trace);

    let jobs = named(&spans, "adjoint-worker", "job");
    assert_eq!(jobs.len(), 2, "one job span per rank");
    let mut ranks: Vec<&str> = jobs.iter().map(|j| j.attributes["rank"].as_str()).collect();
    ranks.sort();
    assert_eq!(ranks, ["0", "1"]);
    for job in &jobs {
        assert_eq!(&job.trace, trace, "rank {}", job.attributes["rank"]);
        assert_eq!(job.parent, schedule.id, "rank {}", job.attributes["rank"]);
        let steps: Vec<&Got> = named(&spans, "adjoint-worker", "step")
            .into_iter()
            .filter(|s| s.parent == job.id)
            .collect();
        // Sampled: the first and the last step.
        let mut numbers: Vec<&str> = steps
            .iter()
            .map(|s| s.attributes["step"].as_str())
            .collect();
        numbers.sort();
        assert_eq!(numbers, ["1", "3"], "rank {}", job.attributes["rank"]);
        for step in steps {
            let children: Vec<&Got> = spans.iter().filter(|c| c.parent == step.id).collect();
            let names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
            for phase in ["forward", "backward", "allreduce", "optimizer"] {
                assert!(names.contains(&phase), "step spans {names:?} lack {phase}");
            }
            let reduce = children.iter().find(|c| c.name == "allreduce").unwrap();
            assert_eq!(reduce.attributes["peers"], "1");
            assert!(reduce.attributes["bytes"].parse::<u64>().unwrap() > 0);
        }
    }
    // Nothing else claims the trace: every span of it leads back to the CLI.
    for s in spans.iter().filter(|s| &s.trace == trace) {
        let mut at = s;
        while !at.parent.is_empty() {
            at = parent_of(&spans, at).unwrap_or_else(|| {
                panic!(
                    "span {} ({}) has a parent not exported",
                    at.name, at.service
                )
            });
        }
        assert_eq!(at.id, cli.id, "span {} roots elsewhere", s.name);
    }
}
