//! A Tensorlet function: `GET` answers a greeting; `POST` a JSON body `{"name": "..."}` and it
//! answers `{"greeting": "Hello, ...!"}`. Every request runs in a fresh instance, so nothing is
//! kept between requests.

use serde::{Deserialize, Serialize};
use tensorlet_sdk::{Error, IntoResponse, Json, Method, Request, Response, StatusCode};

/// The function's name, as deployed.
const NAME: &str = "{{name}}";

#[derive(Deserialize)]
struct Greet {
    name: String,
}

#[derive(Serialize)]
struct Greeting {
    greeting: String,
}

/// An `Err` is answered as `{"error": {"code", "message"}}` with its status, the node's own
/// error shape, so `?` is all the error handling a handler needs.
fn handle(req: Request) -> Result<Response, Error> {
    match *req.method() {
        Method::GET => {
            let text = format!("Hello from {NAME}! You asked for {}\n", req.uri().path());
            Ok(text.into_response())
        }
        Method::POST => {
            // A body that is not this JSON is a 400 `invalid_json` that says what is wrong.
            let Json(greet): Json<Greet> = Json::from_request(&req)?;
            let name = greet.name.trim();
            if name.is_empty() {
                return Err(Error::bad_request(
                    "empty_name",
                    "`name` is empty: send {\"name\": \"...\"}",
                ));
            }
            let greeting = Greeting {
                greeting: format!("Hello, {name}!"),
            };
            Ok((StatusCode::OK, Json(greeting)).into_response())
        }
        _ => Err(Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET, or POST {\"name\": \"...\"}",
        )),
    }
}

tensorlet_sdk::export_handler!(handle);
