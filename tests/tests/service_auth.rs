//! TLS and bearer tokens, end to end: a coordinator with a certificate from a
//! throwaway CA and a tokens file, and real worker processes. Calls with no
//! token, a wrong token or the worker token are refused; a user sees,
//! watches, cancels and pulls only their own jobs (an admin sees all) and
//! uses only blobs they uploaded; a worker without the worker token never
//! registers; a client that does not trust the CA cannot connect. No token
//! appears in any log, even at debug level.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use adjoint_client::local::{LocalCluster, binary};
use adjoint_client::spec::SpecFields;
use adjoint_client::{Client, Credentials};
use adjoint_proto::v1::JobState;
use adjoint_tests::{logs, wait_until, watch_to_end, write_example};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::Code;

const WORKER_TOKEN: &str = "worker-token-7f3a9c1e55d2";
const ALICE: &str = "alice-token-0b8e41d97a66";
const BOB: &str = "bob-token-c2d95f18e3a7";
const ADMIN: &str = "admin-token-94e7a3b0c1f5";

/// A CA and a server certificate for `localhost`/127.0.0.1 it signed, as
/// files in `dir`: `ca.pem`, `server.pem`, `server.key`.
fn make_ca(dir: &Path, name: &str) -> std::path::PathBuf {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("adjoint test CA {name}"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(out.join("server.pem"), server.pem()).unwrap();
    std::fs::write(out.join("server.key"), server_key.serialize_pem()).unwrap();
    out
}

fn code_of(err: &anyhow::Error) -> Code {
    err.chain()
        .find_map(|e| e.downcast_ref::<tonic::Status>())
        .map_or(Code::Unknown, tonic::Status::code)
}

/// Runs the `adjoint` CLI with these environment variables.
fn cli(env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let out = Command::new(binary("adjoint"))
        .args(args)
        .env_remove("ADJOINT_TOKEN")
        .env_remove("ADJOINT_TOKEN_FILE")
        .envs(env.iter().copied())
        .output()
        .expect("the adjoint binary runs (build it with `cargo build --bins`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn tokens_and_tls_keep_jobs_to_their_owners_and_workers_to_the_worker_token() {
    let dir = tempfile::tempdir().unwrap();
    write_example(dir.path(), 128).unwrap();
    let tls = make_ca(dir.path(), "ca");
    let other_ca = make_ca(dir.path(), "other");
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "worker_token = \"{WORKER_TOKEN}\"\n\
             [[users]]\nname = \"alice\"\ntoken = \"{ALICE}\"\n\
             [[users]]\nname = \"bob\"\ntoken = \"{BOB}\"\n\
             [[users]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nadmin = true\n"
        ),
    )
    .unwrap();
    let ca_file = tls.join("ca.pem");
    let (ca, cert, key) = (
        ca_file.to_str().unwrap(),
        tls.join("server.pem"),
        tls.join("server.key"),
    );
    let cluster = LocalCluster::start_with_env(
        &dir.path().join("cluster"),
        1,
        &[
            ("ADJOINT_AUTH", "on"),
            ("ADJOINT_TOKENS", tokens.to_str().unwrap()),
            ("ADJOINT_TLS_CERT", cert.to_str().unwrap()),
            ("ADJOINT_TLS_KEY", key.to_str().unwrap()),
            ("ADJOINT_WORKER_TOKEN", WORKER_TOKEN),
            ("ADJOINT_CA_FILE", ca),
            // The cluster's own calls (waiting for workers) are an admin's.
            ("ADJOINT_TOKEN", ADMIN),
            // Everything at debug level, to show no token is ever logged.
            ("RUST_LOG", "debug"),
        ],
    )
    .expect("a worker registers over TLS with the worker token");
    let url = cluster.url();
    assert!(url.starts_with("https://"), "{url}");
    let user = |token: &str| {
        Credentials::none()
            .with_token(token)
            .with_ca_pem(std::fs::read(ca).unwrap())
    };
    let model = dir.path().join("model.json");
    let data = dir.path().join("train.safetensors");

    let runtime = adjoint_tests::runtime();
    let job_id = runtime.block_on(async {
        // No token, a wrong token, the worker token: refused, saying why.
        let mut anonymous = Client::connect_with(
            &url,
            &Credentials::none().with_ca_pem(std::fs::read(ca).unwrap()),
        )
        .await
        .unwrap();
        let err = anonymous.list_jobs(&[]).await.unwrap_err();
        assert_eq!(code_of(&err), Code::Unauthenticated, "{err:#}");
        assert!(format!("{err:#}").contains("no bearer token"), "{err:#}");
        let mut wrong = Client::connect_with(&url, &user("not-a-token-at-all-0000"))
            .await
            .unwrap();
        let err = wrong.list_jobs(&[]).await.unwrap_err();
        assert_eq!(code_of(&err), Code::Unauthenticated, "{err:#}");
        let mut as_worker = Client::connect_with(&url, &user(WORKER_TOKEN))
            .await
            .unwrap();
        let err = as_worker.list_jobs(&[]).await.unwrap_err();
        assert_eq!(code_of(&err), Code::PermissionDenied, "{err:#}");

        // TLS is checked: plain HTTP/2 and a client trusting another CA
        // cannot talk to it.
        let plain = Client::connect_with(
            &format!("http://{}", cluster.addr),
            &Credentials::none().with_token(ALICE),
        )
        .await;
        if let Ok(mut plain) = plain {
            assert!(
                plain.list_jobs(&[]).await.is_err(),
                "plain HTTP/2 got an answer"
            );
        }
        let other = Credentials::none()
            .with_token(ALICE)
            .with_ca_pem(std::fs::read(other_ca.join("ca.pem")).unwrap());
        let err = match Client::connect_with(&url, &other).await {
            Err(e) => e,
            Ok(mut c) => c.list_jobs(&[]).await.unwrap_err(),
        };
        let text = format!("{err:#}").to_lowercase();
        assert!(
            text.contains("certificate") || text.contains("tls") || text.contains("invalid"),
            "{text}"
        );

        // Alice's job: hers, trained by the worker that holds the token.
        let mut alice = Client::connect_with(&url, &user(ALICE)).await.unwrap();
        let fields = SpecFields {
            graph: Some(model.clone()),
            data: Some(data.clone()),
            workers: Some(1),
            batch_size: Some(16),
            steps: Some(10),
            optimizer: Some("sgd:lr=0.1".into()),
            ..SpecFields::default()
        };
        let spec = fields.build(&mut alice).await.unwrap();
        let job = alice.submit(spec.clone()).await.unwrap();
        assert_eq!(job.owner, "alice");
        let watched = watch_to_end(&mut alice, &job.id, Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(
            watched.last_state(),
            JobState::Succeeded,
            "{}",
            logs(&cluster)
        );
        assert!(
            !alice
                .download(&job.id, "weights.safetensors")
                .await
                .unwrap()
                .is_empty()
        );

        // Bob sees none of it: the same answer as for a job that does not
        // exist.
        let mut bob = Client::connect_with(&url, &user(BOB)).await.unwrap();
        assert!(bob.list_jobs(&[]).await.unwrap().is_empty());
        for err in [
            bob.get_job(&job.id).await.unwrap_err(),
            bob.cancel(&job.id).await.unwrap_err(),
            bob.watch(&job.id, 0).await.unwrap_err(),
            bob.download(&job.id, "weights.safetensors")
                .await
                .unwrap_err(),
        ] {
            assert_eq!(code_of(&err), Code::NotFound, "{err:#}");
            assert!(format!("{err:#}").contains(&job.id), "{err:#}");
        }
        // Nor can he train on her uploads by their hashes, or resume her job.
        let err = bob.submit(spec.clone()).await.unwrap_err();
        assert_eq!(code_of(&err), Code::NotFound, "{err:#}");
        assert!(
            format!("{err:#}").contains("not found among your uploads"),
            "{err:#}"
        );
        let mut resume = fields.build(&mut bob).await.unwrap();
        resume.resume_from_job = job.id.clone();
        let err = bob.submit(resume).await.unwrap_err();
        assert_eq!(code_of(&err), Code::NotFound, "{err:#}");
        // Once he uploads the same data himself, it is his to use.
        let his = fields.build(&mut bob).await.unwrap();
        let estimate = bob.estimate(his).await;
        assert!(estimate.is_ok(), "{estimate:?}");

        // The admin sees every job.
        let mut admin = Client::connect_with(&url, &user(ADMIN)).await.unwrap();
        let all = admin.list_jobs(&[]).await.unwrap();
        assert!(all.iter().any(|j| j.id == job.id), "{all:?}");
        assert_eq!(admin.get_job(&job.id).await.unwrap().owner, "alice");
        job.id
    });

    // The CLI: the token from ADJOINT_TOKEN or a file, the CA from a flag.
    let addr = cluster.addr.as_str();
    let alice_file = dir.path().join("alice.token");
    std::fs::write(&alice_file, format!("{ALICE}\n")).unwrap();
    let (ok, out) = cli(
        &[
            ("ADJOINT_ADDR", addr),
            ("ADJOINT_TOKEN_FILE", alice_file.to_str().unwrap()),
        ],
        &["jobs", "--ca-file", ca],
    );
    assert!(ok && out.contains(&job_id), "{out}");
    let (ok, out) = cli(
        &[
            ("ADJOINT_ADDR", addr),
            ("ADJOINT_TOKEN", BOB),
            ("ADJOINT_CA_FILE", ca),
        ],
        &["jobs"],
    );
    assert!(ok && !out.contains(&job_id), "{out}");
    let pulled = dir.path().join("stolen.safetensors");
    let (ok, out) = cli(
        &[
            ("ADJOINT_ADDR", addr),
            ("ADJOINT_TOKEN", BOB),
            ("ADJOINT_CA_FILE", ca),
        ],
        &["pull", &job_id, "-o", pulled.to_str().unwrap()],
    );
    assert!(
        !ok && out.contains("not found") && !pulled.exists(),
        "{out}"
    );
    let (ok, out) = cli(
        &[("ADJOINT_ADDR", addr), ("ADJOINT_CA_FILE", ca)],
        &["jobs"],
    );
    assert!(!ok && out.contains("no bearer token"), "{out}");

    // A worker without the worker token (here with a user's) never
    // registers; its log says why.
    let log = cluster.dir.join("logs").join("intruder.log");
    let mut intruder = Command::new(binary("adjoint-worker"))
        .args([
            "--coordinator",
            &url,
            "--ca-file",
            ca,
            "--name",
            "intruder",
            "--store",
        ])
        .arg(cluster.dir.join("store"))
        .env("ADJOINT_WORKER_TOKEN", ALICE)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    runtime
        .block_on(wait_until(
            "the intruder's refusal",
            Duration::from_secs(30),
            async || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                Ok(text.contains("only the worker token").then_some(()))
            },
        ))
        .unwrap();
    let workers = runtime.block_on(async {
        let mut admin = Client::connect_with(&url, &user(ADMIN)).await.unwrap();
        admin.workers().await.unwrap()
    });
    assert!(workers.iter().all(|w| w.name != "intruder"), "{workers:?}");
    let _ = intruder.kill();
    let _ = intruder.wait();

    // No log of any process holds a token.
    let mut files = cluster.log_files();
    files.push(log);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for token in [WORKER_TOKEN, ALICE, BOB, ADMIN] {
            assert!(!text.contains(token), "{} holds a token", path.display());
        }
    }
}

#[test]
fn a_coordinator_off_loopback_needs_tokens_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("adjoint-server"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("ADJOINT_AUTH")
        .env_remove("ADJOINT_TOKENS")
        .output()
        .expect("adjoint-server runs (cargo build --bins)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("--tokens"),
        "{stderr}"
    );
}
