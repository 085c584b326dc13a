//! Output drift: what a model version answers, as distributions. Each output of each inference
//! becomes a few samples: the arg-max class of each row when the output looks like a classifier's
//! (its last dimension has 2 to [`MAX_CLASSES`] entries), else a handful of its values spread
//! evenly over the tensor. The first samples after the version started serving here are its
//! reference; the latest ones are the recent window; the two are compared with the population
//! stability index (PSI) over the classes, or over ten bins cut at the reference's deciles.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::nn::tensor::Tensor;

/// The most classes an output may have to be read as a classifier's.
pub const MAX_CLASSES: usize = 32;
/// Bins of a value output (cut at the reference's deciles).
const VALUE_BINS: usize = 10;
/// Rows (classifier) or values (other outputs) sampled from one output of one inference.
const SAMPLES_PER_OUTPUT: usize = 16;
/// Outputs of one model followed (the first ones, by position).
const MAX_OUTPUTS: usize = 8;
/// Smallest share a bin counts as in the PSI (empty bins would divide by zero).
const EPSILON: f64 = 1e-4;

/// How many samples make a reference and a recent window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftWindows {
    /// Samples in the reference (the first ones).
    pub reference: usize,
    /// Samples in the recent window (the latest ones); scored only once it is full.
    pub recent: usize,
}

/// Every model version's outputs on this node, by model and version.
#[derive(Default)]
pub struct Outputs {
    profiles: Mutex<HashMap<(String, String), Arc<OutputProfile>>>,
}

impl Outputs {
    /// The profile of `model` at `version`, created on first use.
    pub fn profile(&self, model: &str, version: &str, windows: DriftWindows) -> Arc<OutputProfile> {
        let mut map = self.profiles.lock().unwrap_or_else(|e| e.into_inner());
        let key = (model.to_string(), version.to_string());
        Arc::clone(
            map.entry(key)
                .or_insert_with(|| Arc::new(OutputProfile::new(windows))),
        )
    }

    /// Every profile: model, version, profile.
    pub fn all(&self) -> Vec<(String, String, Arc<OutputProfile>)> {
        let map = self.profiles.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|((m, v), p)| (m.clone(), v.clone(), Arc::clone(p)))
            .collect()
    }

    /// Forgets the profiles `keep` says no to (versions no longer loaded).
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut map = self.profiles.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(m, v), _| keep(m, v));
    }
}

/// One model version as the detector watches it: its computes' outcomes and latency
/// (`inferences`, judged by the same rules as a function version's requests), and its outputs.
pub struct OutputProfile {
    /// Computes: failed ones count as errors, and the time each took, queue wait included.
    pub inferences: crate::rollout::VersionStats,
    windows: DriftWindows,
    outputs: Mutex<Vec<(String, Series)>>,
}

/// One output's samples.
struct Series {
    /// Classes (the output's last dimension), or `None` for values.
    classes: Option<usize>,
    reference: Reference,
    /// The latest samples, as bins, oldest first; `counts` is their histogram.
    recent: VecDeque<u16>,
    counts: Vec<u64>,
}

enum Reference {
    /// Still taking the first samples (raw values, or class indices as values).
    Filling(Vec<f32>),
    /// Taken: the bin edges (values only) and the reference histogram.
    Ready { edges: Vec<f32>, counts: Vec<u64> },
}

/// The drift of one output: its PSI and the sample counts it is based on.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// The output's name.
    pub output: String,
    /// Population stability index of the recent window against the reference.
    pub psi: f64,
}

impl OutputProfile {
    fn new(windows: DriftWindows) -> Self {
        Self {
            inferences: crate::rollout::VersionStats::default(),
            windows,
            outputs: Mutex::new(Vec::new()),
        }
    }

    /// Takes the samples of one inference's outputs. Cheap: a few dozen floats per output.
    pub fn observe(&self, outputs: &[(String, Tensor)]) {
        let mut series = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
        for (name, tensor) in outputs.iter().take(MAX_OUTPUTS) {
            let Some(values) = Values::of(tensor) else {
                continue;
            };
            let classes = tensor
                .dims
                .last()
                .map(|d| *d as usize)
                .filter(|k| (2..=MAX_CLASSES).contains(k));
            let at = match series.iter().position(|(n, _)| n == name) {
                Some(at) => at,
                None => {
                    series.push((name.clone(), Series::new(classes)));
                    series.len() - 1
                }
            };
            let s = &mut series[at].1;
            // An output whose shape changes kind is followed as it first was.
            if s.classes != classes {
                continue;
            }
            for sample in samples(&values, classes) {
                s.push(sample, self.windows);
            }
        }
    }

    /// Each output's drift, for outputs whose reference is taken and recent window is full.
    pub fn drift(&self) -> Vec<Drift> {
        let series = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
        series
            .iter()
            .filter_map(|(name, s)| {
                let Reference::Ready { counts, .. } = &s.reference else {
                    return None;
                };
                (s.recent.len() >= self.windows.recent).then(|| Drift {
                    output: name.clone(),
                    psi: psi(counts, &s.counts),
                })
            })
            .collect()
    }
}

impl Series {
    fn new(classes: Option<usize>) -> Self {
        Self {
            classes,
            reference: Reference::Filling(Vec::new()),
            recent: VecDeque::new(),
            counts: vec![0; classes.unwrap_or(VALUE_BINS)],
        }
    }

    fn push(&mut self, sample: f32, windows: DriftWindows) {
        if let Reference::Filling(taken) = &mut self.reference {
            taken.push(sample);
            if taken.len() >= windows.reference {
                self.reference = reference(std::mem::take(taken), self.classes);
            }
        }
        // Bins exist once the reference does; until then the recent window is not kept.
        let Reference::Ready { edges, .. } = &self.reference else {
            return;
        };
        let bin = match self.classes {
            Some(_) => sample as usize,
            None => edges.partition_point(|e| *e < sample),
        };
        let bin = bin.min(self.counts.len() - 1);
        self.recent.push_back(bin as u16);
        self.counts[bin] += 1;
        while self.recent.len() > windows.recent {
            if let Some(old) = self.recent.pop_front() {
                self.counts[old as usize] -= 1;
            }
        }
    }
}

/// The reference histogram of the first samples; for values, bins cut at their deciles.
fn reference(mut taken: Vec<f32>, classes: Option<usize>) -> Reference {
    match classes {
        Some(k) => {
            let mut counts = vec![0; k];
            for c in &taken {
                counts[(*c as usize).min(k - 1)] += 1;
            }
            Reference::Ready {
                edges: Vec::new(),
                counts,
            }
        }
        None => {
            taken.sort_by(f32::total_cmp);
            let n = taken.len();
            let edges: Vec<f32> = (1..VALUE_BINS).map(|i| taken[i * n / VALUE_BINS]).collect();
            let mut counts = vec![0; VALUE_BINS];
            for v in &taken {
                counts[edges.partition_point(|e| e < v)] += 1;
            }
            Reference::Ready { edges, counts }
        }
    }
}

/// An output's elements read as f32 where they are (an output may be hundreds of megabytes:
/// only the sampled elements are decoded).
struct Values<'a> {
    data: &'a [u8],
    width: usize,
    decode: fn(&[u8]) -> f32,
}

impl<'a> Values<'a> {
    /// The elements of `t`, for the element types models answer with.
    fn of(t: &'a Tensor) -> Option<Self> {
        use crate::nn::bindings::wasi::nn::tensor::TensorType;
        let (width, decode): (usize, fn(&[u8]) -> f32) = match t.ty {
            TensorType::Fp32 => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            TensorType::Fp64 => (8, |b| {
                f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32
            }),
            TensorType::I64 => (8, |b| {
                i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32
            }),
            _ => return None,
        };
        Some(Self {
            data: &t.data,
            width,
            decode,
        })
    }

    fn len(&self) -> usize {
        self.data.len() / self.width
    }

    fn get(&self, i: usize) -> f32 {
        (self.decode)(&self.data[i * self.width..(i + 1) * self.width])
    }
}

/// The samples of one output: the arg-max of up to [`SAMPLES_PER_OUTPUT`] rows of a classifier,
/// else up to as many finite values spread evenly over the tensor.
fn samples(values: &Values, classes: Option<usize>) -> Vec<f32> {
    match classes {
        Some(k) => {
            let rows = values.len() / k;
            let step = rows.div_ceil(SAMPLES_PER_OUTPUT).max(1);
            (0..rows)
                .step_by(step)
                .filter_map(|r| {
                    let row: Vec<f32> = (r * k..(r + 1) * k).map(|i| values.get(i)).collect();
                    argmax(&row)
                })
                .map(|c| c as f32)
                .collect()
        }
        None => {
            let step = values.len().div_ceil(SAMPLES_PER_OUTPUT).max(1);
            (0..values.len())
                .step_by(step)
                .map(|i| values.get(i))
                .filter(|v| v.is_finite())
                .collect()
        }
    }
}

fn argmax(row: &[f32]) -> Option<usize> {
    row.iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
}

/// The population stability index of `actual` against `expected` (histograms over the same bins):
/// the sum over bins of (a - e) * ln(a / e), on shares floored at [`EPSILON`]. Under 0.1: no
/// shift; 0.1 to 0.25: a moderate one; over 0.25: a large one.
pub fn psi(expected: &[u64], actual: &[u64]) -> f64 {
    let (te, ta) = (
        expected.iter().sum::<u64>() as f64,
        actual.iter().sum::<u64>() as f64,
    );
    if te == 0.0 || ta == 0.0 {
        return 0.0;
    }
    expected
        .iter()
        .zip(actual)
        .map(|(e, a)| {
            let (e, a) = ((*e as f64 / te).max(EPSILON), (*a as f64 / ta).max(EPSILON));
            (a - e) * (a / e).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::bindings::wasi::nn::tensor::TensorType;

    fn tensor(dims: Vec<u32>, values: &[f32]) -> Tensor {
        Tensor {
            dims,
            ty: TensorType::Fp32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    const W: DriftWindows = DriftWindows {
        reference: 200,
        recent: 100,
    };

    #[test]
    fn psi_is_zero_for_the_same_shares_and_large_for_a_shift() {
        assert!(psi(&[50, 50], &[500, 500]).abs() < 1e-12);
        assert!(psi(&[90, 10], &[10, 90]) > 1.0);
        // One answer in a hundred never seen in the reference: no shift (under 0.1).
        assert!(psi(&[100, 0], &[99, 1]) < 0.1);
        assert_eq!(psi(&[], &[]), 0.0);
    }

    #[test]
    fn a_classifier_whose_answers_move_drifts_and_one_that_keeps_them_does_not() {
        let p = OutputProfile::new(W);
        let class = |c: usize| {
            let mut scores = [0.1f32; 4];
            scores[c] = 0.7;
            vec![("probs".to_string(), tensor(vec![1, 4], &scores))]
        };
        // Reference: classes 0 and 1, half each.
        for i in 0..300 {
            p.observe(&class(i % 2));
        }
        let d = p.drift();
        assert_eq!(d.len(), 1);
        assert!(d[0].psi < 0.05, "{d:?}");
        // Now mostly class 3.
        for i in 0..100 {
            p.observe(&class(if i % 10 == 0 { 0 } else { 3 }));
        }
        assert!(p.drift()[0].psi > 0.25, "{:?}", p.drift());
        // Back to normal: the recent window forgets.
        for i in 0..100 {
            p.observe(&class(i % 2));
        }
        assert!(p.drift()[0].psi < 0.05);
    }

    #[test]
    fn values_are_binned_at_the_reference_deciles() {
        let p = OutputProfile::new(W);
        let embedding = |shift: f32, seed: usize| {
            let v: Vec<f32> = (0..64)
                .map(|i| ((i * 37 + seed * 11) % 100) as f32 / 100.0 + shift)
                .collect();
            vec![("embedding".to_string(), tensor(vec![1, 64], &v))]
        };
        for s in 0..40 {
            p.observe(&embedding(0.0, s));
        }
        assert!(p.drift()[0].psi < 0.1, "{:?}", p.drift());
        for s in 0..10 {
            p.observe(&embedding(0.5, s));
        }
        assert!(p.drift()[0].psi > 0.25, "{:?}", p.drift());
        // Not enough samples yet: no score; hostile shapes and NaNs do not panic.
        let fresh = OutputProfile::new(W);
        fresh.observe(&[("x".into(), tensor(vec![0, 4], &[]))]);
        fresh.observe(&[("x".into(), tensor(vec![1, 4], &[f32::NAN; 4]))]);
        fresh.observe(&[("x".into(), tensor(vec![1, 3], &[1.0, 2.0, 3.0]))]);
        assert!(fresh.drift().is_empty());
    }
}
