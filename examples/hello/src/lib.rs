//! The smallest useful Tensorlet function: says hello and names the method and path it was asked for.

use tensorlet_sdk::Request;

/// A `String` answer is a 200 with `content-type: text/plain; charset=utf-8`.
fn handle(req: Request) -> String {
    format!(
        "Hello from Tensorlet! You asked for {} {}\n",
        req.method(),
        req.uri().path()
    )
}

tensorlet_sdk::export_handler!(handle);
