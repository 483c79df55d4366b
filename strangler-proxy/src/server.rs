//! Listeners and lifecycle: bind, accept, serve HTTP/1.1 and h2c, reload on SIGHUP, drain on
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::FutureExt as _;
use http::header::CONNECTION;
use http::{HeaderValue, Request, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::config::ProxySettings;
use crate::connections::{Connections, Limits, Tracked};
use crate::drain::Draining;
use crate::history::History;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::{self, Reloader};
use crate::shadow::Shadows;

/// HTTP/2 pings on a connection quiet this long...
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...and the connection closes when one goes unanswered this long (a peer gone silently).
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The admin listener serves probes and scrapes: a few connections each, so its cap is low
/// whatever `max_connections` says.
const ADMIN_MAX_CONNECTIONS: usize = 256;
/// Descriptors kept for everything but client connections (listeners, config, logs).
const RESERVED_FDS: u64 = 64;

/// The shutdown's phases, from `[proxy]`.
#[derive(Debug, Clone, Copy)]
struct Lifecycle {
    grace: Duration,
    timeout: Duration,
}

/// A proxy that is serving.
pub struct Running {
    /// Where the public listener is bound.
    pub public: SocketAddr,
    /// Where the admin listener is bound.
    pub admin: SocketAddr,
    /// The live table.
    pub live: Arc<Live>,
    /// The file and its reloads.
    pub reloader: Arc<Reloader>,
    /// Set when the shutdown begins.
    pub draining: Arc<Draining>,
    /// Every metric family.
    pub metrics: Arc<Metrics>,
    /// The last 15 minutes of traffic (`/history`), sampled every 10 s.
    pub history: Arc<History>,
    shutdown: watch::Sender<bool>,
    access_log: AccessLog,
    public_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Marks the proxy draining (`/readyz` 503, `Connection: close` on answers), keeps
    /// accepting for `drain_grace`, then stops accepting, closes idle connections and waits for
    /// in-flight requests (bounded by `drain_timeout`); returns when the public listener is
    /// done.
    pub async fn shutdown(self) {
        self.draining.start();
        let _ = self.shutdown.send(true);
        if let Err(e) = self.public_task.await {
            tracing::error!(error = %e, "public listener task failed");
        }
        for task in self.tasks {
            task.abort();
        }
        self.access_log.flush();
    }
}

/// Loads `config`, binds both listeners and starts serving. Refuses an invalid file.
pub async fn start(config: &Path) -> anyhow::Result<Running> {
    // Before binding: a SIGHUP from an impatient operator must never kill a starting proxy.
    let hup = signal(SignalKind::hangup()).ok();
    let metrics = Arc::new(Metrics::new());
    let reloader = Reloader::open(config, metrics.clone()).map_err(|errors| {
        anyhow::anyhow!(
            "refusing to start: {} has errors (`strangler-proxy check` shows the same):\n{errors}",
            config.display()
        )
    })?;
    let live = reloader.live().clone();
    let table = live.table();
    let settings = &table.config.proxy;
    // Per-process state lives here and is handed out explicitly: the shadow bound is read at
    // start-up (a reload cannot resize it), the draining flag is set once.
    let shadows = Arc::new(Shadows::new(settings.shadow_concurrency));
    shadows.run_on(tokio::runtime::Handle::current());
    let draining = Arc::new(Draining::default());
    let fds = raise_fd_limit();
    let (public_limits, admin_limits) = connection_limits(settings, fds);
    let workers = worker_count(settings);
    let public = bind_public(settings.listen, workers).with_context(|| {
        format!(
            "cannot listen on {} ([proxy] listen): is another process using it?",
            settings.listen
        )
    })?;
    let admin_listener = TcpListener::bind(settings.admin).await.with_context(|| {
        format!(
            "cannot listen on {} ([proxy] admin): is another process using it?",
            settings.admin
        )
    })?;
    let (public_addr, admin_addr) = (public[0].local_addr()?, admin_listener.local_addr()?);
    let (shutdown, shutdown_rx) = watch::channel(false);

    let watch = reload::Watch::install(reloader.clone());
    let lifecycle = Lifecycle {
        grace: settings.drain_grace,
        timeout: settings.drain_timeout,
    };
    let access_log = AccessLog::stderr();
    let proxy = Proxy::new(
        live.clone(),
        metrics.clone(),
        shadows.clone(),
        Some(access_log.clone()),
    );
    let history = Arc::new(History::new(metrics.clone(), std::time::SystemTime::now()));
    let admin = Arc::new(Admin {
        reloader: reloader.clone(),
        metrics: metrics.clone(),
        shadows,
        draining: draining.clone(),
        history: history.clone(),
    });
    let public_task = spawn_workers(
        public,
        &proxy,
        &Connections::new(public_limits),
        &draining,
        &shutdown_rx,
        lifecycle,
    )?;
    let tasks = vec![
        // The admin side outlives the drain: probes must hear 503 from /readyz, and metrics
        // stay scrapable, until the process ends.
        tokio::spawn(serve_admin(
            admin_listener,
            admin,
            Connections::new(admin_limits),
        )),
        tokio::spawn(async move {
            match watch {
                Ok(watch) => watch.run().await,
                Err(e) => tracing::error!(
                    error = %e,
                    "cannot watch the config directory; reload with SIGHUP"
                ),
            }
        }),
        tokio::spawn(reload_on_sighup(reloader.clone(), hup)),
        tokio::spawn(history.clone().run()),
    ];
    tracing::info!(
        public = %public_addr,
        admin = %admin_addr,
        revision = table.revision,
        routes = table.routes().len(),
        workers,
        "strangler-proxy serving"
    );
    Ok(Running {
        public: public_addr,
        admin: admin_addr,
        live,
        reloader,
        draining,
        metrics,
        history,
        shutdown,
        access_log,
        public_task,
        tasks,
    })
}

/// `[proxy] workers`, or the CPUs this process may run on (`sched_getaffinity`, through
/// `available_parallelism`).
fn worker_count(settings: &ProxySettings) -> usize {
    settings.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    })
}

/// `count` listening sockets on `addr`, all with `SO_REUSEPORT`, so the kernel spreads new
/// connections over the workers (as NGINX's `reuseport`). `SO_REUSEPORT` would also let this
/// proxy share a port another process holds the same way (a second proxy started by
/// mistake): a plain bind is tried first, and a port in use is refused as before. Port 0
/// binds the first socket on a free port and the others on the same one.
fn bind_public(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let first = reuseport_listener(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(reuseport_listener(bound)?);
    }
    Ok(listeners)
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    // Registered with a worker's runtime later, by the worker.
    socket.listen(1024)?.into_std()
}

/// One thread per listener, each with its own current-thread runtime serving its share of the
/// clients: a request, its upstream connection and its timers stay on one thread, with no
/// work stealing or cross-thread wake-ups (thread-per-core). The returned task ends when
/// every worker has drained.
fn spawn_workers(
    listeners: Vec<std::net::TcpListener>,
    proxy: &Proxy,
    connections: &Arc<Connections>,
    draining: &Arc<Draining>,
    shutdown: &watch::Receiver<bool>,
    lifecycle: Lifecycle,
) -> anyhow::Result<JoinHandle<()>> {
    let mut done = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let (finished, finished_rx) = tokio::sync::oneshot::channel::<()>();
        let (proxy, connections) = (proxy.clone(), connections.clone());
        let (draining, shutdown) = (draining.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                crate::pool::set_worker(i + 1);
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(error = %e, worker = i, "cannot start a worker's runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    if let Err(e) = listener.set_nonblocking(true) {
                        tracing::error!(error = %e, worker = i, "worker listener");
                        return;
                    }
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            // The accept loop's lines (drain, stop) name their worker.
                            serve_public(
                                listener,
                                proxy,
                                connections,
                                draining,
                                shutdown,
                                lifecycle,
                            )
                            .instrument(tracing::info_span!("worker", n = i))
                            .await
                        }
                        Err(e) => tracing::error!(error = %e, worker = i, "worker listener"),
                    }
                });
                // Whatever is left (connections past the drain timeout, shadow copies) goes
                // with the runtime.
                drop(runtime);
                let _ = finished.send(());
            })
            .context("starting a worker thread")?;
        done.push(finished_rx);
    }
    Ok(tokio::spawn(async move {
        for worker in done {
            let _ = worker.await;
        }
    }))
}

async fn serve_public(
    listener: TcpListener,
    proxy: Proxy,
    connections: Arc<Connections>,
    draining: Arc<Draining>,
    mut shutdown: watch::Receiver<bool>,
    lifecycle: Lifecycle,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Header-read, first-byte and idle timeouts are `connections`' (hyper's header timeout
    // would also close idle keep-alive connections, at its own value).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    h2_keep_alive(&mut builder);
    let grace = lifecycle.grace;
    let stop = async move {
        // The only change ever sent is "stop"; a dropped sender means the same.
        let _ = shutdown.changed().await;
        // Balancers need time to see /readyz fail; until then new connections still come,
        // and are served (with `Connection: close`) rather than refused.
        if !grace.is_zero() {
            tracing::info!("draining: still accepting for {grace:?}, /readyz answers 503");
            tokio::time::sleep(grace).await;
        }
    };
    let mut on_conn = |stream: TcpStream, client: SocketAddr| {
        let proxy = proxy.for_client(client);
        let (io, conn) = connections.open(stream);
        let requests = conn.requests();
        let draining = draining.clone();
        // `handle` directly rather than through `tower::Service::call`: the same code, without
        // boxing a future per request.
        let service = service_fn(move |req: Request<Incoming>| {
            let proxy = proxy.clone();
            let active = requests.start(req.version());
            let draining = draining.clone();
            async move {
                let http1 = req.version() < Version::HTTP_2;
                let mut response = proxy.handle(req).await;
                // While draining, each HTTP/1 client is told to reconnect (to a replica that
                // is not going away) after this answer, instead of having its idle connection
                // closed under a request it may be sending.
                if draining.is_set()
                    && http1
                    && response.status() != StatusCode::SWITCHING_PROTOCOLS
                {
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, active)))
            }
        });
        let served = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        tokio::spawn(conn.drive(served));
    };
    accept_loop(&listener, &connections, stop, &mut on_conn).await;
    // Connections the kernel completed but we have not accepted would be reset by the close,
    // with their requests sent: take them in too (they are answered with `Connection: close`).
    while let Some(Ok((stream, client))) = listener.accept().now_or_never() {
        let _ = stream.set_nodelay(true);
        on_conn(stream, client);
    }
    drop(listener);
    let drain = lifecycle.timeout;
    tracing::info!(
        connections = connections.len(),
        "stopped accepting; closing idle connections, draining in-flight requests (at most {drain:?})"
    );
    connections.close_all();
    if tokio::time::timeout(drain, connections.closed())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    } else {
        tracing::info!("drained");
    }
}

/// HTTP/2 pings find peers that went away without closing; an HTTP/2 connection otherwise
/// counts as idle (and is closed) like an HTTP/1 one.
fn h2_keep_alive(builder: &mut auto::Builder<TokioExecutor>) {
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
}

async fn serve_admin(listener: TcpListener, admin: Arc<Admin>, connections: Arc<Connections>) {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    accept_loop(
        &listener,
        &connections,
        std::future::pending(),
        |stream, _| {
            let admin = admin.clone();
            let (io, conn) = connections.open(stream);
            let requests = conn.requests();
            let service = service_fn(move |req: Request<Incoming>| {
                let active = requests.start(req.version());
                let response = admin.respond(&req);
                async move { Ok::<_, Infallible>(response.map(|body| Tracked::new(body, active))) }
            });
            let served = builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned();
            tokio::spawn(conn.drive(served));
        },
    )
    .await;
}

async fn accept_loop(
    listener: &TcpListener,
    connections: &Connections,
    stop: impl Future<Output = ()>,
    mut on_conn: impl FnMut(TcpStream, SocketAddr),
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    on_conn(stream, client);
                }
                Err(e) => {
                    // Out of file descriptors and the like: free one held by an idle client
                    // and back off briefly instead of spinning.
                    let freed = connections.close_oldest_idle();
                    tracing::error!(error = %e, freed_idle = freed, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            () = &mut stop => return,
        }
    }
}

/// The limits of the public and the admin listener: `max_connections`, bounded so client
/// connections can use at most half the descriptors (the other half is for upstreams).
fn connection_limits(settings: &ProxySettings, fds: Option<u64>) -> (Limits, Limits) {
    let mut max = settings.max_connections;
    if let Some(fds) = fds {
        let share = usize::try_from(fds.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX);
        if share.max(1) < max {
            tracing::warn!(
                max_connections = max,
                descriptors = fds,
                "max_connections lowered to {share}: half the descriptor limit; raise the \
                 limit (ulimit -n, LimitNOFILE, ulimits) for more"
            );
            max = share.max(1);
        }
    }
    let public = Limits {
        first_byte: settings.first_byte_timeout,
        header_read: settings.header_read_timeout,
        idle: settings.client_idle_timeout,
        max,
    };
    let admin = Limits {
        max: max.min(ADMIN_MAX_CONNECTIONS),
        ..public
    };
    (public, admin)
}

/// Raises the soft descriptor limit to the hard one (a default soft limit of 1,024 is a few
/// hundred idle clients away from refusing everyone) and returns the limit in force.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        return None;
    };
    let Some(hard) = hard.filter(|hard| *hard > soft) else {
        return Some(soft);
    };
    let raised = rustix::process::Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!("descriptor limit raised from {soft} to {hard}");
            Some(hard)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the descriptor limit from {soft}");
            Some(soft)
        }
    }
}

async fn reload_on_sighup(reloader: Arc<Reloader>, hup: Option<Signal>) {
    let Some(mut hup) = hup else {
        tracing::warn!("cannot install a SIGHUP handler; file watching still reloads");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading");
        let reloader = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
    }
}

/// Serves until SIGTERM or SIGINT, then drains. For the binary.
pub async fn run(config: &Path) -> anyhow::Result<()> {
    // Installed before anything else so a signal during start-up is not the default action
    // (which for SIGTERM would skip the drain).
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let running = start(config).await?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutdown signal received");
    running.shutdown().await;
    Ok(())
}
