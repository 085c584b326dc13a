//! Integration test of examples/detect-speech (a real handler with a real model).

use serde_json::Value;

use crate::support::*;

/// A 16 kHz mono 16-bit PCM WAV file holding `samples`.
fn wav(samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// `(start, end)` of every segment of a 200 answer.
fn segments(resp: &Response) -> Vec<(f64, f64)> {
    assert_eq!(resp.status, 200, "{resp}");
    let body = resp.json();
    body["segments"]
        .as_array()
        .unwrap_or_else(|| panic!("no segments array: {body}"))
        .iter()
        .map(|s: &Value| (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap()))
        .collect()
}

nn_test! {
    example_models:
    fn example_detect_speech_finds_the_spoken_sentence() {
        let dir = TestDir::new();
        let node = start_with_real_model(&dir, None, "vad", "silero-vad.onnx");
        // Deployed from the example's own manifest (name `vad`, its component, `models = ["vad"]`).
        example("detect-speech");
        let manifest = repo_root().join("examples/detect-speech/tensorlet.toml");
        let out = node.cli(&["deploy", "--manifest", manifest.to_str().unwrap()]);
        cli_ok(
            &out,
            "deploy --manifest examples/detect-speech/tensorlet.toml",
        );

        // testdata/speech.wav: 1.0 s silence + speech + 1.0 s silence, so speech ends 1.0 s
        // before the end.
        let speech = std::fs::read(repo_root().join("examples/detect-speech/testdata/speech.wav"))
            .expect("read speech.wav");
        let resp = node.post("/fn/vad/", &speech);
        eprintln!("speech.wav: {}", resp.text());
        let segs = segments(&resp);
        let body = resp.json();
        let duration = body["duration"].as_f64().unwrap();
        let data = speech
            .windows(4)
            .position(|w| w == b"data")
            .expect("speech.wav has a data chunk");
        let samples = (speech.len() - data - 8) / 2;
        assert!(
            (duration - samples as f64 / 16_000.0).abs() < 0.01,
            "{body}"
        );
        assert_eq!(
            body["frames"].as_u64().unwrap(),
            samples.div_ceil(512) as u64
        );
        let speech_end = duration - 1.0;
        assert!(!segs.is_empty(), "no speech found: {body}");
        let (first_start, _) = segs[0];
        let (_, last_end) = segs[segs.len() - 1];
        assert!(
            (0.7..=1.4).contains(&first_start),
            "first segment starts at {first_start}: {body}"
        );
        assert!(
            (last_end - speech_end).abs() <= 0.5,
            "last segment ends at {last_end}, speech at {speech_end}: {body}"
        );
        // The NDJSON form: the same segments, one line each, then the totals.
        let streamed = node.send(
            Request::new("POST", "/fn/vad/")
                .header("accept", "application/x-ndjson")
                .body(speech.clone()),
        );
        assert_eq!(streamed.status, 200, "{streamed}");
        assert_eq!(streamed.header("content-type"), Some("application/x-ndjson"));
        let lines: Vec<Value> = streamed
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let (totals, lines) = lines.split_last().expect("at least the totals line");
        assert_eq!(totals, &serde_json::json!({"frames": body["frames"], "duration": body["duration"]}));
        assert_eq!(lines, body["segments"].as_array().unwrap().as_slice(), "{streamed}");
        for (start, end) in &segs {
            assert!(
                *start >= 0.6 && end > start,
                "segment {start}..{end}: {body}"
            );
        }

        // 2 s of digital silence: no speech.
        let silence = wav(&vec![0i16; 32_000]);
        let resp = node.post("/fn/vad/", &silence);
        eprintln!("silence: {}", resp.text());
        assert_eq!(segments(&resp), Vec::<(f64, f64)>::new());
        assert_eq!(resp.json()["frames"], 63);
        assert_eq!(resp.json()["duration"], 2.0);

        // Not a WAV, and a WAV in a format the model does not take: 400 with a JSON error.
        let garbage = pseudo_random_bytes(4096, 7);
        let mut stereo = wav(&vec![0i16; 1600]);
        stereo[22] = 2; // channels
        for (what, bytes) in [("garbage", garbage), ("stereo", stereo)] {
            let resp = node.post("/fn/vad/", &bytes);
            assert_eq!(resp.status, 400, "{what}: {resp}");
            assert_eq!(resp.json()["error"]["code"], "bad_wav", "{what}: {resp}");
            let message = resp.json()["error"]["message"].as_str().map(str::to_owned);
            assert!(message.is_some_and(|e| !e.is_empty()), "{what}: {resp}");
        }
    }
}
