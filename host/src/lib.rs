//! Tensorlet: a serverless WebAssembly function node.
//!
//! A request flows one way through these modules:
//! [`server`] (accept, connections) → [`service`] (route, limits, errors) →
//! [`registry`] (the function's live version) → [`runtime`] (a fresh instance per request).
//! [`store`] persists what [`registry`] owns; [`config`] is read once at start-up.

pub mod anomaly;
pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod desired;
pub mod error;
pub mod fleet;
pub mod key;
pub mod logs;
pub mod manifest;
pub mod metrics;
pub mod nn;
pub mod node_log;
pub mod oip;
pub mod outbound;
pub mod pace;
pub mod records;
pub mod registry;
pub mod rollout;
pub mod runtime;
pub mod server;
pub mod service;
pub mod store;
pub mod time;
pub mod traces;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod test_support;
