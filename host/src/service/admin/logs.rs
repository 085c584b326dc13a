//! `GET functions/{name}/logs?since=..&version=..&request_id=..&limit=..&follow=true`: a
//! function's guest output. Plain, one JSON document of the newest matching lines; with
//! `follow=true`, a streamed answer of JSON lines (one object per line), the matching lines
//! stored so far and then each new one as it is written, until the client goes away.
//! Parameters are checked strictly: each refusal says what to send instead.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::super::HttpService;
use super::super::body::{BoxBody, BoxError, ok};
use super::super::query::pairs;
use super::Reply;
use crate::api::{LogLineView, Logs};
use crate::config::parse_duration;
use crate::error::ApiError;
use crate::key::FunctionKey;
use crate::logs::{Follow, LogLine, LogQuery, MAX_LIMIT};

/// A logs call's parameters.
struct LogsParams {
    query: LogQuery,
    /// `version`, as given: resolved against the function's versions and aliases.
    version: Option<String>,
    follow: bool,
}

impl HttpService {
    /// The logs of function `key`, as `query` (the URL's query string) asks.
    pub(super) async fn function_logs(&self, key: &FunctionKey, query: &str) -> Reply {
        let LogsParams {
            mut query,
            version,
            follow,
        } = logs_params(query)?;
        query.version = version.map(|v| self.version_id(key, v));
        if follow {
            let follow = self.registry.follow_logs(key, query).await?;
            return Ok(follow_response(follow));
        }
        let lines = self.registry.logs(key, query).await?;
        ok(Logs {
            name: key.name().to_string(),
            lines: lines.into_iter().map(view).collect(),
        })
    }

    /// The version id `version` names: `live`, an alias or a retained version resolve to their
    /// id; anything else is taken as an id or its prefix (versions no longer retained still
    /// have lines).
    fn version_id(&self, key: &FunctionKey, version: String) -> String {
        let routes = self.registry.routes(key);
        match routes.and_then(|r| r.at(&version)) {
            Some(deployed) => deployed.function.version.to_string(),
            None => version,
        }
    }
}

/// Checks the parameters; unknown ones are refused, so that a typo does not show every line.
fn logs_params(query: &str) -> Result<LogsParams, ApiError> {
    let mut p = LogsParams {
        query: LogQuery::default(),
        version: None,
        follow: false,
    };
    for (k, v) in pairs(query)? {
        match &*k {
            "since" => p.query.since = Some(since(&v)?),
            "version" => p.version = Some(version(&v)?),
            "request_id" => p.query.request_id = Some(request_id(&v)?),
            "limit" => p.query.limit = limit(&v)?,
            "follow" => {
                p.follow = match &*v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad("follow", &v, "use follow=true or follow=false")),
                }
            }
            _ => {
                return Err(ApiError::invalid_request(format!(
                    "unknown parameter `{}`: logs take since, version, request_id, limit and follow",
                    shown(&k)
                )));
            }
        }
    }
    Ok(p)
}

/// `since`: a duration back from now (`10m`), or an RFC 3339 time.
fn since(text: &str) -> Result<u64, ApiError> {
    if let Ok(back) = parse_duration(text) {
        return Ok(crate::time::now_secs().saturating_sub(back.as_secs()));
    }
    crate::time::parse_rfc3339(text).ok_or_else(|| {
        bad(
            "since",
            text,
            "write a duration back from now like 30s, 10m, 2h or 7d, or an RFC 3339 time like 2025-01-31T12:00:00Z",
        )
    })
}

/// `version`: an id, a digest (`sha256:` or not), a prefix of one (at least 4 hex digits), an
/// alias or `live`.
fn version(text: &str) -> Result<String, ApiError> {
    let text = text.strip_prefix("sha256:").unwrap_or(text);
    let name_like = text
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let hex = text.bytes().all(|b| b.is_ascii_hexdigit());
    if !name_like || text.is_empty() || text.len() > 64 || (hex && text.len() < 4) {
        return Err(bad(
            "version",
            text,
            "use a version id (or at least its first 4 hex digits), an alias or live: see `tensorlet versions NAME`",
        ));
    }
    Ok(text.to_string())
}

/// `request_id`: what a response's `x-request-id` says.
fn request_id(text: &str) -> Result<String, ApiError> {
    if text.is_empty() || text.len() > 128 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "request_id",
            text,
            "use the x-request-id header of the request's response",
        ));
    }
    Ok(text.to_string())
}

/// `limit`: how many of the newest lines.
fn limit(text: &str) -> Result<usize, ApiError> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(bad(
            "limit",
            text,
            &format!("use a number of lines from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// A parameter's value refused, with how to fix it.
fn bad(parameter: &str, value: &str, fix: &str) -> ApiError {
    ApiError::invalid_request(format!("bad `{parameter}`: `{}`: {fix}", shown(value)))
}

/// A client's text, quoted back safely: escaped and cut short.
fn shown(text: &str) -> String {
    let escaped: String = text.escape_default().take(64).collect();
    if escaped.len() < text.escape_default().count() {
        format!("{escaped}…")
    } else {
        escaped
    }
}

/// The answer of `follow=true`: one JSON object per line, sent as each line comes; it ends
/// when the function is deleted or the node stops, and is dropped when the client goes away.
fn follow_response(follow: Follow) -> Response<BoxBody> {
    let lines = futures_util::stream::unfold(follow, |mut follow| async move {
        let line = follow.next().await?;
        let mut json = serde_json::to_vec(&view(line)).unwrap_or_default();
        json.push(b'\n');
        Some((Ok::<_, BoxError>(Frame::data(Bytes::from(json))), follow))
    });
    let mut r = Response::new(StreamBody::new(lines).boxed_unsync());
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The API's view of a stored guest output line.
fn view(l: LogLine) -> LogLineView {
    LogLineView {
        time: l.time,
        version: l.version,
        request_id: l.request_id,
        stream: l.stream.as_str().to_string(),
        line: l.line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked() {
        let p = logs_params("since=10m&version=3f2a9c41d0be&request_id=ab12-3&limit=5&follow=true")
            .unwrap();
        let now = crate::time::now_secs();
        assert!((now - 601..=now - 599).contains(&p.query.since.unwrap()));
        assert_eq!(p.version.as_deref(), Some("3f2a9c41d0be"));
        assert_eq!(p.query.request_id.as_deref(), Some("ab12-3"));
        assert_eq!((p.query.limit, p.follow), (5, true));
        let p = logs_params("since=2025-01-31T12%3A00%3A00Z&version=live").unwrap();
        assert_eq!(p.query.since, Some(1_738_324_800));
        assert_eq!(p.query.limit, crate::logs::DEFAULT_LIMIT);
        assert!(!p.follow);
        for bad in [
            "since=yesterday",
            "since=",
            "since=10x",
            "version=abc",
            "version=A1B2",
            "version=%2E%2E",
            "request_id=%0A",
            "limit=0",
            "limit=100000",
            "limit=-1",
            "follow=yes",
            "lines=5",
        ] {
            let e = logs_params(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} was accepted"));
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        let e = logs_params("since=%1B%5B31mnow").err().unwrap();
        assert!(e.message.contains("\\u{1b}[31mnow"), "{}", e.message);
        assert!(
            e.message.contains("10m"),
            "says how to fix it: {}",
            e.message
        );
    }
}
