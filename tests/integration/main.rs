//! Integration tests: start the real `tensorlet` binary and talk HTTP to it.
//!
//! Every test starts its own node (`tensorlet serve --listen 127.0.0.1:0`) on a fresh data dir
//! under `$TMPDIR/tensorlet-tests/`, deploys guest fixtures from `tests/fixtures` (built once per
//! test run for `wasm32-wasip2`, see `support::fixture`) and checks the behaviour that README.md
//! promises: routes, status codes, error JSON, CLI output, persistence and limits.
//!
//! Run: `cargo test -p tensorlet --test integration`.

mod support;

mod aliases;
mod anomalies;
mod cli_json;
mod clients;
mod compat;
mod dashboard;
mod example_classify_image;
mod example_detect_speech;
mod example_embed_text;
mod fleet;
mod fleet_faults;
mod fleet_oci;
mod fleet_parts;
mod fleet_rollout;
mod hostile;
mod lifecycle;
mod limits;
mod logs;
mod nn;
mod oip;
mod oip_tenants;
mod ops;
mod outbound;
mod outbound_local;
mod outbound_tls;
mod persistence;
mod pinned;
mod rollouts;
mod scaffold;
mod sdk;
mod sdk_stream;
mod shadow;
mod tenants;
mod traces;
mod uploads;
