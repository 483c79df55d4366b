//! Listeners and lifecycle: bind, accept, serve HTTP/1.1 and h2c, reload on SIGHUP, drain on
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::drain::Draining;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::{self, Reloader};
use crate::shadow::Shadows;

/// A client that sends no complete header block within this is disconnected (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    shutdown: watch::Sender<bool>,
    public_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, drains in-flight requests (bounded by `drain_timeout`) and returns
    /// when the public listener is done.
    pub async fn shutdown(self) {
        self.draining.start();
        let _ = self.shutdown.send(true);
        if let Err(e) = self.public_task.await {
            tracing::error!(error = %e, "public listener task failed");
        }
        for task in self.tasks {
            task.abort();
        }
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
    let draining = Arc::new(Draining::default());
    let public = TcpListener::bind(settings.listen).await.with_context(|| {
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
    let (public_addr, admin_addr) = (public.local_addr()?, admin_listener.local_addr()?);
    let (shutdown, shutdown_rx) = watch::channel(false);

    let watch = reload::Watch::install(reloader.clone());
    let drain = settings.drain_timeout;
    let proxy = Proxy::new(live.clone(), metrics.clone(), shadows.clone());
    let admin = Arc::new(Admin {
        reloader: reloader.clone(),
        metrics: metrics.clone(),
        shadows,
        draining: draining.clone(),
    });
    let public_task = tokio::spawn(serve_public(public, proxy, shutdown_rx, drain));
    let tasks = vec![
        // The admin side outlives the drain: probes must hear 503 from /readyz, and metrics
        // stay scrapable, until the process ends.
        tokio::spawn(serve_admin(admin_listener, admin)),
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
    ];
    tracing::info!(
        public = %public_addr,
        admin = %admin_addr,
        revision = table.revision,
        routes = table.routes().len(),
        "strangler-proxy serving"
    );
    Ok(Running {
        public: public_addr,
        admin: admin_addr,
        live,
        reloader,
        draining,
        metrics,
        shutdown,
        public_task,
        tasks,
    })
}

async fn serve_public(
    listener: TcpListener,
    proxy: Proxy,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let stop = async move {
        // The only change ever sent is "stop"; a dropped sender means the same.
        let _ = shutdown.changed().await;
    };
    accept_loop(&listener, stop, |stream, client| {
        let proxy = proxy.for_client(client);
        // `handle` directly rather than through `tower::Service::call`: the same code, without
        // boxing a future per request.
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %client, "connection ended with an error");
            }
        });
    })
    .await;
    drop(listener);
    tracing::info!("draining in-flight requests (at most {drain:?})");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    } else {
        tracing::info!("drained");
    }
}

async fn serve_admin(listener: TcpListener, admin: Arc<Admin>) {
    accept_loop(&listener, std::future::pending(), |stream, _| {
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = admin.respond(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    })
    .await;
}

async fn accept_loop<F>(listener: &TcpListener, stop: impl Future<Output = ()>, mut on_conn: F)
where
    F: FnMut(tokio::net::TcpStream, SocketAddr),
{
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    on_conn(stream, client);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut stop => return,
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
