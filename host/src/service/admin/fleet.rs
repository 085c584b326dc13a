//! `fleet`: the fleet as this node sees it (operator only), and `?wait=DURATION` on every
//! change: answered only once every live node serves the change, or 504 `fleet_lagging` naming
//! the nodes that do not (the change itself is committed either way).

use std::time::Duration;

use http::{Method, Request, StatusCode, Uri};

use super::super::HttpService;
use super::super::body::{RequestBody, ok};
use super::super::query::pairs;
use super::{Call, Reply, owner};
use crate::config::parse_duration;
use crate::error::ApiError;

/// How long `?wait` (without a value) waits.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest wait accepted.
const MAX_WAIT: Duration = Duration::from_secs(600);

impl HttpService {
    /// `fleet` (GET).
    pub(super) async fn fleet_status<B: RequestBody>(&self, call: Call<'_, B>) -> Reply {
        let Call(caller, segments, req) = call;
        if segments != ["fleet"] {
            return Err(ApiError::not_found(req.uri().path()));
        }
        if owner(caller).is_some() {
            return Err(ApiError::forbidden(
                "the fleet's status needs the operator token",
            ));
        }
        if req.method() != Method::GET {
            return Err(ApiError::method_not_allowed("GET"));
        }
        let Some(fleet) = &self.fleet else {
            return Err(ApiError::not_found_code(
                "not_a_fleet",
                "this node runs alone: add a [fleet] section to its config to run it in a fleet",
            ));
        };
        ok(fleet.view().await)
    }

    /// After a change answered `status`: waits for the fleet when the caller asked to.
    pub(super) async fn wait_for_fleet(
        &self,
        status: StatusCode,
        wait: Option<Duration>,
    ) -> Result<(), ApiError> {
        let (Some(wait), Some(fleet)) = (wait, &self.fleet) else {
            return Ok(());
        };
        if !status.is_success() {
            return Ok(());
        }
        let revision = self.registry.applied().await;
        fleet.wait(revision, wait).await.map_err(|message| {
            ApiError::new_pub(StatusCode::GATEWAY_TIMEOUT, "fleet_lagging", message)
        })
    }
}

/// Takes `wait` out of a change's query string (the routes' own parameters are strict), with
/// its duration: `wait` alone is 30 s.
pub(super) fn take_wait<B>(
    mut req: Request<B>,
) -> Result<(Request<B>, Option<Duration>), ApiError> {
    let Some(query) = req.uri().query() else {
        return Ok((req, None));
    };
    let mut wait = None;
    let mut rest = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs(query)? {
        if k == "wait" {
            let d = if v.is_empty() {
                DEFAULT_WAIT
            } else {
                parse_duration(&v).map_err(|e| {
                    ApiError::invalid_request(format!("bad `wait`: {e:#} (e.g. wait=5s)"))
                })?
            };
            wait = Some(d.min(MAX_WAIT));
        } else {
            rest.append_pair(&k, &v);
        }
    }
    if wait.is_none() {
        return Ok((req, None));
    }
    let rest = rest.finish();
    let path = req.uri().path();
    let uri = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{rest}")
    };
    *req.uri_mut() = uri
        .parse::<Uri>()
        .map_err(|_| ApiError::invalid_request("bad query string"))?;
    Ok((req, wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(uri: &str) -> Result<(String, Option<Duration>), ApiError> {
        let req = Request::post(uri).body(()).unwrap();
        take_wait(req).map(|(req, wait)| (req.uri().to_string(), wait))
    }

    #[test]
    fn wait_is_taken_out_of_the_query() {
        let (uri, wait) =
            taken("/admin/v1/functions/f/versions?memory=1MiB&wait=5s&env=A%3Db").unwrap();
        assert_eq!(uri, "/admin/v1/functions/f/versions?memory=1MiB&env=A%3Db");
        assert_eq!(wait, Some(Duration::from_secs(5)));
        assert_eq!(taken("/x?wait").unwrap(), ("/x".into(), Some(DEFAULT_WAIT)));
        assert_eq!(taken("/x?wait=2h").unwrap().1, Some(MAX_WAIT));
        assert_eq!(taken("/x?memory=1").unwrap(), ("/x?memory=1".into(), None));
        assert_eq!(taken("/x").unwrap(), ("/x".into(), None));
        assert_eq!(taken("/x?wait=soon").unwrap_err().code, "invalid_request");
    }
}
