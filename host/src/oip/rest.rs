//! The protocol's REST bodies: an inference request (JSON, optionally followed by the binary
//! tensor data extension's raw bytes) into an [`InferRequest`], and an [`InferResponse`] back
//! into JSON (with binary outputs where the client asked for them). Pure functions over bytes.
//!
//! The binary extension, as Triton and `tritonclient` use it: the request's JSON is the first
//! `Inference-Header-Content-Length` bytes of the body; an input whose `parameters` carry
//! `binary_data_size` takes that many of the following bytes, inputs in order. An output is
//! answered the same way when its `parameters.binary_data` is true, or when the request's
//! `parameters.binary_data_output` is and the output does not say otherwise.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::data::{self, JsonData};
use super::{InferRequest, InferResponse, OipError};
use crate::nn::tensor::Tensor;

/// The header that splits a body into JSON and binary tensor data.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Which outputs the client wants as binary data (by name), and whether that is the default.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BinaryOutputs {
    default: bool,
    named: Vec<(String, bool)>,
}

impl BinaryOutputs {
    fn binary(&self, name: &str) -> bool {
        (self.named.iter())
            .find(|(n, _)| n == name)
            .map_or(self.default, |(_, b)| *b)
    }
}

/// Parses an inference request body. `header_length` is the `Inference-Header-Content-Length`
/// header's value, if sent.
pub fn parse_request(
    body: &[u8],
    header_length: Option<&str>,
) -> Result<(InferRequest, BinaryOutputs), OipError> {
    let (json, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(text) => {
            let n: usize = text.trim().parse().map_err(|_| {
                OipError::invalid(format!(
                    "Inference-Header-Content-Length `{}` is not a byte count",
                    text.escape_default()
                ))
            })?;
            if n > body.len() {
                return Err(OipError::invalid(format!(
                    "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                    body.len()
                )));
            }
            body.split_at(n)
        }
    };
    // serde also takes a struct's fields as an array, in order: the protocol's body is an object.
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(OipError::invalid(
            "the inference request must be a JSON object: {\"inputs\": [...], ...}",
        ));
    }
    let parsed: RequestJson = serde_json::from_slice(json).map_err(|e| {
        OipError::invalid(format!(
            "the inference request is not valid JSON of the protocol: {e}"
        ))
    })?;
    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    for input in parsed.inputs {
        let name = input.name;
        let at = |m: String| OipError::invalid(format!("input `{}`: {m}", name.escape_default()));
        let (ty, dims, count) = data::declared(&input.datatype, &input.shape).map_err(at)?;
        let bytes = match (input.parameters.get("binary_data_size"), &input.data) {
            (Some(_), Some(_)) => {
                return Err(at(
                    "has both `data` and a `binary_data_size` parameter".into()
                ));
            }
            (Some(size), None) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| at(format!("binary_data_size `{size}` is not a byte count")))?;
                if size > binary.len() {
                    return Err(at(format!(
                        "binary_data_size is {size} but only {} bytes of binary data are left in the body",
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                mine.to_vec()
            }
            (None, Some(values)) => data::from_json(ty, count, values).map_err(at)?,
            (None, None) => {
                return Err(at(
                    "has neither `data` nor a `binary_data_size` parameter".into()
                ));
            }
        };
        inputs.push((
            name,
            Tensor {
                dims,
                ty,
                data: bytes,
            },
        ));
    }
    if !binary.is_empty() {
        return Err(OipError::invalid(format!(
            "the body has {} bytes of binary data past what the inputs' binary_data_size parameters take",
            binary.len()
        )));
    }
    let flag = |params: &Map<String, Value>, key: &str| match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(OipError::invalid(format!(
            "parameter `{key}` must be true or false, not `{other}`"
        ))),
    };
    let mut binary_outputs = BinaryOutputs {
        default: flag(&parsed.parameters, "binary_data_output")?.unwrap_or(false),
        named: Vec::new(),
    };
    let outputs = match parsed.outputs {
        None => None,
        Some(outputs) => {
            let mut names = Vec::with_capacity(outputs.len());
            for o in outputs {
                if o.parameters.contains_key("classification") {
                    return Err(OipError::invalid(
                        "the classification extension is not supported: ask for the output's tensor",
                    ));
                }
                if let Some(b) = flag(&o.parameters, "binary_data")? {
                    binary_outputs.named.push((o.name.clone(), b));
                }
                names.push(o.name);
            }
            Some(names)
        }
    };
    let request = InferRequest {
        id: parsed.id,
        inputs,
        outputs,
    };
    Ok((request, binary_outputs))
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputJsonOut<'a>>,
}

#[derive(Serialize)]
struct OutputJsonOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// An inference response body and, when it carries binary outputs, the length of its JSON part
/// (the `Inference-Header-Content-Length` to send).
pub fn write_response(r: &InferResponse, binary: &BinaryOutputs) -> (Vec<u8>, Option<usize>) {
    let mut raw: Vec<&[u8]> = Vec::new();
    let outputs = (r.outputs.iter())
        .map(|(name, t)| {
            let as_binary = binary.binary(name);
            if as_binary {
                raw.push(&t.data);
            }
            OutputJsonOut {
                name,
                datatype: data::datatype(t.ty),
                shape: t.dims.iter().map(|d| u64::from(*d)).collect(),
                parameters: as_binary.then_some(BinarySize {
                    binary_data_size: t.data.len(),
                }),
                data: (!as_binary).then_some(JsonData {
                    ty: t.ty,
                    bytes: &t.data,
                }),
            }
        })
        .collect();
    let json = ResponseJson {
        model_name: &r.model_name,
        model_version: &r.model_version,
        id: r.id.as_deref(),
        outputs,
    };
    // Serialising these types cannot fail: strings, numbers and finite structures only (a NaN
    // output becomes `null`, as serde_json writes non-finite floats).
    let mut body = serde_json::to_vec(&json).unwrap_or_default();
    if raw.is_empty() {
        return (body, None);
    }
    let header = body.len();
    body.reserve(raw.iter().map(|r| r.len()).sum());
    for r in raw {
        body.extend_from_slice(r);
    }
    (body, Some(header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::bindings::wasi::nn::tensor::TensorType;
    use serde_json::json;

    fn binary_body(json: Value, raw: &[u8]) -> (Vec<u8>, String) {
        let mut body = serde_json::to_vec(&json).unwrap();
        let n = body.len();
        body.extend_from_slice(raw);
        (body, n.to_string())
    }

    #[test]
    fn json_and_binary_inputs_parse_in_order() {
        let raw: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|f| f.to_le_bytes()).collect();
        let (body, n) = binary_body(
            json!({"id": "r1", "inputs": [
                {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
                {"name": "b", "shape": [1, 2], "datatype": "INT64", "data": [[3, 4]]},
            ], "outputs": [{"name": "y", "parameters": {"binary_data": true}}, {"name": "z"}],
              "parameters": {"binary_data_output": false}}),
            &raw,
        );
        let (req, binary) = parse_request(&body, Some(&n)).unwrap();
        assert_eq!(req.id.as_deref(), Some("r1"));
        assert_eq!(req.inputs[0].1.data, raw);
        assert_eq!(req.inputs[1].1.dims, vec![1, 2]);
        assert_eq!(req.inputs[1].1.ty, TensorType::I64);
        assert_eq!(req.outputs, Some(vec!["y".into(), "z".into()]));
        assert!(binary.binary("y") && !binary.binary("z"));
    }

    #[test]
    fn malformed_bodies_are_refused_with_what_is_wrong() {
        let err = |body: &[u8], n: Option<&str>| parse_request(body, n).err().unwrap().message;
        assert!(err(b"{", None).contains("not valid JSON"));
        assert!(err(b"{}", Some("x")).contains("not a byte count"));
        assert!(err(b"{}", Some("99")).contains("only 2 bytes"));
        assert!(err(b"{}", Some("-1")).contains("not a byte count"));
        let one = |input: Value, raw: &[u8]| {
            let (body, n) = binary_body(json!({"inputs": [input]}), raw);
            parse_request(&body, Some(&n)).err().unwrap().message
        };
        let m = one(
            json!({"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}),
            &[0; 4],
        );
        assert!(m.contains("only 4 bytes"), "{m}");
        let m = one(
            json!({"name": "a", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}),
            &[0; 6],
        );
        assert!(m.contains("2 bytes of binary data past"), "{m}");
        let m = one(json!({"name": "a", "shape": [1], "datatype": "FP32"}), &[]);
        assert!(m.contains("neither"), "{m}");
        let m = one(
            json!({"name": "a", "shape": [-1], "datatype": "FP32", "data": [1]}),
            &[],
        );
        assert!(m.contains("negative"), "{m}");
        let m = one(
            json!({"name": "a", "shape": [1], "datatype": "BOOL", "data": [true]}),
            &[],
        );
        assert!(m.contains("`BOOL`"), "{m}");
        let m = one(
            json!({"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2, 3]}),
            &[],
        );
        assert!(m.starts_with("input `a`:"), "{m}");
        let (body, _) = binary_body(
            json!({"inputs": [], "parameters": {"binary_data_output": 1}}),
            &[],
        );
        assert!(parse_request(&body, None).is_err());
    }

    #[test]
    fn responses_carry_binary_outputs_after_the_json() {
        let t = |v: &[f32]| Tensor {
            dims: vec![v.len() as u32],
            ty: TensorType::Fp32,
            data: v.iter().flat_map(|f| f.to_le_bytes()).collect(),
        };
        let r = InferResponse {
            model_name: "m".into(),
            model_version: "abc".into(),
            id: Some("r1".into()),
            outputs: vec![("y".into(), t(&[1.5])), ("z".into(), t(&[2.0, 3.0]))],
        };
        let (body, header) = write_response(&r, &BinaryOutputs::default());
        assert_eq!(header, None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "r1");
        assert_eq!(v["outputs"][1]["data"], json!([2.0, 3.0]));
        assert_eq!(v["outputs"][1]["shape"], json!([2]));
        let binary = BinaryOutputs {
            default: false,
            named: vec![("z".into(), true)],
        };
        let (body, header) = write_response(&r, &binary);
        let n = header.unwrap();
        let v: Value = serde_json::from_slice(&body[..n]).unwrap();
        assert_eq!(v["outputs"][1]["parameters"]["binary_data_size"], 8);
        assert!(v["outputs"][1].get("data").is_none());
        assert_eq!(v["outputs"][0]["data"], json!([1.5]));
        assert_eq!(&body[n..], &r.outputs[1].1.data[..]);
    }
}
