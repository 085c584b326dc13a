//! Integration test of examples/embed-text (a real handler with a real model).
//!
//! all-MiniLM-L6-v2 int8 (`.cache/models/minilm-int8.onnx`) deployed as `minilm`; the node's
//! embeddings are compared with `examples/embed-text/testdata/reference.json`, computed outside
//! the node (Hugging Face `tokenizers` + ONNX Runtime in Python, `testdata/reference.py`).

use serde_json::{Value, json};

use crate::support::*;

fn vectors(value: &Value) -> Vec<Vec<f32>> {
    value
        .as_array()
        .expect("an array of vectors")
        .iter()
        .map(|v| {
            v.as_array()
                .expect("a vector")
                .iter()
                .map(|x| x.as_f64().expect("a number") as f32)
                .collect()
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

nn_test! {
    example_models:
    fn example_embed_text_matches_reference_embeddings() {
        let reference = repo_root().join("examples/embed-text/testdata/reference.json");
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(reference).expect("read reference.json"),
        )
        .expect("reference.json is JSON");
        let sentences = reference["sentences"].clone();
        let expected = vectors(&reference["embeddings"]);
        assert_eq!(expected.len(), 4);

        let dir = TestDir::new();
        let node = start_with_real_model(&dir, None, "minilm", "minilm-int8.onnx");
        node.deploy_file_ok("embed", &example("embed-text"), "model=minilm");

        let body = json!({ "texts": sentences }).to_string();
        let r = node.post("/fn/embed", body.as_bytes());
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{r}");
        let answer = r.json();
        assert_eq!(answer["dims"], 384, "{r}");
        let got = vectors(&answer["embeddings"]);
        assert_eq!(got.len(), 4, "one vector per text");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g.len(), 384, "vector {i} has 384 dims");
            let norm = dot(g, g).sqrt();
            assert!((norm - 1.0).abs() < 1e-3, "vector {i} has norm {norm}");
            let c = cosine(g, e);
            eprintln!(
                "sentence {i}: cosine with the reference {c:.7} (1 - cosine = {:.1e})",
                1.0 - c
            );
            assert!(c > 0.999, "sentence {i}: cosine with the reference {c}");
        }
        let (cat, kitten, stocks) = (&got[0], &got[1], &got[2]);
        let (cat_kitten, cat_stocks, kitten_stocks) = (
            cosine(cat, kitten),
            cosine(cat, stocks),
            cosine(kitten, stocks),
        );
        eprintln!(
            "sim(cat, kitten) {cat_kitten:.4}, sim(cat, stocks) {cat_stocks:.4}, sim(kitten, stocks) {kitten_stocks:.4}"
        );
        assert!(
            cat_kitten > cat_stocks + 0.3,
            "{cat_kitten} vs {cat_stocks}"
        );
        assert!(
            cat_kitten > kitten_stocks,
            "{cat_kitten} vs {kitten_stocks}"
        );

        // One text alone (no padding) gives the same vector as in the batch.
        let single = node.post("/fn/embed", br#"{"texts": ["The cat sits on the mat."]}"#);
        assert_eq!(single.status, 200, "{single}");
        let alone = vectors(&single.json()["embeddings"]);
        assert!(cosine(&alone[0], cat) > 0.9999, "batching changes nothing");

        // Errors in the SDK's shape: `{"error": {"code": ..., "message": ...}}`.
        let too_many = json!({ "texts": vec!["a"; 257] }).to_string();
        for (bad, code) in [
            (&b"{not json"[..], "invalid_json"),
            (br#"{"texts": []}"#, "empty_input"),
            (br#"{"texts": "one"}"#, "invalid_json"),
            (b"", "invalid_json"),
            (too_many.as_bytes(), "too_many_texts"),
        ] {
            let r = node.post("/fn/embed", bad);
            let what = String::from_utf8_lossy(&bad[..bad.len().min(40)]);
            assert_eq!(r.status, 400, "{what:?}: {r}");
            assert_eq!(r.header("content-type"), Some("application/json"), "{r}");
            let error = r.json();
            assert_eq!(error["error"]["code"], code, "{what:?}: {r}");
            assert!(
                error["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{r}"
            );
        }

        // Deployed without the model: the wasi:nn error is a 500 `model_failed`.
        node.deploy_file_ok("embed-nomodel", &example("embed-text"), "");
        let r = node.post("/fn/embed-nomodel", br#"{"texts": ["a"]}"#);
        assert_eq!(r.status, 500, "{r}");
        assert_eq!(r.json()["error"]["code"], "model_failed", "{r}");
    }
}
