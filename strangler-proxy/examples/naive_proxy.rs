//! The floor `scripts/bench --instructions` measures strangler-proxy against: the least a hyper 1
//! reverse proxy can do. One upstream, no routing, no metrics, no request ids, no
//! `x-forwarded-*`, no hop-by-hop handling, no retries: each request's URI is rewritten to the
//! upstream's scheme and authority and sent through hyper-util's legacy pooled client (the
//! client strangler-proxy uses), and the answer is streamed back as it comes. It runs on one
//! `current_thread` tokio runtime, the least scheduling tokio does (the multi-threaded runtime
//! costs some 1,700 more instructions per request here).
//!
//! It is a yardstick, not a proxy to deploy: it forwards every header as received.
//!
//! `cargo run --release -p strangler-proxy --example naive_proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:3000`

use std::net::SocketAddr;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

mod common;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Where requests go: the scheme and authority of `--upstream`.
#[derive(Clone)]
struct Upstream {
    scheme: Scheme,
    authority: Authority,
}

fn main() -> Result<(), Error> {
    let (listen, upstream) = args()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(listen, upstream))
}

fn args() -> Result<(SocketAddr, Upstream), Error> {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = "127.0.0.1:8080".parse()?;
    let mut upstream = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = common::flag_value(&mut args, "--listen", "an address")?,
            "--upstream" => {
                let uri: Uri = common::flag_value(&mut args, "--upstream", "http://HOST:PORT")?;
                let plain = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
                let parts = uri.clone().into_parts();
                match (parts.scheme, parts.authority) {
                    (Some(scheme), Some(authority)) if scheme == Scheme::HTTP && plain => {
                        upstream = Some(Upstream { scheme, authority });
                    }
                    _ => {
                        return Err(format!(
                            "--upstream {uri}: expected http://HOST:PORT (plain HTTP, no path)"
                        )
                        .into());
                    }
                }
            }
            "--help" | "-h" => {
                println!(
                    "naive_proxy --upstream http://HOST:PORT [--listen ADDR]   (default 127.0.0.1:8080)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    let upstream = upstream.ok_or("--upstream http://HOST:PORT is required")?;
    Ok((listen, upstream))
}

async fn serve(listen: SocketAddr, upstream: Upstream) -> Result<(), Error> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let listener = common::bind("naive_proxy", listen).await?;
    loop {
        let stream = common::accept(&listener).await;
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(req, client.clone(), upstream.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Sends `req` to the upstream with its URI rewritten; a failed exchange answers 502.
async fn forward(
    mut req: Request<Incoming>,
    client: Client<HttpConnector, Incoming>,
    upstream: Upstream,
) -> Result<Response<BoxBody<Bytes, hyper::Error>>, Error> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::builder()
        .scheme(upstream.scheme)
        .authority(upstream.authority)
        .path_and_query(path_and_query)
        .build()?;
    match client.request(req).await {
        Ok(response) => Ok(response.map(BodyExt::boxed)),
        Err(e) => {
            eprintln!("upstream: {e}");
            let body = Full::new(Bytes::from_static(b"Bad Gateway"))
                .map_err(|never| match never {})
                .boxed();
            let mut response = Response::new(body);
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(response)
        }
    }
}
