//! Calls from a function to another function of the same node (and tenant), by name:
//! `http://{name}.fn.internal/{path}` (allowed like any destination, e.g.
//! `--allow-outbound 'http://*.fn.internal'`). The node sends them to its own listener on the
//! loopback address, as `/fn/[{tenant}/]{name}/{path}`, so the callee runs with its own limits,
//! metrics and logs; they never leave the machine and skip the address policy.
//!
//! Such a request carries this process's secret (made at start, never shown to a guest: the node
//! strips the header from every request a guest sees) and its hop count. The secret stands in for
//! an invoke key of the caller's own tenant; the hop count stops a chain of calls at
//! [`MAX_HOPS`] (`loop-detected`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::HeaderMap;

/// The host suffix that names a function of this node.
pub const SUFFIX: &str = ".fn.internal";

/// How many function-to-function calls deep a request may go.
pub const MAX_HOPS: u8 = 8;

/// The header that carries the process's secret on the node's own requests.
pub const INTERNAL: &str = "x-tensorlet-internal";

/// The header that carries how many calls deep a request is.
pub const HOPS: &str = "x-tensorlet-hops";

/// Where and how the node calls itself.
pub(super) struct Local {
    pub addr: SocketAddr,
    pub secret: String,
}

impl Local {
    /// The node's listener at `listen` (an unspecified address is reached on loopback).
    pub fn new(listen: SocketAddr) -> Option<Self> {
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let secret = crate::auth::secret().ok()?;
        Some(Self {
            addr: SocketAddr::new(ip, listen.port()),
            secret,
        })
    }

    /// How many calls deep `headers` say a request is, if the node sent it itself.
    pub fn hops(&self, headers: &HeaderMap) -> Option<u8> {
        let sent = headers.get(INTERNAL)?.to_str().ok()?;
        if !crate::auth::matches(sent, &crate::auth::hash(&self.secret)) {
            return None;
        }
        let hops = headers
            .get(HOPS)
            .and_then(|h| h.to_str().ok()?.parse().ok());
        Some(hops.unwrap_or(1).min(MAX_HOPS))
    }
}

/// The function a `{name}.fn.internal` host names, if it is one.
pub fn function_name(host: &str) -> Option<&str> {
    let name = host.strip_suffix(SUFFIX)?;
    crate::key::is_valid_name(name).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_node_s_own_secret_carries_hops() {
        let local = Local::new("0.0.0.0:8080".parse().unwrap()).unwrap();
        assert_eq!(local.addr, "127.0.0.1:8080".parse().unwrap());
        let mut h = HeaderMap::new();
        assert_eq!(local.hops(&h), None);
        h.insert(INTERNAL, "guess".parse().unwrap());
        h.insert(HOPS, "3".parse().unwrap());
        assert_eq!(local.hops(&h), None);
        h.insert(INTERNAL, local.secret.parse().unwrap());
        assert_eq!(local.hops(&h), Some(3));
        h.insert(HOPS, "200".parse().unwrap());
        assert_eq!(local.hops(&h), Some(MAX_HOPS));
        assert_eq!(function_name("resize.fn.internal"), Some("resize"));
        assert_eq!(function_name("Resize.fn.internal"), None);
        assert_eq!(function_name(".fn.internal"), None);
        assert_eq!(function_name("resize.example.com"), None);
    }
}
