//! A model's inference queue and the threads that serve it, one per session.
//!
//! A session stays on one thread (its caches stay warm). With `max_batch` > 1 a thread that
//! becomes free takes the oldest job plus every queued job that can join it (same input names,
//! types and dimensions apart from the first), up to `max_batch` rows, concatenates them along
//! the first dimension, runs them once and splits the outputs back. Nothing waits to fill a batch:
//! under light load every job runs alone as soon as a session is free, and batches form only from
//! jobs that would have queued anyway (dynamic batching without a delay).
//!
//! A GPU session pads every run to `max_batch` rows (repeating the last row, dropping its
//! outputs): ONNX Runtime's CUDA convolutions redo their cuDNN set-up whenever the input shape
//! differs from the previous run's, about 100 ms for resnet50 on an H200 (10 runs/s when batches
//! of 1 and 2 alternate), so runs of one fixed shape are far faster than right-sized ones.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::bindings::wasi::nn::errors::ErrorCode;
use super::checked::{CheckedInputs, Named};
use super::tensor::Tensor;
use super::{Failure, NnResult};
use crate::metrics::ModelMetrics;

/// One inference to run, with where to send its result.
pub struct Job {
    /// Checked inputs, in the model's declared order.
    pub inputs: CheckedInputs,
    /// When it was queued (for the session-wait metric).
    pub queued: Instant,
    /// The series of the model name it came through.
    pub metrics: Arc<ModelMetrics>,
    /// Where the result goes; closed when the request stopped waiting.
    pub reply: tokio::sync::oneshot::Sender<Done>,
}

/// A job's result, and when its inference ran (the request's trace tells the wait for a session
/// from the inference).
pub struct Done {
    /// The outputs, or why there are none.
    pub result: NnResult<Named>,
    /// When a session took the job.
    pub started: Instant,
    /// When the inference ended.
    pub finished: Instant,
}

impl Job {
    /// The rows this job adds to a batch, `None` when it cannot join one.
    fn rows(&self) -> Option<u32> {
        self.inputs.rows()
    }

    /// Whether `other` can be stacked under this job.
    fn stacks_with(&self, other: &Job) -> bool {
        self.inputs.stacks_with(&other.inputs)
    }
}

/// Jobs waiting for a session. Closed when the model is dropped; its threads then finish what
/// is queued and end.
#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    closed: bool,
}

impl Queue {
    /// Queues a job for the next free session.
    pub fn push(&self, job: Job) -> NnResult<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.closed {
            return Err(Failure::new(
                ErrorCode::RuntimeError,
                "the model is being unloaded",
            ));
        }
        state.jobs.push_back(job);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Lets the threads end once the queue is empty.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.ready.notify_all();
    }

    /// The next jobs to run together (at least one), or `None` once closed and empty. Jobs
    /// whose request stopped waiting are dropped here, before they cost an inference.
    fn take(&self, max_batch: u32) -> Option<Vec<Job>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            state.jobs.retain(|j| !j.reply.is_closed());
            if let Some(first) = state.jobs.pop_front() {
                let mut batch = vec![first];
                let Some(mut rows) = batch[0].rows().filter(|_| max_batch > 1) else {
                    return Some(batch);
                };
                let mut i = 0;
                while i < state.jobs.len() && rows < max_batch {
                    let job = &state.jobs[i];
                    match job.rows() {
                        Some(r) if rows + r <= max_batch && batch[0].stacks_with(job) => {
                            rows += r;
                            batch.extend(state.jobs.remove(i));
                        }
                        _ => i += 1,
                    }
                }
                return Some(batch);
            }
            if state.closed {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// How a session's thread batches: up to `max_batch` rows per run, and with `pad` every
/// batchable run grown to exactly `max_batch` rows (GPU sessions; see the module's comment).
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// The most rows one run may take (1: no batching).
    pub max_batch: u32,
    /// Whether runs are padded to `max_batch` rows.
    pub pad: bool,
}

/// A session's thread: runs jobs from `queue` until it closes.
pub fn serve(
    queue: &Queue,
    batching: Batching,
    mut run: impl FnMut(CheckedInputs) -> NnResult<Named>,
) {
    let max_batch = batching.max_batch;
    let pad = batching.pad && max_batch > 1;
    while let Some(jobs) = queue.take(max_batch) {
        let started = Instant::now();
        for job in &jobs {
            job.metrics.session_wait.observe(started - job.queued);
        }
        // A panic inside ONNX Runtime's bindings must not take the session's thread with it.
        let mut guarded = |inputs: CheckedInputs| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(inputs))).unwrap_or_else(
                |_| {
                    Err(Failure::new(
                        ErrorCode::RuntimeError,
                        "inference failed (the runtime panicked)",
                    ))
                },
            )
        };
        let rows: Vec<u32> = jobs.iter().map(|j| j.rows().unwrap_or(0)).collect();
        let padding = match jobs[0].rows() {
            Some(_) if pad => max_batch.saturating_sub(rows.iter().sum()),
            _ => 0,
        };
        if jobs.len() == 1 && padding == 0 {
            let job = jobs.into_iter().next().expect("one job");
            let result = guarded(job.inputs);
            let finished = Instant::now();
            job.metrics.latency.observe(finished - started);
            let _ = job.reply.send(Done {
                result,
                started,
                finished,
            });
            continue;
        }
        let (batch, replies) = stack(jobs);
        let result = batch
            .map(|mut b| {
                if padding > 0 {
                    b.pad_to(max_batch);
                }
                b
            })
            .and_then(&mut guarded);
        let stacked = replies.len() > 1;
        let mut all_rows = rows;
        if padding > 0 {
            all_rows.push(padding);
        }
        let finished = Instant::now();
        let elapsed = finished - started;
        let done = |result| Done {
            result,
            started,
            finished,
        };
        // `zip` leaves the padding's part (the last) behind.
        match result.and_then(|outputs| unstack(outputs, &all_rows)) {
            Ok(parts) => {
                for ((metrics, reply), part) in replies.into_iter().zip(parts) {
                    metrics.latency.observe(elapsed);
                    if stacked {
                        metrics.batched.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = reply.send(done(Ok(part)));
                }
            }
            Err(e) => {
                for (metrics, reply) in replies {
                    metrics.latency.observe(elapsed);
                    let _ = reply.send(done(Err(e.clone())));
                }
            }
        }
    }
}

/// Starts a thread per runner (one per session), each serving `queue`, through `spawn` (a name
/// and the thread's work). If one cannot start, the queue is closed, so the threads already
/// started end instead of waiting for jobs that never come, and the error is returned.
pub fn start_threads<R>(
    queue: &Arc<Queue>,
    runners: impl IntoIterator<Item = R>,
    batching: Batching,
    spawn: impl Fn(String, Box<dyn FnOnce() + Send>) -> std::io::Result<()>,
) -> std::io::Result<()>
where
    R: FnMut(CheckedInputs) -> NnResult<Named> + Send + 'static,
{
    for (i, run) in runners.into_iter().enumerate() {
        let q = Arc::clone(queue);
        let started = spawn(
            format!("tensorlet-nn-{i}"),
            Box::new(move || serve(&q, batching, run)),
        );
        if let Err(e) = started {
            queue.close();
            return Err(e);
        }
    }
    Ok(())
}

type Reply = (Arc<ModelMetrics>, tokio::sync::oneshot::Sender<Done>);

/// Concatenates the jobs' inputs along the first dimension (`take` only batches jobs that stack).
fn stack(jobs: Vec<Job>) -> (NnResult<CheckedInputs>, Vec<Reply>) {
    let mut batch: Option<NnResult<CheckedInputs>> = None;
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        batch = Some(match batch {
            None => Ok(job.inputs),
            Some(Ok(mut b)) => b.stack(job.inputs).map(|()| b),
            Some(Err(e)) => Err(e),
        });
        replies.push((job.metrics, job.reply));
    }
    let batch =
        batch.unwrap_or_else(|| Err(Failure::new(ErrorCode::RuntimeError, "an empty batch")));
    (batch, replies)
}

/// Splits batched outputs back into each job's rows. Every output must have the batch as its
/// first dimension; a model that does not cannot be batched (checked when it is added, and
/// again here).
fn unstack(outputs: Named, rows: &[u32]) -> NnResult<Vec<Named>> {
    let total: u32 = rows.iter().sum();
    let mut parts: Vec<Named> = rows.iter().map(|_| Vec::new()).collect();
    for (name, t) in outputs {
        if t.dims.first() != Some(&total) || t.data.len() % total.max(1) as usize != 0 {
            return Err(Failure::new(
                ErrorCode::RuntimeError,
                format!(
                    "output `{name}` has dimensions {:?}, not the batch of {total} first: add the model \
                     without --max-batch",
                    t.dims
                ),
            ));
        }
        let row_bytes = t.data.len() / total.max(1) as usize;
        let mut offset = 0;
        for (part, &r) in parts.iter_mut().zip(rows) {
            let len = r as usize * row_bytes;
            let mut dims = t.dims.clone();
            dims[0] = r;
            part.push((
                name.clone(),
                Tensor {
                    dims,
                    ty: t.ty,
                    data: t.data[offset..offset + len].to_vec(),
                },
            ));
            offset += len;
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::bindings::wasi::nn::tensor::TensorType;

    fn f32s(dims: &[u32], values: &[f32]) -> Tensor {
        Tensor {
            dims: dims.to_vec(),
            ty: TensorType::Fp32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn job(dims: &[u32], values: &[f32]) -> (Job, tokio::sync::oneshot::Receiver<Done>) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let slot = crate::nn::onnx::Slot {
            name: "x".into(),
            ty: Some(TensorType::Fp32),
            dims: vec![-1, -1],
        };
        let inputs = vec![("x".to_string(), f32s(dims, values))];
        let job = Job {
            inputs: crate::nn::checked::check("test", &[slot], inputs).unwrap(),
            queued: Instant::now(),
            metrics: Arc::default(),
            reply,
        };
        (job, rx)
    }

    #[test]
    fn batches_only_jobs_that_stack_and_fit() {
        let queue = Queue::default();
        let mut receivers = Vec::new();
        for (dims, values) in [
            (&[1, 2][..], &[1.0, 2.0][..]),
            (&[1, 3], &[0.0; 3]),
            (&[2, 2], &[3.0, 4.0, 5.0, 6.0]),
            (&[1, 2], &[7.0, 8.0]),
        ] {
            let (j, rx) = job(dims, values);
            queue.push(j).unwrap();
            receivers.push(rx);
        }
        // Up to 3 rows: the first [1,2] and the [2,2]; not the [1,3] (other shape), not the
        // last [1,2] (no room).
        let batch = queue.take(3).unwrap();
        assert_eq!(batch.len(), 2);
        let (stacked, _) = stack(batch);
        let stacked = stacked.unwrap().tensors().to_vec();
        assert_eq!(stacked[0].1.dims, vec![3, 2]);
        assert_eq!(stacked[0].1, f32s(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let parts = unstack(stacked, &[1, 2]).unwrap();
        assert_eq!(parts[0][0].1, f32s(&[1, 2], &[1.0, 2.0]));
        assert_eq!(parts[1][0].1, f32s(&[2, 2], &[3.0, 4.0, 5.0, 6.0]));
        // Without batching, one at a time, oldest first; a job nobody waits for is skipped.
        drop(receivers.remove(1));
        let next = queue.take(1).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].inputs.tensors()[0].1.dims, vec![1, 2]);
        queue.close();
        assert!(queue.take(4).is_none());
    }

    #[test]
    fn a_thread_that_cannot_start_ends_the_ones_already_started() {
        let queue = Arc::new(Queue::default());
        let (ended, threads_ended) = std::sync::mpsc::channel();
        let runners = (0..3).map(|_| |_: CheckedInputs| -> NnResult<Named> { Ok(Vec::new()) });
        let started = std::sync::atomic::AtomicUsize::new(0);
        let batching = Batching {
            max_batch: 1,
            pad: false,
        };
        let result = start_threads(&queue, runners, batching, |name, serve| {
            if started.fetch_add(1, Ordering::Relaxed) == 1 {
                return Err(std::io::Error::other("no more threads"));
            }
            let ended = ended.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    serve();
                    let _ = ended.send(());
                })
                .map(drop)
        });
        assert!(result.is_err());
        // The one thread that started ends (bounded wait: a parked thread would never send).
        threads_ended
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the started thread ended");
        assert_eq!(
            started.load(Ordering::Relaxed),
            2,
            "no thread started after the failure"
        );
    }

    #[test]
    fn padded_runs_have_max_batch_rows_and_answer_only_the_real_ones() {
        let batching = Batching {
            max_batch: 4,
            pad: true,
        };
        let answer = |rx: tokio::sync::oneshot::Receiver<Done>| {
            rx.blocking_recv().unwrap().result.unwrap()[0].1.clone()
        };
        // Two jobs that stack (3 rows), then one alone: both runs get 4 rows, the last repeated.
        for (jobs, run) in [
            (
                vec![
                    (&[1, 2][..], &[1.0, 2.0][..]),
                    (&[2, 2], &[3.0, 4.0, 5.0, 6.0]),
                ],
                f32s(&[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 5.0, 6.0]),
            ),
            (
                vec![(&[1, 2][..], &[9.0, 10.0][..])],
                f32s(&[4, 2], &[9.0, 10.0, 9.0, 10.0, 9.0, 10.0, 9.0, 10.0]),
            ),
        ] {
            let queue = Queue::default();
            let mut receivers = Vec::new();
            for (dims, values) in &jobs {
                let (j, rx) = job(dims, values);
                queue.push(j).unwrap();
                receivers.push(rx);
            }
            queue.close();
            let mut seen = Vec::new();
            serve(&queue, batching, |inputs: CheckedInputs| {
                let x = inputs.tensors()[0].1.clone();
                seen.push(x.clone());
                Ok(vec![("y".to_string(), x)])
            });
            assert_eq!(seen, vec![run]);
            for ((dims, values), rx) in jobs.iter().zip(receivers) {
                assert_eq!(
                    answer(rx),
                    f32s(dims, values),
                    "each job gets its own rows back"
                );
            }
        }
    }

    #[test]
    fn outputs_without_the_batch_first_are_an_error() {
        let outputs = vec![("y".to_string(), f32s(&[2], &[1.0, 2.0]))];
        assert!(unstack(outputs, &[1, 2]).is_err());
    }
}
