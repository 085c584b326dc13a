//! `embed-text`: sentence embeddings with all-MiniLM-L6-v2 (model `minilm`).
//!
//! `POST` a JSON body `{"texts": ["...", ...]}`; the answer is
//! `{"embeddings": [[384 floats], ...], "dims": 384}`, one unit-length vector per text, in order.
//! Texts are tokenised here in the guest (BERT uncased WordPiece, vocabulary embedded in the
//! component, at most 128 tokens each), padded to the longest and run as one batch; the model's
//! `last_hidden_state` is mean-pooled over the attention mask and L2-normalised.
//! Bad JSON or no texts → 400 `{"error": "..."}`; a wasi:nn failure → 500 `{"error": "..."}`.

mod tokenizer;
#[rustfmt::skip]
mod unicode_tables;

use serde::Deserialize;
use serde_json::json;
use tensorlet_sdk::nn::{Graph, NnError, Tensor};
use tensorlet_sdk::{Request, Response, StatusCode, header};

use tokenizer::Tokenizer;

const MODEL: &str = "minilm";
const MAX_TOKENS: usize = 128;
const DIMS: usize = 384;
/// Texts per request; more is a 400 (one batch of this many 128-token texts is ~25 MB out).
const MAX_TEXTS: usize = 256;

#[derive(Deserialize)]
struct Input {
    texts: Vec<String>,
}

fn handle(req: Request) -> Response {
    let input: Input = match serde_json::from_slice(req.body()) {
        Ok(input) => input,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    if input.texts.is_empty() {
        return error(StatusCode::BAD_REQUEST, "`texts` is empty".into());
    }
    if input.texts.len() > MAX_TEXTS {
        let n = input.texts.len();
        return error(
            StatusCode::BAD_REQUEST,
            format!("{n} texts; at most {MAX_TEXTS}"),
        );
    }
    match embed(&input.texts) {
        Ok(embeddings) => reply(
            StatusCode::OK,
            json!({"embeddings": embeddings, "dims": DIMS}),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

tensorlet_sdk::export_handler!(handle);

fn embed(texts: &[String]) -> Result<Vec<Vec<f32>>, NnError> {
    let tokenizer = Tokenizer::new(include_str!("../vocab.txt"));
    let encoded: Vec<Vec<i64>> = texts
        .iter()
        .map(|t| tokenizer.encode(t, MAX_TOKENS))
        .collect();
    let batch = encoded.len();
    let seq = encoded.iter().map(Vec::len).max().unwrap_or(0);

    // Pad with id 0 ([PAD]) and mask 0.
    let mut ids = vec![0i64; batch * seq];
    let mut mask = vec![0i64; batch * seq];
    for (row, tokens) in encoded.iter().enumerate() {
        ids[row * seq..][..tokens.len()].copy_from_slice(tokens);
        mask[row * seq..][..tokens.len()].fill(1);
    }
    let dims = [batch as u32, seq as u32];
    let ids = Tensor::i64(&dims, &ids);
    let types = Tensor::i64(&dims, &vec![0; batch * seq]);
    let attention = Tensor::i64(&dims, &mask);

    let outputs = Graph::by_name(MODEL)?.run(&[
        ("input_ids", &ids),
        ("attention_mask", &attention),
        ("token_type_ids", &types),
    ])?;
    let hidden = outputs
        .get("last_hidden_state")
        .ok_or_else(|| NnError::Conversion("the model has no output `last_hidden_state`".into()))?;
    let expected = [batch as u32, seq as u32, DIMS as u32];
    if hidden.dims() != expected {
        return Err(NnError::Conversion(format!(
            "last_hidden_state is {:?}, expected {expected:?}",
            hidden.dims()
        )));
    }
    let hidden = hidden.to_f32()?;

    Ok(encoded
        .iter()
        .enumerate()
        .map(|(row, tokens)| {
            // Mean over the real (unmasked) tokens, which are the first `tokens.len()`.
            let mut v = vec![0f32; DIMS];
            for t in 0..tokens.len() {
                let h = &hidden[(row * seq + t) * DIMS..][..DIMS];
                v.iter_mut().zip(h).for_each(|(a, b)| *a += b);
            }
            let n = tokens.len() as f32;
            v.iter_mut().for_each(|a| *a /= n);
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|a| *a /= norm);
            v
        })
        .collect())
}

fn error(status: StatusCode, message: String) -> Response {
    reply(status, json!({"error": message}))
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = Response::new(body.to_string().into_bytes());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    response
}
