//! Voice activity detection: a 16 kHz mono 16-bit PCM WAV in, speech segments out.
//!
//! `POST` (any path) with the WAV as the body. The handler parses the RIFF header itself, runs the
//! node's model `vad` (Silero VAD, deployed with `--model vad`) on 512-sample frames (32 ms),
//! carrying the model's recurrent state and 64 samples of context from frame to frame, and turns
//! the per-frame speech probabilities into segments the way Silero's `get_speech_timestamps` does
//! (see [`segments`]). Answers `200 {"segments": [{"start": 1.02, "end": 2.61}], "frames": N,
//! "duration": 3.6}` (seconds), `400 {"error": "..."}` for anything that is not such a WAV,
//! `405` for other methods and `500` when the model fails.

use tensorlet_sdk::nn::{Graph, NnError, Tensor};
use tensorlet_sdk::{Method, Request, Response, StatusCode, header};

/// Sample rate the model is run at (the only one accepted).
const SAMPLE_RATE: u32 = 16_000;
/// New samples per frame (32 ms at 16 kHz).
const FRAME: usize = 512;
/// Samples of the previous frame prepended to each frame.
const CONTEXT: usize = 64;
/// Elements of the model's recurrent state, f32[2,1,128].
const STATE: usize = 2 * 128;

/// Segmenting parameters (Silero's `get_speech_timestamps` defaults).
const THRESHOLD: f32 = 0.5;
const NEG_THRESHOLD: f32 = 0.35;
const MIN_SPEECH_SAMPLES: usize = SAMPLE_RATE as usize * 250 / 1000;
const MIN_SILENCE_SAMPLES: usize = SAMPLE_RATE as usize * 100 / 1000;
const SPEECH_PAD_SAMPLES: usize = SAMPLE_RATE as usize * 30 / 1000;

fn handle(req: Request) -> Response {
    if req.method() != Method::POST {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            error_body("POST a 16 kHz mono 16-bit PCM WAV file"),
        );
    }
    let samples = match parse_wav(req.body()) {
        Ok(s) => s,
        Err(e) => return json(StatusCode::BAD_REQUEST, error_body(&e)),
    };
    let probs = match speech_probabilities(&samples) {
        Ok(p) => p,
        Err(e) => {
            return json(
                StatusCode::INTERNAL_SERVER_ERROR,
                error_body(&format!("model vad: {e}")),
            );
        }
    };
    let segs = segments(&probs, samples.len());
    let mut body = String::from("{\"segments\": [");
    for (i, (start, end)) in segs.iter().enumerate() {
        if i > 0 {
            body.push_str(", ");
        }
        body.push_str(&format!(
            "{{\"start\": {}, \"end\": {}}}",
            seconds(*start),
            seconds(*end)
        ));
    }
    body.push_str(&format!(
        "], \"frames\": {}, \"duration\": {}}}\n",
        probs.len(),
        seconds(samples.len())
    ));
    json(StatusCode::OK, body)
}

tensorlet_sdk::export_handler!(handle);

fn json(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(body.into_bytes());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_body(message: &str) -> String {
    let mut out = String::from("{\"error\": \"");
    for c in message.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push_str("\"}\n");
    out
}

/// A sample position as seconds, rounded to milliseconds, without trailing zeros (`2.0`, `1.02`).
fn seconds(samples: usize) -> String {
    let ms = (samples as u64 * 1000 + SAMPLE_RATE as u64 / 2) / SAMPLE_RATE as u64;
    let text = format!("{}.{:03}", ms / 1000, ms % 1000);
    let text = text.trim_end_matches('0');
    if text.ends_with('.') {
        format!("{text}0")
    } else {
        text.to_string()
    }
}

/// The samples of a RIFF/WAVE file with 16 kHz, mono, 16-bit PCM audio, as f32 in [-1, 1).
///
/// Chunks other than `fmt ` and `data` are skipped. A `data` chunk that claims more bytes than
/// the file has (a streamed WAV) is read to the end of the file.
fn parse_wav(bytes: &[u8]) -> Result<Vec<f32>, String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a WAV file (expected a RIFF/WAVE header)".into());
    }
    let mut pos = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = pos + 8;
        let end = body.saturating_add(size).min(bytes.len());
        match id {
            b"fmt " => {
                if end - body < 16 {
                    return Err("WAV `fmt ` chunk is too short".into());
                }
                let f = &bytes[body..end];
                let u16_at = |i: usize| u16::from_le_bytes([f[i], f[i + 1]]);
                let mut tag = u16_at(0);
                // WAVE_FORMAT_EXTENSIBLE: the real format is the first two bytes of the subformat GUID.
                if tag == 0xFFFE && f.len() >= 26 {
                    tag = u16_at(24);
                }
                let rate = u32::from_le_bytes(f[4..8].try_into().unwrap());
                format = Some((tag, u16_at(2), rate, u16_at(14)));
            }
            b"data" => {
                let (tag, channels, rate, bits) =
                    format.ok_or("WAV `data` chunk comes before its `fmt ` chunk")?;
                if tag != 1 || channels != 1 || rate != SAMPLE_RATE || bits != 16 {
                    let kind = if tag == 1 { "PCM" } else { "non-PCM" };
                    return Err(format!(
                        "unsupported WAV format: {kind} (format tag {tag}), {channels} channel(s), \
                         {rate} Hz, {bits} bits; expected 16 kHz mono 16-bit PCM"
                    ));
                }
                return Ok(bytes[body..end]
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
                    .collect());
            }
            _ => {}
        }
        // Chunks are padded to an even size.
        pos = body.saturating_add(size).saturating_add(size & 1);
    }
    Err(if format.is_none() {
        "WAV file has no `fmt ` chunk".into()
    } else {
        "WAV file has no `data` chunk".into()
    })
}

/// Speech probability of each 512-sample frame (the last one padded with zeros).
///
/// Each model input is the previous frame's last 64 samples (zeros at first) followed by the
/// frame's 512 samples; the state starts at zeros and is the previous run's `stateN` after that.
fn speech_probabilities(samples: &[f32]) -> Result<Vec<f32>, NnError> {
    if samples.is_empty() {
        return Ok(Vec::new());
    }
    let graph = Graph::by_name("vad")?;
    let sr = Tensor::i64(&[], &[SAMPLE_RATE as i64]);
    let mut state = vec![0.0f32; STATE];
    let mut input = vec![0.0f32; CONTEXT + FRAME];
    let mut probs = Vec::with_capacity(samples.len().div_ceil(FRAME));
    for chunk in samples.chunks(FRAME) {
        input.copy_within(FRAME.., 0);
        input[CONTEXT..CONTEXT + chunk.len()].copy_from_slice(chunk);
        input[CONTEXT + chunk.len()..].fill(0.0);
        let outputs = graph.run(&[
            (
                "input",
                &Tensor::f32(&[1, (CONTEXT + FRAME) as u32], &input),
            ),
            ("state", &Tensor::f32(&[2, 1, 128], &state)),
            ("sr", &sr),
        ])?;
        let output = |name: &str| {
            outputs
                .get(name)
                .ok_or_else(|| NnError::Conversion(format!("the model has no output `{name}`")))?
                .to_f32()
        };
        let p = output("output")?;
        let next = output("stateN")?;
        if p.len() != 1 || next.len() != STATE {
            return Err(NnError::Conversion(format!(
                "unexpected output sizes: output {} (want 1), stateN {} (want {STATE})",
                p.len(),
                next.len()
            )));
        }
        probs.push(p[0]);
        state = next;
    }
    Ok(probs)
}

/// Speech segments `(start, end)` in samples from per-frame probabilities, as Silero's
/// `get_speech_timestamps` (6.x) does with its defaults, without `max_speech_duration_s`:
///
/// - speech starts at the first frame with p >= 0.5;
/// - it ends at the first frame with p < 0.35 that is followed by at least 100 ms (counted from
///   that frame's start) with no frame >= 0.5; frames between 0.35 and 0.5 neither start nor end
///   speech;
/// - segments shorter than 250 ms are dropped; speech still open at the end ends with the audio;
/// - each segment is padded by 30 ms on both sides (clamped to the audio), and when two segments
///   are less than 60 ms apart the gap is split between them instead.
fn segments(probs: &[f32], total: usize) -> Vec<(usize, usize)> {
    let mut speeches: Vec<(usize, usize)> = Vec::new();
    let mut triggered = false;
    let mut start = 0;
    let mut temp_end = 0;
    for (i, &p) in probs.iter().enumerate() {
        let cur = i * FRAME;
        if p >= THRESHOLD {
            temp_end = 0;
            if !triggered {
                triggered = true;
                start = cur;
            }
            continue;
        }
        if p < NEG_THRESHOLD && triggered {
            if temp_end == 0 {
                temp_end = cur;
            }
            if cur - temp_end < MIN_SILENCE_SAMPLES {
                continue;
            }
            if temp_end - start > MIN_SPEECH_SAMPLES {
                speeches.push((start, temp_end));
            }
            triggered = false;
            temp_end = 0;
        }
    }
    if triggered && total - start > MIN_SPEECH_SAMPLES {
        speeches.push((start, total));
    }
    let n = speeches.len();
    for i in 0..n {
        if i == 0 {
            speeches[0].0 = speeches[0].0.saturating_sub(SPEECH_PAD_SAMPLES);
        }
        if i + 1 < n {
            let gap = speeches[i + 1].0.saturating_sub(speeches[i].1);
            if gap < 2 * SPEECH_PAD_SAMPLES {
                speeches[i].1 += gap / 2;
                speeches[i + 1].0 -= gap / 2;
            } else {
                speeches[i].1 = (speeches[i].1 + SPEECH_PAD_SAMPLES).min(total);
                speeches[i + 1].0 = speeches[i + 1].0.saturating_sub(SPEECH_PAD_SAMPLES);
            }
        } else {
            speeches[i].1 = (speeches[i].1 + SPEECH_PAD_SAMPLES).min(total);
        }
    }
    speeches
}
