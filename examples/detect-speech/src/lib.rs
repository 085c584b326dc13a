//! Voice activity detection: a 16 kHz mono 16-bit PCM WAV in, speech segments out.
//!
//! `POST` (any path) with the WAV as the body. The handler parses the RIFF header itself, runs the
//! node's model `vad` (Silero VAD, deployed with `--model vad`) on 512-sample frames (32 ms),
//! carrying the model's recurrent state and 64 samples of context from frame to frame, and turns
//! the per-frame speech probabilities into segments the way Silero's `get_speech_timestamps` does
//! (see [`Segmenter`]).
//!
//! Answers `200 {"segments": [{"start": 1.02, "end": 2.61}], "frames": N, "duration": 3.6}`
//! (seconds); with `Accept: application/x-ndjson`, one line per segment as soon as it is found
//! while the model is still running on the rest (`{"start": 1.02, "end": 2.61}`), then
//! `{"frames": N, "duration": 3.6}`. Errors are the SDK's `{"error": {"code", "message"}}`: 400
//! `bad_wav`, 405 `method_not_allowed`, 500 `model_failed` (in the NDJSON form, a model failure
//! after the first line cuts the stream short instead).

use serde::Serialize;
use std::collections::VecDeque;

use tensorlet_sdk::nn::{Graph, NnError, TensorRef};
use tensorlet_sdk::{
    Body, Error, IntoResponse, Json, Method, Request, Response, StatusCode, header,
};

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

/// One segment, in seconds.
#[derive(Serialize)]
struct Segment {
    start: f64,
    end: f64,
}

/// The whole answer (JSON form).
#[derive(Serialize)]
struct Answer {
    segments: Vec<Segment>,
    frames: usize,
    duration: f64,
}

/// The last line of the NDJSON form.
#[derive(Serialize)]
struct Summary {
    frames: usize,
    duration: f64,
}

fn handle(req: Request) -> Result<Response, Error> {
    if req.method() != Method::POST {
        return Err(Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "POST a 16 kHz mono 16-bit PCM WAV file",
        ));
    }
    let samples = parse_wav(req.body()).map_err(|e| Error::bad_request("bad_wav", e))?;
    let mut detector = Detector::new(samples).map_err(model_failed)?;
    let ndjson = (req.headers().get(header::ACCEPT))
        .is_some_and(|a| a.as_bytes().starts_with(b"application/x-ndjson"));
    if !ndjson {
        let mut segments = Vec::new();
        while let Some(s) = detector.next_segment().map_err(model_failed)? {
            segments.push(s);
        }
        let answer = Answer {
            segments,
            frames: detector.frames,
            duration: seconds(detector.samples.len()),
        };
        return Ok(Json(answer).into_response());
    }
    // Lines as segments are found; the model keeps running while the client reads them.
    let mut done = false;
    let lines = std::iter::from_fn(move || {
        if done {
            return None;
        }
        let line = match detector.next_segment() {
            Ok(Some(segment)) => serde_json::to_vec(&segment),
            Ok(None) => {
                done = true;
                let summary = Summary {
                    frames: detector.frames,
                    duration: seconds(detector.samples.len()),
                };
                serde_json::to_vec(&summary)
            }
            Err(e) => {
                eprintln!("detect-speech: model vad failed mid-stream: {e}");
                return None;
            }
        };
        line.ok().map(|mut l| {
            l.push(b'\n');
            l
        })
    });
    let body = Body::from_chunks(lines);
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

tensorlet_sdk::export_handler!(handle);

fn model_failed(e: NnError) -> Error {
    Error::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "model_failed",
        format!("model `vad`: {e}"),
    )
}

/// A sample position as seconds, rounded to milliseconds (`2.0`, `1.02`).
fn seconds(samples: usize) -> f64 {
    let ms = (samples as u64 * 1000 + SAMPLE_RATE as u64 / 2) / SAMPLE_RATE as u64;
    ms as f64 / 1000.0
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

/// Runs the model frame by frame and hands out segments as soon as they are final.
///
/// Each model input is the previous frame's last 64 samples (zeros at first) followed by the
/// frame's 512 samples (the last frame padded with zeros); the state starts at zeros and is the
/// previous run's `stateN` after that.
struct Detector {
    graph: Option<Graph>,
    samples: Vec<f32>,
    /// Frames run so far.
    frames: usize,
    state: Vec<f32>,
    input: Vec<f32>,
    segmenter: Segmenter,
}

impl Detector {
    fn new(samples: Vec<f32>) -> Result<Detector, NnError> {
        // No audio, no model: an empty WAV answers without the model.
        let graph = if samples.is_empty() {
            None
        } else {
            Some(Graph::by_name("vad")?)
        };
        Ok(Detector {
            graph,
            segmenter: Segmenter::new(samples.len()),
            samples,
            frames: 0,
            state: vec![0.0; STATE],
            input: vec![0.0; CONTEXT + FRAME],
        })
    }

    /// The next final segment (in seconds), or `None` once the audio is done.
    fn next_segment(&mut self) -> Result<Option<Segment>, NnError> {
        loop {
            if let Some((start, end)) = self.segmenter.ready.pop_front() {
                return Ok(Some(Segment {
                    start: seconds(start),
                    end: seconds(end),
                }));
            }
            let first = self.frames * FRAME;
            if first >= self.samples.len() {
                if self.segmenter.finish() {
                    continue;
                }
                return Ok(None);
            }
            let p = self.run_frame(first)?;
            self.segmenter.push(first, p);
            self.frames += 1;
        }
    }

    /// The speech probability of the frame starting at sample `first`.
    fn run_frame(&mut self, first: usize) -> Result<f32, NnError> {
        let graph = self.graph.as_ref().expect("loaded when there are samples");
        let chunk = &self.samples[first..(first + FRAME).min(self.samples.len())];
        self.input.copy_within(FRAME.., 0);
        self.input[CONTEXT..CONTEXT + chunk.len()].copy_from_slice(chunk);
        self.input[CONTEXT + chunk.len()..].fill(0.0);
        let sr = [i64::from(SAMPLE_RATE)];
        let mut outputs = graph.run_refs(&[
            (
                "input",
                TensorRef::f32(&[1, (CONTEXT + FRAME) as u32], &self.input),
            ),
            ("state", TensorRef::f32(&[2, 1, 128], &self.state)),
            ("sr", TensorRef::i64(&[], &sr)),
        ])?;
        let p = outputs.take("output")?.to_f32()?;
        let next = outputs.take("stateN")?.to_f32()?;
        if p.len() != 1 || next.len() != STATE {
            return Err(NnError::Conversion(format!(
                "unexpected output sizes: output {} (want 1), stateN {} (want {STATE})",
                p.len(),
                next.len()
            )));
        }
        self.state = next;
        Ok(p[0])
    }
}

/// Speech segments `(start, end)` in samples from per-frame probabilities, as Silero's
/// `get_speech_timestamps` (6.x) does with its defaults, without `max_speech_duration_s`,
/// frame by frame:
///
/// - speech starts at the first frame with p >= 0.5;
/// - it ends at the first frame with p < 0.35 that is followed by at least 100 ms (counted from
///   that frame's start) with no frame >= 0.5; frames between 0.35 and 0.5 neither start nor end
///   speech;
/// - segments shorter than 250 ms are dropped; speech still open at the end ends with the audio;
/// - each segment is padded by 30 ms on both sides (clamped to the audio), and when two segments
///   are less than 60 ms apart the gap is split between them instead. So a segment is final
///   (`ready`) once the next one is found, or at the end of the audio.
struct Segmenter {
    total: usize,
    triggered: bool,
    start: usize,
    temp_end: usize,
    /// The last segment found, its start padded, its end waiting for the next segment.
    pending: Option<(usize, usize)>,
    /// Final segments not yet handed out.
    ready: VecDeque<(usize, usize)>,
}

impl Segmenter {
    fn new(total: usize) -> Segmenter {
        Segmenter {
            total,
            triggered: false,
            start: 0,
            temp_end: 0,
            pending: None,
            ready: VecDeque::new(),
        }
    }

    /// The probability `p` of the frame starting at sample `cur`.
    fn push(&mut self, cur: usize, p: f32) {
        if p >= THRESHOLD {
            self.temp_end = 0;
            if !self.triggered {
                self.triggered = true;
                self.start = cur;
            }
            return;
        }
        if p < NEG_THRESHOLD && self.triggered {
            if self.temp_end == 0 {
                self.temp_end = cur;
            }
            if cur - self.temp_end < MIN_SILENCE_SAMPLES {
                return;
            }
            if self.temp_end - self.start > MIN_SPEECH_SAMPLES {
                self.found(self.start, self.temp_end);
            }
            self.triggered = false;
            self.temp_end = 0;
        }
    }

    /// The audio is over: speech still open ends with it, and the last segment is final.
    /// Whether that made segments final (false once everything was handed out).
    fn finish(&mut self) -> bool {
        if self.triggered && self.total - self.start > MIN_SPEECH_SAMPLES {
            self.triggered = false;
            self.found(self.start, self.total);
        }
        if let Some((start, end)) = self.pending.take() {
            let end = (end + SPEECH_PAD_SAMPLES).min(self.total);
            self.ready.push_back((start, end));
        }
        !self.ready.is_empty()
    }

    /// A new raw segment: pads (or splits the gap with) the pending one, which becomes final.
    fn found(&mut self, start: usize, end: usize) {
        let mut next = (start, end);
        match self.pending.take() {
            None => next.0 = next.0.saturating_sub(SPEECH_PAD_SAMPLES),
            Some(mut prev) => {
                let gap = next.0.saturating_sub(prev.1);
                if gap < 2 * SPEECH_PAD_SAMPLES {
                    prev.1 += gap / 2;
                    next.0 -= gap / 2;
                } else {
                    prev.1 = (prev.1 + SPEECH_PAD_SAMPLES).min(self.total);
                    next.0 = next.0.saturating_sub(SPEECH_PAD_SAMPLES);
                }
                self.ready.push_back(prev);
            }
        }
        self.pending = Some(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Silero's rules over the whole list at once (the form this example had before it
    /// streamed), as the reference for the frame-by-frame `Segmenter`.
    fn all_at_once(probs: &[f32], total: usize) -> Vec<(usize, usize)> {
        let (mut speeches, mut triggered, mut start, mut temp_end) = (Vec::new(), false, 0, 0);
        for (i, &p) in probs.iter().enumerate() {
            let cur = i * FRAME;
            if p >= THRESHOLD {
                temp_end = 0;
                if !triggered {
                    (triggered, start) = (true, cur);
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
                (triggered, temp_end) = (false, 0);
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

    #[test]
    fn frame_by_frame_segments_equal_the_whole_list_s() {
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..2000 {
            let frames = (next() % 300) as usize;
            // Runs of speech and silence, with values near both thresholds.
            let mut probs = Vec::with_capacity(frames);
            let mut level = 0.0f32;
            for _ in 0..frames {
                if next() % 6 == 0 {
                    level = [0.1, 0.34, 0.4, 0.49, 0.5, 0.9][(next() % 6) as usize];
                }
                probs.push(level);
            }
            let total = (frames * FRAME).saturating_sub((next() % FRAME as u64) as usize);
            let mut segmenter = Segmenter::new(total);
            let mut found = Vec::new();
            for (i, &p) in probs.iter().enumerate() {
                segmenter.push(i * FRAME, p);
                found.extend(segmenter.ready.drain(..));
            }
            segmenter.finish();
            found.extend(segmenter.ready.drain(..));
            assert_eq!(found, all_at_once(&probs, total), "case {case}: {probs:?}");
        }
    }
}
