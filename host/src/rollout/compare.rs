//! Whether a shadow answer says what stable's said: the same bytes, or the same JSON with
//! numbers equal within a tolerance (a new model version may move the last digits of a score
//! without changing what it means; it may not move the score).

use serde_json::Value;

/// Whether two response bodies are the same answer: equal bytes, or JSON documents of the same
/// shape whose numbers differ by at most `tolerance` (relative to the larger, absolute below 1).
/// Guest-controlled input: serde_json refuses nesting deeper than 128, so this cannot overflow
/// the stack.
pub fn same_answer(a: &[u8], b: &[u8], tolerance: f64) -> bool {
    if a == b {
        return true;
    }
    match (
        serde_json::from_slice::<Value>(a),
        serde_json::from_slice::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => same_value(&a, &b, tolerance),
        _ => false,
    }
}

fn same_value(a: &Value, b: &Value, tolerance: f64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= tolerance * x.abs().max(y.abs()).max(1.0),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y, tolerance))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w, tolerance)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::same_answer;

    #[test]
    fn bytes_or_json_within_tolerance() {
        assert!(same_answer(b"hello", b"hello", 0.0));
        assert!(!same_answer(b"hello", b"hellO", 1.0));
        let a = br#"{"label":"cat","scores":[0.91234,0.0877],"n":3}"#;
        // Key order and whitespace do not matter; the last digits within tolerance do not.
        let b = br#"{ "n": 3, "scores": [0.912345, 0.08770001], "label": "cat" }"#;
        assert!(same_answer(a, b, 1e-4));
        assert!(!same_answer(a, b, 1e-9));
        // A moved score, a different label, a missing field or an extra element is different.
        for other in [
            &br#"{"label":"cat","scores":[0.85,0.15],"n":3}"#[..],
            br#"{"label":"dog","scores":[0.91234,0.0877],"n":3}"#,
            br#"{"label":"cat","scores":[0.91234,0.0877]}"#,
            br#"{"label":"cat","scores":[0.91234,0.0877,0],"n":3}"#,
        ] {
            assert!(!same_answer(a, other, 1e-4));
        }
        // Large numbers compare relatively.
        assert!(same_answer(b"[100000.0]", b"[100000.5]", 1e-4));
        // Hostile nesting is refused by the parser, not by the stack.
        let deep = "[".repeat(100_000);
        assert!(!same_answer(deep.as_bytes(), b"[]", 1e-4));
    }
}
