//! `native-ort ORT_LIB MODEL KIND INPUT SECONDS`: runs MODEL on the same input tensors the
//! example's handler would build, single-threaded (1 intra-op thread, no spinning, like the
//! node's sessions), for at least SECONDS (and at least 20 times), and prints
//! `p50_ms p99_ms per_s runs` for one request's worth of inference:
//!
//! - `embed INPUT`: INPUT holds token ids (one line); one run of `input_ids`, `attention_mask`
//!   (all 1), `token_type_ids` (all 0), i64[1,N].
//! - `vad INPUT`: INPUT is raw f32le samples; one request = every 512-sample frame in order
//!   (64 samples of context, the state carried), as detect-speech does.
//! - `classify INPUT`: INPUT is raw f32le x, f32[1,3,224,224].
use ort::session::Session;
use ort::value::Tensor;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn f32s(path: &str) -> Res<Vec<f32>> {
    let b = std::fs::read(path)?;
    Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
}

fn main() -> Res<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        return Err("usage: native-ort ORT_LIB MODEL embed|vad|classify INPUT SECONDS".into());
    }
    let env = ort::init_from(&a[1])?.build()?;
    let mut s = Session::builder(&env)?
        .with_intra_threads(1)?
        .with_intra_op_spinning(false)?
        .commit_from_file(&a[2])?;
    let secs: f64 = a[5].trim_end_matches('s').parse()?;
    let mut once: Box<dyn FnMut(&mut Session) -> Res<f32>> = match a[3].as_str() {
        "embed" => {
            let ids: Vec<i64> = std::fs::read_to_string(&a[4])?
                .split_whitespace()
                .map(|t| t.parse())
                .collect::<Result<_, _>>()?;
            let n = ids.len() as i64;
            Box::new(move |s: &mut Session| {
                let out = s.run(ort::inputs![
                    "input_ids" => Tensor::from_array(([1, n], ids.clone()))?,
                    "attention_mask" => Tensor::from_array(([1, n], vec![1i64; n as usize]))?,
                    "token_type_ids" => Tensor::from_array(([1, n], vec![0i64; n as usize]))?,
                ])?;
                let (_, h) = out["last_hidden_state"].try_extract_tensor::<f32>()?;
                // Mean pooling, as the guest does (the cost is tiny either way).
                let mut v = vec![0f32; 384];
                for row in h.chunks_exact(384) {
                    v.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                }
                Ok(v[0])
            })
        }
        "vad" => {
            let samples = f32s(&a[4])?;
            Box::new(move |s: &mut Session| {
                let mut state = vec![0f32; 256];
                let mut input = vec![0f32; 576];
                let mut last = 0.0;
                for chunk in samples.chunks(512) {
                    input.copy_within(512.., 0);
                    input[64..64 + chunk.len()].copy_from_slice(chunk);
                    input[64 + chunk.len()..].fill(0.0);
                    let out = s.run(ort::inputs![
                        "input" => Tensor::from_array(([1usize, 576], input.clone()))?,
                        "state" => Tensor::from_array(([2usize, 1, 128], state.clone()))?,
                        "sr" => Tensor::from_array((Vec::<i64>::new(), vec![16000i64]))?,
                    ])?;
                    last = out["output"].try_extract_tensor::<f32>()?.1[0];
                    state = out["stateN"].try_extract_tensor::<f32>()?.1.to_vec();
                }
                Ok(last)
            })
        }
        "classify" => {
            let x = f32s(&a[4])?;
            Box::new(move |s: &mut Session| {
                let out = s.run(ort::inputs!["x" => Tensor::from_array(([1usize, 3, 224, 224], x.clone()))?])?;
                Ok(out[0].try_extract_tensor::<f32>()?.1[1])
            })
        }
        k => return Err(format!("unknown kind {k}").into()),
    };
    for _ in 0..5 {
        once(&mut s)?; // warm-up
    }
    let mut times = Vec::new();
    let start = Instant::now();
    let mut check = 0.0;
    while start.elapsed() < Duration::from_secs_f64(secs) || times.len() < 20 {
        let t = Instant::now();
        check = once(&mut s)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = start.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    eprintln!("native-ort {}: check value {check}", a[3]);
    println!("{:.3} {:.3} {:.1} {}", pct(0.5), pct(0.99), times.len() as f64 / total, times.len());
    Ok(())
}
