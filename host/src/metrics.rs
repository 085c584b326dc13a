//! Prometheus metrics, kept in atomics and rendered as text exposition at `/metrics`.
//! Per-function series live in a [`FunctionMetrics`] that each deployed version holds an `Arc`
//! to, so the hot path never takes a lock.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// A fixed-bucket histogram.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// The upper bounds of the latency buckets, in milliseconds (the last is a catch-all).
pub fn bucket_bounds_ms() -> Vec<f64> {
    BUCKETS.iter().map(|b| b * 1000.0).collect()
}

impl Histogram {
    /// The sum of every observation, in whole microseconds.
    pub fn sum_micros(&self) -> u64 {
        self.sum_nanos.load(Ordering::Relaxed) / 1000
    }

    /// The count in each bucket (not cumulative).
    pub fn bucket_counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The `q` quantile of per-bucket `counts`, as its bucket's upper bound in milliseconds
    /// (0 without observations).
    pub fn quantile_ms(counts: &[u64], q: f64) -> f64 {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let want = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bound, c) in BUCKETS.iter().zip(counts) {
            seen += c;
            if seen >= want {
                return bound * 1000.0;
            }
        }
        BUCKETS[BUCKETS.len() - 1] * 1000.0
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Appends the histogram's series as `name` with `labels` (Prometheus text).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, c) in BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Series of one function, shared by all its versions.
#[derive(Default)]
pub struct FunctionMetrics {
    /// Requests by status code (index = status).
    by_status: Mutex<BTreeMap<u16, u64>>,
    /// End-to-end latency up to the response head.
    pub latency: Histogram,
    /// Requests being served now.
    pub in_flight: AtomicI64,
}

impl FunctionMetrics {
    /// Counts a finished request.
    pub fn count(&self, status: u16) {
        // A short, per-function lock: statuses are few and this runs once per request.
        *self
            .by_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_default() += 1;
    }
}

/// How an inference reached a model: a guest's wasi:nn compute, or a client of the Open
/// Inference Protocol (REST or gRPC). The `path` label of the model's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferencePath {
    /// A function's `wasi:nn` compute.
    WasiNn = 0,
    /// `/v2/models/.../infer` or gRPC `ModelInfer`.
    Oip = 1,
}

impl InferencePath {
    /// Both paths, in the order they are rendered.
    pub const ALL: [InferencePath; 2] = [InferencePath::WasiNn, InferencePath::Oip];

    /// The `path` label.
    pub fn label(self) -> &'static str {
        match self {
            InferencePath::WasiNn => "wasi-nn",
            InferencePath::Oip => "oip",
        }
    }
}

/// A counter per [`InferencePath`].
#[derive(Default)]
pub struct PerPath([AtomicU64; 2]);

impl PerPath {
    /// Adds one on `path`.
    pub fn add(&self, path: InferencePath) {
        self.0[path as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count on `path`.
    pub fn get(&self, path: InferencePath) -> u64 {
        self.0[path as usize].load(Ordering::Relaxed)
    }

    /// The count on both paths.
    pub fn total(&self) -> u64 {
        InferencePath::ALL.iter().map(|p| self.get(*p)).sum()
    }
}

/// Series of one model.
#[derive(Default)]
pub struct ModelMetrics {
    /// Successful inferences, by path.
    pub inferences: PerPath,
    /// Failed computes (bad inputs, runtime errors, timeouts), by path.
    pub errors: PerPath,
    /// Time ONNX Runtime spent in one inference.
    pub latency: Histogram,
    /// Times the model asked for the GPU and was put on the CPU.
    pub gpu_fallbacks: AtomicU64,
    /// Time a compute waited for a free session.
    pub session_wait: Histogram,
    /// Computes that ran stacked with others in one inference (`max_batch`).
    pub batched: AtomicU64,
}

/// Series of one tenant (on a node with tenants).
#[derive(Default)]
pub struct TenantMetrics {
    /// Requests refused for `requests_per_second`.
    pub rate_limited: AtomicU64,
    /// Requests refused for `max_concurrency`.
    pub busy: AtomicU64,
    /// wasi:nn computes waiting now for one of the tenant's `max_inferences` permits.
    pub inferences_waiting: AtomicU64,
}

/// Picks one series out of a model's metrics, for rendering.
type ModelField<T> = fn(&ModelMetrics) -> &T;

/// All metrics of the node.
#[derive(Default)]
pub struct Metrics {
    functions: Mutex<BTreeMap<String, Arc<FunctionMetrics>>>,
    models: Mutex<BTreeMap<String, Arc<ModelMetrics>>>,
    tenants: Mutex<BTreeMap<String, Arc<TenantMetrics>>>,
    /// Time to create an instance from a pre-instantiated component.
    pub instantiation: Histogram,
    /// Distinct models in memory (by digest and target), however many names share them.
    pub models_loaded: AtomicU64,
    /// Rollout steps and decisions.
    pub rollouts: crate::rollout::RolloutMetrics,
    /// Every model version's outputs, for drift.
    pub outputs: crate::anomaly::Outputs,
    /// Anomalies raised and cleared.
    pub anomalies: crate::anomaly::Detector,
}

impl Metrics {
    /// The node's metrics, with anomalies detected as `anomalies` says.
    pub fn new(anomalies: crate::anomaly::AnomalyConfig) -> Self {
        Self {
            anomalies: crate::anomaly::Detector::new(anomalies),
            ..Self::default()
        }
    }

    /// The series of `name`, created on first use.
    pub fn function(&self, name: &str) -> Arc<FunctionMetrics> {
        let mut map = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(name.to_string()).or_default())
    }

    /// The series of model `name`, created on first use.
    pub fn model(&self, name: &str) -> Arc<ModelMetrics> {
        let mut map = self.models.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(name.to_string()).or_default())
    }

    /// The series of tenant `name`, created on first use.
    pub fn tenant(&self, name: &str) -> Arc<TenantMetrics> {
        let mut map = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(name.to_string()).or_default())
    }

    /// Every model's numbers now, for the dashboard; `visible` says which names the caller
    /// may see.
    pub fn model_overviews(
        &self,
        visible: impl Fn(&str) -> bool,
    ) -> Vec<crate::dashboard::ModelOverview> {
        let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        (models.iter())
            .filter(|(name, _)| visible(name) && name.as_str() != crate::nn::GUEST_LOADED)
            .map(|(name, m)| crate::dashboard::ModelOverview {
                name: name.clone(),
                inferences: m.inferences.total(),
                errors: m.errors.total(),
                inference_buckets: m.latency.bucket_counts(),
                queue_buckets: m.session_wait.bucket_counts(),
            })
            .collect()
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let functions = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        out.push_str("# HELP tensorlet_requests_total Function invocations by final status.\n");
        out.push_str("# TYPE tensorlet_requests_total counter\n");
        for (name, m) in &functions {
            for (status, n) in m.by_status.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = writeln!(
                    out,
                    "tensorlet_requests_total{{function=\"{name}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP tensorlet_request_duration_seconds Time from request to response head.\n",
        );
        out.push_str("# TYPE tensorlet_request_duration_seconds histogram\n");
        for (name, m) in &functions {
            m.latency.render(
                &mut out,
                "tensorlet_request_duration_seconds",
                &format!("function=\"{name}\""),
            );
        }
        out.push_str("# HELP tensorlet_requests_in_flight Function invocations running now.\n");
        out.push_str("# TYPE tensorlet_requests_in_flight gauge\n");
        for (name, m) in &functions {
            let _ = writeln!(
                out,
                "tensorlet_requests_in_flight{{function=\"{name}\"}} {}",
                m.in_flight.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP tensorlet_instantiation_duration_seconds Time to create a fresh instance.\n",
        );
        out.push_str("# TYPE tensorlet_instantiation_duration_seconds histogram\n");
        self.instantiation
            .render(&mut out, "tensorlet_instantiation_duration_seconds", "");
        out.push_str("# HELP tensorlet_models_loaded Distinct models in memory (one per digest and target).\n");
        out.push_str("# TYPE tensorlet_models_loaded gauge\n");
        let _ = writeln!(
            out,
            "tensorlet_models_loaded {}",
            self.models_loaded.load(Ordering::Relaxed)
        );
        self.render_models(&mut out);
        self.render_tenants(&mut out);
        self.rollouts.render(&mut out);
        self.anomalies.render(&mut out);
        out
    }

    fn render_tenants(&self, out: &mut String) {
        let tenants = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if tenants.is_empty() {
            return;
        }
        out.push_str(
            "# HELP tensorlet_tenant_rejected_total Requests refused by a tenant quota.\n",
        );
        out.push_str("# TYPE tensorlet_tenant_rejected_total counter\n");
        for (name, t) in &tenants {
            for (reason, n) in [("rate_limited", &t.rate_limited), ("busy", &t.busy)] {
                let _ = writeln!(
                    out,
                    "tensorlet_tenant_rejected_total{{tenant=\"{name}\",reason=\"{reason}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP tensorlet_tenant_inferences_waiting wasi:nn computes waiting for the tenant's max_inferences.\n");
        out.push_str("# TYPE tensorlet_tenant_inferences_waiting gauge\n");
        for (name, t) in &tenants {
            let _ = writeln!(
                out,
                "tensorlet_tenant_inferences_waiting{{tenant=\"{name}\"}} {}",
                t.inferences_waiting.load(Ordering::Relaxed)
            );
        }
    }

    fn render_models(&self, out: &mut String) {
        let models = self
            .models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let per_path: [(&str, &str, ModelField<PerPath>); 2] = [
            (
                "tensorlet_model_inferences_total",
                "Successful inferences by model and path (wasi-nn: a function's compute; oip: the inference protocol).",
                |m| &m.inferences,
            ),
            (
                "tensorlet_model_errors_total",
                "Failed inferences by model and path (bad inputs, runtime errors, timeouts).",
                |m| &m.errors,
            ),
        ];
        for (metric, help, value) in per_path {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (name, m) in &models {
                for path in InferencePath::ALL {
                    let _ = writeln!(
                        out,
                        "{metric}{{model=\"{name}\",path=\"{}\"}} {}",
                        path.label(),
                        value(m).get(path)
                    );
                }
            }
        }
        let counters: [(&str, &str, ModelField<AtomicU64>); 2] = [
            (
                "tensorlet_model_gpu_fallbacks_total",
                "Models that asked for the GPU and run on the CPU (gpu_fallback = cpu).",
                |m| &m.gpu_fallbacks,
            ),
            (
                "tensorlet_model_batched_total",
                "Inferences (of either path) that ran stacked with others in one inference (max_batch).",
                |m| &m.batched,
            ),
        ];
        for (metric, help, value) in counters {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (name, m) in &models {
                let _ = writeln!(
                    out,
                    "{metric}{{model=\"{name}\"}} {}",
                    value(m).load(Ordering::Relaxed)
                );
            }
        }
        let histograms: [(&str, &str, ModelField<Histogram>); 2] = [
            (
                "tensorlet_model_inference_duration_seconds",
                "Time ONNX Runtime spent in one inference.",
                |m| &m.latency,
            ),
            (
                "tensorlet_model_session_wait_seconds",
                "Time a compute waited for a free session.",
                |m| &m.session_wait,
            ),
        ];
        for (metric, help, value) in histograms {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} histogram");
            for (name, m) in &models {
                value(m).render(out, metric, &format!("model=\"{name}\""));
            }
        }
        // The same two times as Triton's cumulative counters, for dashboards built on
        // `nv_inference_queue_duration_us` and `nv_inference_compute_infer_duration_us`.
        let triton: [(&str, &str, ModelField<Histogram>); 2] = [
            (
                "tensorlet_model_queue_duration_us",
                "Cumulative time inferences waited for a free session, in microseconds (Triton's queue duration).",
                |m| &m.session_wait,
            ),
            (
                "tensorlet_model_compute_infer_duration_us",
                "Cumulative time ONNX Runtime spent in inferences, in microseconds (Triton's compute duration).",
                |m| &m.latency,
            ),
        ];
        for (metric, help, value) in triton {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (name, m) in &models {
                let _ = writeln!(
                    out,
                    "{metric}{{model=\"{name}\"}} {}",
                    value(m).sum_micros()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        let f = m.function("echo");
        f.count(200);
        f.count(200);
        f.latency.observe(Duration::from_millis(2));
        m.instantiation.observe(Duration::from_micros(50));
        let text = m.render();
        assert!(text.contains("tensorlet_requests_total{function=\"echo\",status=\"200\"} 2"));
        assert!(text.contains(
            "tensorlet_request_duration_seconds_bucket{function=\"echo\",le=\"0.0025\"} 1"
        ));
        assert!(text.contains("tensorlet_instantiation_duration_seconds_count 1"));
        assert!(text.contains("tensorlet_requests_in_flight{function=\"echo\"} 0"));
    }
}
