//! `tensorlet serve`: loads the node's parts, opens its data directory and, in fleet mode,
//! connects it to the engine and the registry, then serves until SIGINT or SIGTERM.

use std::sync::Arc;

use anyhow::Context;

use super::{ServeArgs, background};
use crate::config::Config;
use crate::fleet::blobs::{FleetBlobs, OciRegistry};
use crate::fleet::engine::{Engine, EngineState};
use crate::fleet::status::NodeState;
use crate::fleet::{Fleet, FleetConfig};
use crate::metrics::Metrics;
use crate::nn::{ModelSet, NnNode, Onnx};
use crate::registry::{Registry, Seams};
use crate::runtime::Runtime;
use crate::service::HttpService;
use crate::store::DataDir;

/// A node's fleet parts, on a runtime of their own (the serving threads each run their own
/// single-threaded runtime; the main one only waits for signals).
struct FleetNode {
    fleet: Arc<Fleet>,
    blobs: Arc<FleetBlobs>,
    engine: Arc<Engine>,
    rt: tokio::runtime::Runtime,
}

impl FleetNode {
    async fn start(
        config: &Arc<Config>,
        fleet: &FleetConfig,
        local: Arc<DataDir>,
    ) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tensorlet-fleet")
            .enable_all()
            .build()?;
        let engine = rt
            .spawn(Engine::start(Arc::clone(config), fleet.clone()))
            .await??;
        let state = Arc::new(NodeState::default());
        let max_blob = config.max_component_size.max(config.max_model_size);
        let registry = OciRegistry::new(
            &fleet.registry,
            &fleet.repository,
            fleet.registry_auth.clone(),
            max_blob,
        );
        let registry = Arc::new(registry);
        let blobs = Arc::new(FleetBlobs {
            local: Arc::clone(&local),
            registry: Arc::clone(&registry),
            state: Arc::clone(&state),
            rt: rt.handle().clone(),
        });
        let fleet = Arc::new(Fleet {
            engine: Arc::clone(&engine),
            state,
            local,
            registry,
        });
        Ok(Self {
            fleet,
            blobs,
            engine,
            rt,
        })
    }

    fn seams(&self) -> Seams {
        Seams {
            local: Arc::clone(&self.fleet.local),
            desired: Arc::new(EngineState(Arc::clone(&self.engine))),
            blobs: Arc::clone(&self.blobs) as _,
            mirror: true,
            engine: Some(self.engine.id()),
        }
    }
}

/// The node's config: the file, with the command line's flags winning.
pub(super) fn load_config(args: ServeArgs) -> anyhow::Result<Config> {
    Config::load(args.config.as_deref(), args.listen, args.data_dir)
}

pub(super) async fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new(config.anomalies.clone()));
    let onnx = match &config.onnxruntime {
        Some(path) => match Onnx::load(path, config.gpu_fallback, config.model_memory) {
            Ok(onnx) => {
                tracing::info!(library = %path.display(), "ONNX Runtime loaded; wasi:nn is available");
                Some(Arc::new(onnx))
            }
            Err(e) => {
                tracing::warn!(
                    "{e:#}; wasi:nn calls will fail, functions without it work as usual"
                );
                None
            }
        },
        None => {
            tracing::warn!(
                "no ONNX Runtime found (set ORT_DYLIB_PATH or `onnxruntime` in the config, or run \
                 scripts/fetch-onnxruntime.sh); wasi:nn calls will fail, functions without it work as usual"
            );
            None
        }
    };
    let nn = Arc::new(NnNode {
        onnx,
        models: ModelSet::default(),
        guest_load_limit: config.guest_model_load,
        guest_load_metrics: metrics.model(crate::nn::GUEST_LOADED),
    });
    let runtime = Arc::new(Runtime::new(&config, Arc::clone(&nn))?);
    let opening = || format!("opening the data directory {}", config.data_dir.display());
    let local = Arc::new(DataDir::open(&config.data_dir).with_context(opening)?);
    let fleet = match &config.fleet {
        Some(fleet) => Some(FleetNode::start(&config, fleet, Arc::clone(&local)).await?),
        None => None,
    };
    let seams = match &fleet {
        Some(f) => f.seams(),
        None => Seams::local(Arc::clone(&local)),
    };
    let registry = Arc::new(
        Registry::open_with(
            Arc::clone(&config),
            Arc::clone(&runtime),
            Arc::clone(&metrics),
            nn,
            seams,
        )
        .with_context(opening)?,
    );
    let logs = Arc::clone(registry.log_store());
    tracing::info!(
        functions = registry.len(),
        pooling = runtime.pooling(),
        data_dir = %config.data_dir.display(),
        "node ready"
    );
    let operator = crate::auth::operator_token(
        config.operator_token.as_deref(),
        config.tenants,
        &config.data_dir,
    )?;
    if operator.is_none() && !config.listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {} without tokens: anyone who can reach it could deploy code. \
             Set `tenants = true` or `operator_token` in the config, or listen on 127.0.0.1",
            config.listen
        );
    }
    let mut audit = crate::audit::Audit::open(&config.data_dir, config.audit_log_max)
        .with_context(|| format!("opening the audit log in {}", config.data_dir.display()))?;
    if let Some(f) = &fleet {
        audit = audit.with_fleet(Arc::clone(&f.engine));
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let listeners = crate::server::bind(config.listen, workers)
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listeners[0].local_addr()?;
    // Functions call each other (`{name}.fn.internal`) through this listener.
    runtime.outbound().serve_locally(addr);
    let registry_for_rollouts = Arc::clone(&registry);
    let audit_for_rollouts = audit.clone();
    let metrics_for_anomalies = Arc::clone(&metrics);
    let mut node = HttpService::new(
        Arc::clone(&config),
        Arc::clone(&registry),
        runtime,
        metrics,
        operator,
        audit,
    );
    // Traces export from this runtime's thread, off the serving threads.
    let tracer = match &config.otlp_endpoint {
        Some(endpoint) => {
            // Which node a span comes from: its fleet id, else the address it serves.
            let instance = fleet
                .as_ref()
                .map_or_else(|| addr.to_string(), |f| f.fleet.node_id().to_string());
            let tracer =
                crate::traces::Tracer::start(endpoint, &instance, config.otlp_sample_ratio)
                    .context("starting the OTLP trace exporter")?;
            tracing::info!(endpoint, "exporting traces over OTLP/HTTP");
            Some(Arc::new(tracer))
        }
        None => None,
    };
    if let Some(tracer) = &tracer {
        node = node.with_traces(Arc::clone(tracer));
    }
    if let Some(f) = &fleet {
        // Serving starts now, from the data directory; the syncer catches up in the background.
        let _in_fleet_runtime = f.rt.enter();
        crate::fleet::syncer::start(Arc::clone(&f.fleet), registry, Arc::clone(&config));
        node = node.with_fleet(Arc::clone(&f.fleet));
        tracing::info!(
            node_id = f.fleet.node_id(),
            "fleet mode: syncing with the engine"
        );
    }
    let node = Arc::new(node);
    let fleet_for_rollouts = fleet.as_ref().map(|f| Arc::clone(&f.fleet));
    background::rollouts(
        registry_for_rollouts.clone(),
        fleet_for_rollouts,
        audit_for_rollouts.clone(),
    );
    background::anomalies(
        registry_for_rollouts,
        metrics_for_anomalies,
        audit_for_rollouts,
        config.alert_webhook.as_deref(),
    )?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The inference protocol's gRPC edge, on this runtime (inference runs on the models' own
    // session threads either way).
    let grpc = match config.grpc_listen {
        Some(at) => {
            let listener = crate::oip::grpc::bind(at)
                .await
                .with_context(|| format!("binding grpc_listen {at}"))?;
            let bound = listener.local_addr()?;
            let serving = tokio::spawn(crate::oip::grpc::serve(
                listener,
                node.inference(),
                stopped.clone(),
                config.shutdown_grace,
            ));
            Some((bound, serving))
        }
        None => None,
    };
    let workers = crate::server::run_workers(
        listeners,
        node,
        stopped,
        config.shutdown_grace,
        config.max_connections,
        config.header_read_timeout,
    )?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if let Some((bound, _)) = &grpc {
            writeln!(out, "inference grpc listening on {bound}")?;
        }
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    shutdown_signal().await;
    // `logs --follow` answers never end by themselves: end them, or they hold up the drain.
    logs.close_followers();
    let _ = stop.send(true);
    tokio::task::spawn_blocking(move || {
        for worker in workers {
            let _ = worker.join();
        }
    })
    .await?;
    if let Some((_, serving)) = grpc {
        let _ = serving.await;
    }
    if let Some(tracer) = tracer {
        // Best effort: the spans of the last requests, if the collector takes them promptly.
        tracer.flush(std::time::Duration::from_secs(2)).await;
    }
    // The last requests' output is on disk before the process ends.
    logs.settled().await;
    if let Some(f) = fleet {
        // Dropping a runtime inside another's context would panic.
        f.rt.shutdown_background();
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
