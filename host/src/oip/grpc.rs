//! The protocol's gRPC edge: `inference.GRPCInferenceService` (ServerLive, ServerReady,
//! ModelReady, ServerMetadata, ModelMetadata, ModelInfer) on a listener of its own
//! (`grpc_listen`). HTTP/2 is hyper's, as on the node's main listener; tonic frames, decodes
//! (within `max_infer_body`) and answers each call with its status. The messages are the
//! protocol's, declared here with their field numbers (the subset these calls use: prost skips
//! fields it does not know, such as request parameters), so no protoc runs at build time.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryFutureExt;
use futures_util::future::{Either, MapOk, Ready, ready};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tonic::server::{Grpc, UnaryService};
use tonic::{Code, Status};

use super::{InferRequest, InferResponse, Inference, Kind, OipError, data};
use crate::auth;
use crate::nn::bindings::wasi::nn::tensor::TensorType;
use crate::nn::tensor::Tensor;

/// The protocol's messages (field numbers of `grpc_predict_v2.proto` / Triton's
/// `grpc_service.proto`, which agree on these).
pub mod pb {
    /// `ServerLiveRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerLiveRequest {}
    /// `ServerLiveResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerLiveResponse {
        /// Whether the server is live.
        #[prost(bool, tag = "1")]
        pub live: bool,
    }
    /// `ServerReadyRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerReadyRequest {}
    /// `ServerReadyResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerReadyResponse {
        /// Whether the server is ready.
        #[prost(bool, tag = "1")]
        pub ready: bool,
    }
    /// `ModelReadyRequest` (and `ModelMetadataRequest`: same fields).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelRequest {
        /// Model name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Model version; empty for the live one.
        #[prost(string, tag = "2")]
        pub version: String,
    }
    /// `ModelReadyResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelReadyResponse {
        /// Whether the model can be called.
        #[prost(bool, tag = "1")]
        pub ready: bool,
    }
    /// `ServerMetadataRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerMetadataRequest {}
    /// `ServerMetadataResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerMetadataResponse {
        /// Server name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Server version.
        #[prost(string, tag = "2")]
        pub version: String,
        /// Supported extensions.
        #[prost(string, repeated, tag = "3")]
        pub extensions: Vec<String>,
    }
    /// `ModelMetadataResponse.TensorMetadata`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorMetadata {
        /// Tensor name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Datatype.
        #[prost(string, tag = "2")]
        pub datatype: String,
        /// Shape, -1 for dynamic dimensions.
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
    }
    /// `ModelMetadataResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelMetadataResponse {
        /// Model name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Versions.
        #[prost(string, repeated, tag = "2")]
        pub versions: Vec<String>,
        /// Platform.
        #[prost(string, tag = "3")]
        pub platform: String,
        /// Inputs.
        #[prost(message, repeated, tag = "4")]
        pub inputs: Vec<TensorMetadata>,
        /// Outputs.
        #[prost(message, repeated, tag = "5")]
        pub outputs: Vec<TensorMetadata>,
    }
    /// `InferTensorContents`: typed elements, the alternative to raw bytes.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferTensorContents {
        /// BOOL.
        #[prost(bool, repeated, tag = "1")]
        pub bool_contents: Vec<bool>,
        /// INT8, INT16, INT32.
        #[prost(int32, repeated, tag = "2")]
        pub int_contents: Vec<i32>,
        /// INT64.
        #[prost(int64, repeated, tag = "3")]
        pub int64_contents: Vec<i64>,
        /// UINT8, UINT16, UINT32.
        #[prost(uint32, repeated, tag = "4")]
        pub uint_contents: Vec<u32>,
        /// UINT64.
        #[prost(uint64, repeated, tag = "5")]
        pub uint64_contents: Vec<u64>,
        /// FP32.
        #[prost(float, repeated, tag = "6")]
        pub fp32_contents: Vec<f32>,
        /// FP64.
        #[prost(double, repeated, tag = "7")]
        pub fp64_contents: Vec<f64>,
        /// BYTES.
        #[prost(bytes = "vec", repeated, tag = "8")]
        pub bytes_contents: Vec<Vec<u8>>,
    }
    /// `ModelInferRequest.InferInputTensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferInputTensor {
        /// Name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Datatype.
        #[prost(string, tag = "2")]
        pub datatype: String,
        /// Shape.
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
        /// Typed elements, when not in `raw_input_contents`.
        #[prost(message, optional, tag = "5")]
        pub contents: Option<InferTensorContents>,
    }
    /// `ModelInferRequest.InferRequestedOutputTensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferRequestedOutputTensor {
        /// Name.
        #[prost(string, tag = "1")]
        pub name: String,
    }
    /// `ModelInferRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelInferRequest {
        /// Model name.
        #[prost(string, tag = "1")]
        pub model_name: String,
        /// Model version; empty for the live one.
        #[prost(string, tag = "2")]
        pub model_version: String,
        /// Request id, echoed.
        #[prost(string, tag = "3")]
        pub id: String,
        /// Inputs.
        #[prost(message, repeated, tag = "5")]
        pub inputs: Vec<InferInputTensor>,
        /// Outputs asked for; none asks for all.
        #[prost(message, repeated, tag = "6")]
        pub outputs: Vec<InferRequestedOutputTensor>,
        /// Each input's bytes, in order (all inputs or none).
        #[prost(bytes = "vec", repeated, tag = "7")]
        pub raw_input_contents: Vec<Vec<u8>>,
    }
    /// `ModelInferResponse.InferOutputTensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferOutputTensor {
        /// Name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Datatype.
        #[prost(string, tag = "2")]
        pub datatype: String,
        /// Shape.
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
    }
    /// `ModelInferResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelInferResponse {
        /// Model name, as asked.
        #[prost(string, tag = "1")]
        pub model_name: String,
        /// The version that answered.
        #[prost(string, tag = "2")]
        pub model_version: String,
        /// The request's id.
        #[prost(string, tag = "3")]
        pub id: String,
        /// Outputs.
        #[prost(message, repeated, tag = "5")]
        pub outputs: Vec<InferOutputTensor>,
        /// Each output's bytes, in order.
        #[prost(bytes = "vec", repeated, tag = "6")]
        pub raw_output_contents: Vec<Vec<u8>>,
    }
}

/// The gRPC status of a protocol error.
pub fn status(e: &OipError) -> Status {
    let code = match e.kind {
        Kind::Invalid => Code::InvalidArgument,
        Kind::NotFound => Code::NotFound,
        Kind::Unauthenticated => Code::Unauthenticated,
        Kind::TooLarge | Kind::Exhausted(_) => Code::ResourceExhausted,
        Kind::Timeout => Code::DeadlineExceeded,
        Kind::Unavailable => Code::Unavailable,
        Kind::Internal => Code::Internal,
    };
    Status::new(code, e.message.clone())
}

/// A `ModelInferRequest` as the node's request: every input from `raw_input_contents` (one
/// entry per input, in order) or from its typed `contents`.
pub fn to_request(m: pb::ModelInferRequest) -> Result<InferRequest, OipError> {
    if !m.raw_input_contents.is_empty() && m.raw_input_contents.len() != m.inputs.len() {
        return Err(OipError::invalid(format!(
            "raw_input_contents has {} entries for {} inputs: give one per input, in order, or none",
            m.raw_input_contents.len(),
            m.inputs.len()
        )));
    }
    let mut raw = m.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(m.inputs.len());
    for input in m.inputs {
        let name = input.name;
        let at = |m: String| OipError::invalid(format!("input `{}`: {m}", name.escape_default()));
        let (ty, dims, count) = data::declared(&input.datatype, &input.shape).map_err(at)?;
        let bytes = match (raw.next(), input.contents) {
            (Some(bytes), None) => bytes,
            (Some(_), Some(_)) => {
                return Err(at("has both `contents` and raw_input_contents".into()));
            }
            (None, Some(contents)) => typed(ty, count, contents).map_err(at)?,
            (None, None) => {
                return Err(at(
                    "has no data: set its `contents` or raw_input_contents".into()
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
    Ok(InferRequest {
        id: (!m.id.is_empty()).then_some(m.id),
        inputs,
        outputs: (!m.outputs.is_empty()).then(|| m.outputs.into_iter().map(|o| o.name).collect()),
    })
}

/// The bytes of typed contents: `count` elements in the field the datatype uses.
fn typed(ty: TensorType, count: usize, c: pb::InferTensorContents) -> Result<Vec<u8>, String> {
    fn le<T, const N: usize>(
        v: &[T],
        count: usize,
        f: impl Fn(&T) -> [u8; N],
    ) -> Result<Vec<u8>, String> {
        if v.len() != count {
            return Err(format!(
                "`contents` has {} elements but the shape needs {count}",
                v.len()
            ));
        }
        Ok(v.iter().flat_map(f).collect())
    }
    match ty {
        TensorType::Fp32 => le(&c.fp32_contents, count, |x| x.to_le_bytes()),
        TensorType::Fp64 => le(&c.fp64_contents, count, |x| x.to_le_bytes()),
        TensorType::I32 => le(&c.int_contents, count, |x| x.to_le_bytes()),
        TensorType::I64 => le(&c.int64_contents, count, |x| x.to_le_bytes()),
        TensorType::U8 => {
            if let Some(big) = c.uint_contents.iter().find(|x| **x > 255) {
                return Err(format!("{big} is out of range for UINT8"));
            }
            le(&c.uint_contents, count, |x| [*x as u8])
        }
        TensorType::Fp16 | TensorType::Bf16 => Err(format!(
            "{} has no typed `contents` field: send it in raw_input_contents",
            data::datatype(ty)
        )),
    }
}

/// The node's answer as a `ModelInferResponse`, every output in `raw_output_contents`.
pub fn to_response(r: InferResponse) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(r.outputs.len());
    let mut raw = Vec::with_capacity(r.outputs.len());
    for (name, t) in r.outputs {
        outputs.push(pb::InferOutputTensor {
            name,
            datatype: data::datatype(t.ty).to_string(),
            shape: t.dims.iter().map(|d| i64::from(*d)).collect(),
        });
        raw.push(t.data);
    }
    pb::ModelInferResponse {
        model_name: r.model_name,
        model_version: r.model_version,
        id: r.id.unwrap_or_default(),
        outputs,
        raw_output_contents: raw,
    }
}

/// The flow-control window of each call (and four times it for a connection).
const WINDOW: u32 = 8 << 20;

/// Serves the service on `listener` until `stop`, then lets calls in flight finish for up to
/// `grace`.
pub async fn serve(
    listener: TcpListener,
    inference: Arc<Inference>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("grpc accept failed: {e}");
                    continue;
                }
            },
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let _ = stream.set_nodelay(true);
        let inference = Arc::clone(&inference);
        let service = hyper::service::service_fn(move |req| {
            let inference = Arc::clone(&inference);
            async move { Ok::<_, Infallible>(call(&inference, req).await) }
        });
        // Tensors are large messages: with HTTP/2's default 64 KiB windows a 600 KB image waits
        // for several window updates, a round trip each; let a whole request arrive at once.
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(WINDOW)
            .initial_connection_window_size(4 * WINDOW)
            .max_frame_size(1 << 20)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

/// Binds `addr` for the service.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// One call, by its path.
async fn call(inf: &Inference, req: http::Request<Incoming>) -> http::Response<tonic::body::Body> {
    let token = auth::bearer(req.headers()).map(str::to_string);
    let limit = usize::try_from(inf.max_body()).unwrap_or(usize::MAX);
    let token = token.as_deref();
    match req.uri().path() {
        "/inference.GRPCInferenceService/ServerLive" => {
            unary(req, limit, |_: pb::ServerLiveRequest| async {
                Ok(pb::ServerLiveResponse { live: true })
            })
            .await
        }
        "/inference.GRPCInferenceService/ServerReady" => {
            let ready = inf.ready();
            unary(req, limit, move |_: pb::ServerReadyRequest| async move {
                Ok(pb::ServerReadyResponse { ready })
            })
            .await
        }
        "/inference.GRPCInferenceService/ServerMetadata" => {
            unary(req, limit, |_: pb::ServerMetadataRequest| async {
                Ok(pb::ServerMetadataResponse {
                    name: "tensorlet".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    extensions: super::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
                })
            })
            .await
        }
        "/inference.GRPCInferenceService/ModelReady" => {
            unary(req, limit, |m: pb::ModelRequest| async move {
                match inf.resolve(&m.name, Some(&m.version), token) {
                    Ok(_) => Ok(pb::ModelReadyResponse { ready: true }),
                    // Not there (or not loaded) is an answer here, not an error.
                    Err(e) if matches!(e.kind, Kind::NotFound | Kind::Unavailable) => {
                        Ok(pb::ModelReadyResponse { ready: false })
                    }
                    Err(e) => Err(status(&e)),
                }
            })
            .await
        }
        "/inference.GRPCInferenceService/ModelMetadata" => {
            unary(req, limit, |m: pb::ModelRequest| async move {
                let r = inf.resolve(&m.name, Some(&m.version), token).map_err(|e| status(&e))?;
                let meta = inf.metadata(&r);
                let tensors = |ts: Vec<super::TensorMetadata>| {
                    ts.into_iter()
                        .map(|t| pb::TensorMetadata {
                            name: t.name,
                            datatype: t.datatype,
                            shape: t.shape,
                        })
                        .collect()
                };
                Ok(pb::ModelMetadataResponse {
                    name: meta.name,
                    versions: meta.versions,
                    platform: meta.platform.into(),
                    inputs: tensors(meta.inputs),
                    outputs: tensors(meta.outputs),
                })
            })
            .await
        }
        "/inference.GRPCInferenceService/ModelInfer" => {
            unary(req, limit, |m: pb::ModelInferRequest| async move {
                let answer = async {
                    let r = inf.resolve(&m.model_name, Some(&m.model_version), token)?;
                    let admitted = inf.admit(&r)?;
                    let request = to_request(m)?;
                    inf.infer(&r, &admitted, request).await
                };
                match answer.await {
                    Ok(response) => Ok(to_response(response)),
                    Err(e) => {
                        if matches!(e.kind, Kind::Internal) {
                            tracing::error!(code = "oip_internal", "gRPC ModelInfer failed: {}", e.message);
                        }
                        Err(status(&e))
                    }
                }
            })
            .await
        }
        other => Status::unimplemented(format!(
            "`{}` is not a method this node serves: it implements ServerLive, ServerReady, ModelReady, \
             ServerMetadata, ModelMetadata and ModelInfer of inference.GRPCInferenceService",
            other.escape_default()
        ))
        .into_http(),
    }
}

/// Decodes one request message (within `limit` bytes), runs `f` on it and encodes its answer
/// or status.
async fn unary<Req, Resp, F, Fut>(
    req: http::Request<Incoming>,
    limit: usize,
    f: F,
) -> http::Response<tonic::body::Body>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>> + Send,
{
    let codec = tonic_prost::ProstCodec::<Resp, Req>::default();
    let mut grpc = Grpc::new(codec)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let response = grpc.unary(Once(Some(f)), req).await;
    // tonic refuses a message over the limit as OUT_OF_RANGE (no call here answers that); the
    // protocol's clients expect a size limit as RESOURCE_EXHAUSTED, and the fix named.
    if response
        .headers()
        .get("grpc-status")
        .is_some_and(|s| s == "11")
    {
        return status(&OipError::new(
            Kind::TooLarge,
            format!(
                "the request message is larger than this node's max_infer_body of {limit} bytes"
            ),
        ))
        .into_http();
    }
    response
}

/// A function called once as tonic's unary service.
struct Once<F>(Option<F>);

type Answer<Resp> = Result<tonic::Response<Resp>, Status>;

impl<Req, Resp, F, Fut> UnaryService<Req> for Once<F>
where
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>> + Send,
{
    type Response = Resp;
    type Future = Either<MapOk<Fut, fn(Resp) -> tonic::Response<Resp>>, Ready<Answer<Resp>>>;

    fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
        match self.0.take() {
            Some(f) => {
                let wrap: fn(Resp) -> tonic::Response<Resp> = tonic::Response::new;
                Either::Left(f(request.into_inner()).map_ok(wrap))
            }
            None => Either::Right(ready(Err(Status::internal(
                "a unary call was answered twice",
            )))),
        }
    }
}
