//! The metrics endpoint: a small HTTP/1.1 server answering `GET /metrics`
//! with the text a collector function returns (Prometheus's text format)
//! and `GET /healthz` with `ok`. One request per connection; a request
//! head larger than 16 KiB, or slower than 10 s, is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Builds the exposition for one scrape.
pub type Collect = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

const MAX_HEAD: usize = 16 << 10;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics` on `listener` until the task is aborted.
pub fn serve(listener: TcpListener, collect: Collect) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let collect = collect.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &collect).await {
                    tracing::debug!(%peer, "metrics request: {e}");
                }
            });
        }
    })
}

/// Binds `addr` and serves `/metrics` there; returns the bound address.
pub async fn bind(
    addr: SocketAddr,
    collect: Collect,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, serve(listener, collect)))
}

async fn answer(mut stream: TcpStream, collect: &Collect) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_HEAD {
                return Err(std::io::Error::other("request head too large"));
            }
        }
        Ok(())
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::other("request head timed out"))??;
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            collect().await,
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_owned()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "try /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET only\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// `GET http://addr/path` over plain HTTP/1.1: the status code and body.
/// For tests and `adjoint` tooling; not a general client.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(READ_TIMEOUT, stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("response timed out"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no response head"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Registry, parse};

    #[tokio::test]
    async fn serves_the_registry_and_health() {
        let r = Registry::new();
        r.gauge("adjoint_up", "1 while serving.");
        r.set("adjoint_up", &[], 1.0);
        let shared = r.clone();
        let collect: Collect = Arc::new(move || {
            let r = shared.clone();
            Box::pin(async move { r.render() })
        });
        let (addr, task) = bind("127.0.0.1:0".parse().unwrap(), collect).await.unwrap();
        let (status, body) = get(addr, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(parse(&body).unwrap().value("adjoint_up", &[]), Some(1.0));
        assert_eq!(get(addr, "/healthz").await.unwrap(), (200, "ok\n".into()));
        assert_eq!(get(addr, "/nope").await.unwrap().0, 404);
        task.abort();
    }
}
