//! A small client for the admin API, used by the CLI.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Talks JSON to one node's `/admin/v1`.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// `node` is the node's base URL, e.g. `http://127.0.0.1:8080`; `token` is sent as a
    /// bearer token.
    pub fn new(node: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let base = node.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|e| anyhow::anyhow!("`{node}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => anyhow::bail!(
                "the CLI speaks plain http to nodes, not `{other}`: use http://HOST:PORT"
            ),
            None => anyhow::bail!("`{node}` has no scheme: use http://HOST:PORT"),
        }
        Ok(Self {
            base,
            token: token.map(str::to_string),
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Sends a request without a body to `/admin/v1/{path}`; see [`AdminClient::call`].
    pub async fn send(&self, method: Method, path: &str) -> anyhow::Result<Value> {
        self.call(method, path, Bytes::new(), "application/json")
            .await
    }

    /// Sends a request to `/admin/v1/{path}` and returns the JSON answer, or the node's error
    /// message as the error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> anyhow::Result<Value> {
        let uri = format!("{}/admin/v1/{path}", self.base);
        let mut req = Request::builder()
            .method(method)
            .uri(&uri)
            .header("content-type", content_type);
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req.body(Full::new(body))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the node at {}: {e} (is `tensorlet serve` running? set --node or TENSORLET_NODE)", self.base))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
            anyhow::anyhow!(
                "the node answered HTTP {status} with a non-JSON body: {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        if status.is_success() {
            return Ok(value);
        }
        let code = value["error"]["code"].as_str().unwrap_or("unknown");
        let message = value["error"]["message"].as_str().unwrap_or("no message");
        anyhow::bail!("{message} ({code}, HTTP {})", status.as_u16())
    }
}

/// Percent-encodes a query-string component.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
