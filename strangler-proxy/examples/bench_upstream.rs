//! The upstream `scripts/bench` measures proxies against: as little work per request as hyper
//! allows, so what the benchmark sees is the proxy's cost, not the backend's.
//!
//! - `GET /small` (and any path under it): a fixed JSON body of about 200 bytes;
//! - `GET /big` (and any path under it): 64 KiB;
//! - any request with a body (the POST scenario): the body is read to the end and discarded,
//!   then the small JSON answers;
//! - anything else: 404.
//!
//! `cargo run --release -p strangler-proxy --example bench_upstream -- --listen 127.0.0.1:3000`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

mod common;

/// About 200 bytes of compact JSON, like a typical single-resource API answer.
const SMALL: &[u8] = br#"{"id":42,"username":"strangler","name":"Benchmark User","bio":"A fixed answer so that every proxy is measured against the same work.","threads":[1,2,3],"posts":[4,5,6,7],"createdAt":"2024-01-01T00:00:00Z"}"#;

/// The 64 KiB answer.
static BIG: [u8; 64 * 1024] = [b'x'; 64 * 1024];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = listen_arg()?;
    // One worker per CPU the process may run on: `scripts/bench` pins it with taskset.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(listen))
}

fn listen_arg() -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = "127.0.0.1:3000".parse()?;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = common::flag_value(&mut args, "--listen", "an address")?,
            "--help" | "-h" => {
                println!("bench_upstream [--listen ADDR]   (default 127.0.0.1:3000)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    Ok(listen)
}

async fn serve(listen: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = common::bind("bench_upstream", listen).await?;
    loop {
        let stream = common::accept(&listener).await;
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let (body, content_type) = if under(path, "/big") {
        (Bytes::from_static(&BIG), "application/octet-stream")
    } else if under(path, "/small") {
        (Bytes::from_static(SMALL), "application/json")
    } else {
        let mut response = Response::new(Full::new(Bytes::from_static(b"Not Found")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(response);
    };
    // Read an uploaded body to the end, as a real service would, and drop it.
    let mut upload = req.into_body();
    while let Some(frame) = upload.frame().await {
        if frame.is_err() {
            break;
        }
    }
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// `path` is `prefix` or below it (segment-aware, like the proxy's routes).
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}
