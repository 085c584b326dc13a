//! Which destinations a function may call: `scheme://host[:port]` patterns, as Spin's
//! `allowed_outbound_hosts` writes them. The scheme is `http`, `https` or `*`; the host is a DNS
//! name, `*` (any host), `*.example.com` (its subdomains, not itself), or an IP address
//! (`[...]` for IPv6); the port is a number, `*`, or absent for the scheme's own (80, 443).
//! Nothing else: no path, query or user. Names compare without case.

use std::fmt;
use std::net::IpAddr;

/// One allowed destination pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: SchemePat,
    host: HostPat,
    port: PortPat,
    text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemePat {
    Any,
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPat {
    Any,
    /// A lowercase DNS name.
    Exact(String),
    /// `*.example.com` as `.example.com`.
    Suffix(String),
    Ip(IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPat {
    Any,
    /// The scheme's own port.
    Default,
    One(u16),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for HostPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "`{}` is not an outbound host pattern ({why}): write SCHEME://HOST[:PORT], e.g. \
                 https://api.example.com, https://*.example.com, http://10.0.0.5:8080 or *://*:*",
                text.escape_default()
            )
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "*" => SchemePat::Any,
            "http" => SchemePat::Http,
            "https" => SchemePat::Https,
            _ => return Err(bad("the scheme is http, https or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "only a scheme, a host and a port: no path, query or user",
            ));
        }
        // `[v6]:port`, `[v6]`, `host:port`, `host`.
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (addr, after) = v6.split_once(']').ok_or_else(|| bad("an unclosed `[`"))?;
                let port = match after {
                    "" => None,
                    p => Some(p.strip_prefix(':').ok_or_else(|| bad("text after `]`"))?),
                };
                let ip = addr
                    .parse()
                    .map_err(|_| bad("not an IPv6 address in `[...]`"))?;
                (HostPat::Ip(ip), port)
            }
            None => {
                let (host, port) = match rest.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (rest, None),
                };
                (
                    host_pat(host)
                        .ok_or_else(|| bad("not a host name, *, *.NAME or an address"))?,
                    port,
                )
            }
        };
        let port = match port {
            None => PortPat::Default,
            Some("*") => PortPat::Any,
            Some(p) => PortPat::One(
                p.parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("the port is 1 to 65535 or *"))?,
            ),
        };
        Ok(HostPattern {
            scheme,
            host,
            port,
            text: text.to_string(),
        })
    }
}

/// A host pattern's host part, if it is one.
fn host_pat(host: &str) -> Option<HostPat> {
    if host == "*" {
        return Some(HostPat::Any);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(HostPat::Ip(ip));
    }
    let (suffix, name) = match host.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, host),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return None;
    }
    let name = name.to_ascii_lowercase();
    Some(if suffix {
        HostPat::Suffix(format!(".{name}"))
    } else {
        HostPat::Exact(name)
    })
}

/// The port a URL without one uses.
pub fn default_port(https: bool) -> u16 {
    if https { 443 } else { 80 }
}

impl HostPattern {
    /// Whether a request to `host:port` over https (or http) matches. `host` is as the URL has
    /// it (a name or an address, IPv6 without brackets).
    pub fn matches(&self, https: bool, host: &str, port: u16) -> bool {
        let scheme = match self.scheme {
            SchemePat::Any => true,
            SchemePat::Http => !https,
            SchemePat::Https => https,
        };
        let port_ok = match self.port {
            PortPat::Any => true,
            PortPat::Default => port == default_port(https),
            PortPat::One(p) => port == p,
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host_ok = match &self.host {
            HostPat::Any => true,
            HostPat::Exact(name) => host == *name,
            HostPat::Suffix(suffix) => host.ends_with(suffix.as_str()),
            HostPat::Ip(ip) => host.parse::<IpAddr>().is_ok_and(|h| h == *ip),
        };
        scheme && port_ok && host_ok
    }

    /// Whether everything this pattern allows, `ceiling` allows too.
    pub fn within(&self, ceiling: &HostPattern) -> bool {
        let scheme = ceiling.scheme == SchemePat::Any || ceiling.scheme == self.scheme;
        let port = match (ceiling.port, self.port) {
            (PortPat::Any, _) => true,
            (_, PortPat::Any) => false,
            (c, s) if c == s => true,
            // A default port is one fixed port once the scheme is known.
            (PortPat::Default, PortPat::One(p)) => match self.scheme {
                SchemePat::Http => p == 80,
                SchemePat::Https => p == 443,
                SchemePat::Any => false,
            },
            (PortPat::One(p), PortPat::Default) => match self.scheme {
                SchemePat::Http => p == 80,
                SchemePat::Https => p == 443,
                SchemePat::Any => false,
            },
            _ => false,
        };
        let host = match (&ceiling.host, &self.host) {
            (HostPat::Any, _) => true,
            (HostPat::Suffix(c), HostPat::Exact(h)) => h.ends_with(c.as_str()),
            (HostPat::Suffix(c), HostPat::Suffix(s)) => s.ends_with(c.as_str()),
            (c, s) => c == s,
        };
        scheme && port && host
    }
}

/// A function's allowed destinations; empty allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<HostPattern>);

impl AllowList {
    /// Parses every pattern, or says which one is wrong.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        patterns
            .iter()
            .map(|p| p.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(AllowList)
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first pattern that allows the request, if any (it names the destination in metrics).
    pub fn find(&self, https: bool, host: &str, port: u16) -> Option<&HostPattern> {
        self.0.iter().find(|p| p.matches(https, host, port))
    }

    /// The first pattern of this list that covers everything `p` allows.
    pub fn find_covering(&self, p: &HostPattern) -> Option<&HostPattern> {
        self.0.iter().find(|c| p.within(c))
    }

    /// The first pattern that no pattern of `ceiling` covers.
    pub fn outside<'a>(&'a self, ceiling: &AllowList) -> Option<&'a HostPattern> {
        self.0
            .iter()
            .find(|p| !ceiling.0.iter().any(|c| p.within(c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> HostPattern {
        text.parse().unwrap()
    }

    #[test]
    fn patterns_parse_like_spins() {
        for good in [
            "https://api.example.com",
            "http://*.Example.com:8080",
            "*://*:*",
            "http://127.0.0.1:9000",
            "https://[::1]:8443",
            "https://[::1]",
            "https://api.example.com/",
        ] {
            assert!(good.parse::<HostPattern>().is_ok(), "{good}");
        }
        for bad in [
            "api.example.com",
            "ftp://x.com",
            "https://x.com/path",
            "https://u@x.com",
            "https://x.com:0",
            "https://x.com:99999",
            "https://*x.com",
            "https://x..com",
            "https://-x.com",
            "https://[::1",
            "https://",
        ] {
            let e = bad.parse::<HostPattern>().unwrap_err();
            assert!(e.contains("SCHEME://HOST[:PORT]"), "{bad}: {e}");
        }
    }

    #[test]
    fn requests_match_scheme_host_and_port() {
        let api = p("https://api.example.com");
        assert!(api.matches(true, "API.example.com", 443));
        assert!(api.matches(true, "api.example.com.", 443));
        assert!(!api.matches(false, "api.example.com", 80));
        assert!(!api.matches(true, "api.example.com", 8443));
        assert!(!api.matches(true, "evil.com", 443));
        let sub = p("http://*.example.com:*");
        assert!(sub.matches(false, "a.b.example.com", 1234));
        assert!(!sub.matches(false, "example.com", 80), "subdomains only");
        assert!(!sub.matches(false, "badexample.com", 80));
        let any = p("*://*:*");
        assert!(any.matches(true, "x", 1) && any.matches(false, "10.0.0.1", 80));
        let v6 = p("http://[::1]:8080");
        assert!(v6.matches(false, "::1", 8080) && !v6.matches(false, "::2", 8080));
        let ip = p("http://127.0.0.1:9000");
        assert!(ip.matches(false, "127.0.0.1", 9000));
        assert!(
            !ip.matches(false, "localhost", 9000),
            "names are not resolved to match"
        );
    }

    #[test]
    fn a_pattern_is_within_a_ceiling_only_if_it_allows_no_more() {
        let within = |a: &str, c: &str| p(a).within(&p(c));
        assert!(within("https://api.example.com", "https://*"));
        assert!(within("https://a.example.com", "*://*.example.com:*"));
        assert!(within("https://*.a.example.com", "https://*.example.com"));
        assert!(within("https://x.com:443", "https://*"));
        assert!(within("http://x.com", "*://*:80"));
        assert!(!within("https://x.com:8443", "https://*"));
        assert!(!within("*://x.com", "https://*"));
        assert!(!within("https://example.com", "https://*.example.com"));
        assert!(!within("https://*", "https://*.example.com"));
        assert!(!within("https://x.com:*", "https://*:443"));
        let ceiling = AllowList::parse(&["https://*", "http://*.internal:*"]).unwrap();
        let wanted =
            AllowList::parse(&["https://a.com", "http://db.internal:5432", "http://a.com"])
                .unwrap();
        assert_eq!(
            wanted.outside(&ceiling).map(|p| p.to_string()),
            Some("http://a.com".into())
        );
    }
}
