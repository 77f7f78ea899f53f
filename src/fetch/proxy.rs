//! Which proxy an HTTP request goes through: the config's `proxy`, else the one the
//! environment names for the URL's scheme ([`PROXY_VARIABLES`]), minus the hosts of
//! `NO_PROXY`.
//!
//! Evergreen reads the environment itself rather than leaving it to ureq, so that an error
//! can name the proxy and the variable it came from (a device that cannot reach its server
//! because of a stale `HTTPS_PROXY` is otherwise a puzzle), and so that `NO_PROXY` is read
//! as people write it: entries separated by commas or blanks (`localhost, 127.0.0.1`, which
//! ureq missed the second of), a domain covering its subdomains and its form with a
//! trailing dot, addresses matched as addresses (exactly, or in a CIDR network such as
//! `10.0.0.0/8`), and ureq's prefix forms (`10.*`, `192.168.`) as before.

use crate::error::{Error, Result};
use std::net::IpAddr;

/// The environment variables naming a proxy, in the order they are tried for an
/// `https://` URL: the URL's scheme's own (`HTTPS_PROXY`), then `ALL_PROXY`, then the
/// other scheme's, which the library once took for every URL (a device that sets only
/// that one keeps it). An `http://` URL tries `HTTP_PROXY` first, then `ALL_PROXY`, then
/// `HTTPS_PROXY`. The first one set to a usable URL serves the request, for an updater
/// whose config names no `proxy`.
pub const PROXY_VARIABLES: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "HTTP_PROXY",
    "http_proxy",
];

/// [`PROXY_VARIABLES`] in the order an `http://` URL tries them.
const HTTP_ORDER: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
];

/// The environment variables listing the hosts reached without the environment's proxy;
/// the first one set counts.
pub const NO_PROXY_VARIABLES: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// A proxy and what to call it in errors.
#[derive(Clone)]
pub(super) struct Via {
    pub(super) proxy: ureq::Proxy,
    /// `http://proxy:3128 (config proxy)`, its password redacted.
    name: String,
    /// What `NO_PROXY` sends direct (none for the config's proxy).
    direct: Vec<Direct>,
}

impl Via {
    /// The config's `proxy` (no host bypasses it), or `config` error for a URL ureq
    /// cannot use.
    pub(super) fn configured(url: &str) -> Result<Via> {
        let proxy = usable(url).map_err(|why| {
            let found = super::proxy_without_password(url);
            Error::config(format!("expected a proxy URL, found {found:?}: {why}"))
        })?;
        Ok(Via {
            name: format!("{} (config proxy)", shown(&proxy)),
            proxy,
            direct: Vec::new(),
        })
    }

    /// The proxy the process's environment names for `https://` URLs (`https`) or
    /// `http://` ones, if any.
    pub(super) fn from_env(https: bool) -> Option<Via> {
        Via::from_vars(https, |name| std::env::var(name).ok())
    }

    /// The proxy `var` names for `https://` URLs (`https`) or `http://` ones: the first of
    /// [`PROXY_VARIABLES`], in that scheme's order, that holds a URL ureq can use (one that
    /// cannot be used is passed over, as ureq did), with `NO_PROXY`'s hosts.
    fn from_vars(https: bool, var: impl Fn(&str) -> Option<String>) -> Option<Via> {
        let order = if https { PROXY_VARIABLES } else { HTTP_ORDER };
        let (name, proxy) = order.iter().find_map(|name| {
            let proxy = usable(var(name)?.trim()).ok()?;
            Some((name, proxy))
        })?;
        let direct = NO_PROXY_VARIABLES
            .iter()
            .find_map(|name| var(name))
            .map(|list| no_proxy_entries(&list))
            .unwrap_or_default();
        Some(Via {
            name: format!("{} (from {name})", shown(&proxy)),
            proxy,
            direct,
        })
    }

    /// Whether a request for `url` goes through this proxy.
    pub(super) fn serves(&self, url: &str) -> bool {
        let Some(host) = host_of(url) else {
            return true;
        };
        let ip = host.parse::<IpAddr>().ok();
        !self.direct.iter().any(|entry| entry.covers(&host, ip))
    }

    /// Whether the connection to the proxy itself is TLS.
    pub(super) fn is_https(&self) -> bool {
        self.proxy.protocol() == ureq::ProxyProtocol::Https
    }

    /// The proxy as errors name it.
    pub(super) fn name(&self) -> &str {
        &self.name
    }
}

/// `url` as ureq takes it, or why not; refused too where ureq would quietly go elsewhere:
/// a port past 65535, which it reads as none (port 80).
fn usable(url: &str) -> std::result::Result<ureq::Proxy, String> {
    let proxy = ureq::Proxy::new(url).map_err(|e| e.to_string())?;
    let authority = proxy.uri().authority().map_or("", |a| a.as_str());
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let port = host.rsplit_once(':').map(|(_, port)| port);
    // Digits only: anything else is no port to ureq either (`ops:s3/cret@host` reads as
    // host `ops`), left to fail as it does.
    let digits = |port: &&str| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    match port.filter(digits) {
        Some(port) if !port.parse::<u16>().is_ok_and(|port| port > 0) => {
            Err(format!("expected a port from 1 to 65535, found {port}"))
        }
        _ => Ok(proxy),
    }
}

/// The proxy as ureq took it, for messages: built from its parts, so that no password
/// appears, however the URL was written (`http://ops:s3/cret@host` has a `/` in it).
fn shown(proxy: &ureq::Proxy) -> String {
    let scheme = proxy.uri().scheme_str().unwrap_or("http");
    let user = match (proxy.username(), proxy.password()) {
        (Some(user), Some(_)) => format!("{user}:***@"),
        (Some(user), None) => format!("{user}@"),
        (None, Some(_)) => ":***@".to_owned(),
        (None, None) => String::new(),
    };
    format!("{scheme}://{user}{}:{}", proxy.host(), proxy.port())
}

/// One entry of a `NO_PROXY` list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Direct {
    /// `*`: every host.
    All,
    /// A domain (`example.com`, `.example.com`, `*.example.com`): it and its subdomains.
    Domain(String),
    /// An IP address: that address only.
    Ip(IpAddr),
    /// A network in CIDR notation (`10.0.0.0/8`, `fd00::/8`): its addresses.
    Network(IpAddr, u8),
    /// ureq's prefix forms, which it honoured before Evergreen read the list itself:
    /// `10.*`, `192.168.` (addresses or names that start so).
    Prefix(String),
}

/// The entries of a `NO_PROXY` list, separated by commas or blanks (both are in use).
fn no_proxy_entries(list: &str) -> Vec<Direct> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
        .map(|entry| parse_entry(&entry.to_ascii_lowercase()))
        .collect()
}

fn parse_entry(entry: &str) -> Direct {
    if entry == "*" {
        return Direct::All;
    }
    // A port (`localhost:8080`, `127.0.0.1:8080`, `[::1]:8080`) is left out: the host
    // decides, as for curl. Before the address is read, or an address with a port would be
    // taken for a name and never match.
    let entry = without_port(entry);
    if let Some((net, bits)) = entry.split_once('/') {
        let net = unbracket(net).parse::<IpAddr>();
        let max = |ip: &IpAddr| if ip.is_ipv4() { 32 } else { 128 };
        if let (Ok(ip), Ok(bits)) = (net, bits.parse::<u8>()) {
            if bits <= max(&ip) {
                return Direct::Network(ip, bits);
            }
        }
    }
    if let Ok(ip) = unbracket(entry).parse::<IpAddr>() {
        return Direct::Ip(ip);
    }
    if let Some(prefix) = entry.strip_suffix('*') {
        return Direct::Prefix(prefix.to_owned());
    }
    // `192.168.`: digits and dots ending in a dot are the start of an address.
    if entry.ends_with('.') && entry.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Direct::Prefix(entry.to_owned());
    }
    let domain = entry.strip_prefix("*.").unwrap_or(entry);
    let domain = domain.trim_start_matches('.').trim_end_matches('.');
    Direct::Domain(domain.to_owned())
}

impl Direct {
    /// Whether this entry covers `host` (lowercase, without brackets or a trailing dot),
    /// which is the address `ip` when it is one.
    fn covers(&self, host: &str, ip: Option<IpAddr>) -> bool {
        match (self, ip) {
            (Direct::All, _) => true,
            (Direct::Prefix(prefix), _) => host.starts_with(prefix.as_str()),
            (Direct::Ip(entry), Some(ip)) => *entry == ip,
            (Direct::Network(net, bits), Some(ip)) => in_network(ip, *net, *bits),
            // An address is never matched as a name: `0.0.1` is no domain of `10.0.0.1`.
            (Direct::Domain(domain), None) => {
                host == domain
                    || host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }
            _ => false,
        }
    }
}

/// Whether `ip` is in the network `net`/`bits`.
fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let masked = |v: u128, width: u32| match bits {
        0 => 0,
        b => v >> (width - u32::from(b)),
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            masked(u32::from(a).into(), 32) == masked(u32::from(n).into(), 32)
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => masked(u128::from(a), 128) == masked(u128::from(n), 128),
        _ => false,
    }
}

/// `entry` without a `:port` after its host: a name's or an IPv4 address's (one colon),
/// or a bracketed IPv6 address's (`[::1]:8080`, kept in its brackets). A bare IPv6 address
/// is all colons and has none.
fn without_port(entry: &str) -> &str {
    let digits = |port: &str| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    match entry.rsplit_once(':') {
        Some((host, port)) if digits(port) && host.ends_with(']') => host,
        Some((host, port)) if digits(port) && !host.contains(':') => host,
        _ => entry,
    }
}

fn unbracket(s: &str) -> &str {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s)
}

/// The host of an `http(s)://` URL, lowercase, an IPv6 address without its brackets.
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => host_port.split(':').next()?,
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

impl std::fmt::Debug for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_first_usable_variable_names_the_proxy_and_is_named_in_turn() {
        assert!(Via::from_vars(true, env(&[])).is_none());
        let via = Via::from_vars(
            true,
            env(&[
                ("http_proxy", "http://low:1"),
                ("HTTPS_PROXY", "http://u:secret@mid:3128"),
            ]),
        )
        .unwrap();
        assert_eq!(via.name(), "http://u:***@mid:3128 (from HTTPS_PROXY)");
        // One that cannot be used is passed over, not an error of every request.
        let via = Via::from_vars(
            true,
            env(&[
                ("ALL_PROXY", "ftp://nope:21"),
                ("http_proxy", "socks5://s:1080"),
            ]),
        )
        .unwrap();
        assert_eq!(via.name(), "socks5://s:1080 (from http_proxy)");
    }

    /// As curl, Python and Go read them: the URL's scheme's variable, else `ALL_PROXY`,
    /// else (as the library always did) the other scheme's.
    #[test]
    fn each_scheme_takes_its_own_variable_then_all_proxy_then_the_other() {
        let named = |https: bool, vars: &[(&str, &str)]| {
            Via::from_vars(https, env(vars)).map(|via| via.name().to_owned())
        };
        let all = [
            ("ALL_PROXY", "http://all:1"),
            ("HTTPS_PROXY", "http://tls:2"),
            ("HTTP_PROXY", "http://plain:3"),
        ];
        assert_eq!(
            named(true, &all).unwrap(),
            "http://tls:2 (from HTTPS_PROXY)"
        );
        assert_eq!(
            named(false, &all).unwrap(),
            "http://plain:3 (from HTTP_PROXY)"
        );
        let all_but_one = [
            ("all_proxy", "http://all:1"),
            ("https_proxy", "http://tls:2"),
        ];
        assert_eq!(
            named(false, &all_but_one).unwrap(),
            "http://all:1 (from all_proxy)"
        );
        let one = [("http_proxy", "http://plain:3")];
        assert_eq!(
            named(true, &one).unwrap(),
            "http://plain:3 (from http_proxy)"
        );
        let one = [("HTTPS_PROXY", "http://tls:2")];
        assert_eq!(
            named(false, &one).unwrap(),
            "http://tls:2 (from HTTPS_PROXY)"
        );
    }

    #[test]
    fn no_proxy_entries_are_trimmed_and_cover_their_subdomains() {
        let via = Via::from_vars(
            true,
            env(&[
                ("HTTP_PROXY", "http://p:3128"),
                (
                    "NO_PROXY",
                    "localhost, 127.0.0.1 ,.internal.example,*.lan,[::1],,Example.ORG",
                ),
            ]),
        )
        .unwrap();
        let direct = [
            "http://localhost:8080/x",
            "http://127.0.0.1/x",
            "https://a.internal.example/x",
            "https://internal.example/",
            "http://box.lan/",
            "http://[::1]:80/",
            "https://user:pw@cdn.example.org/blobs",
            "http://EXAMPLE.org?x",
        ];
        for url in direct {
            assert!(!via.serves(url), "{url} should be reached directly");
        }
        let proxied = [
            "http://127.0.0.10/x",
            "https://notexample.org/",
            "http://plan/",
            "https://example.org.evil.com/",
            "http://[::2]/",
        ];
        for url in proxied {
            assert!(via.serves(url), "{url} should go through the proxy");
        }
    }

    /// Lists as they are written: blanks for commas, CIDR networks, trailing dots, ports,
    /// and the prefix forms ureq honoured before the library read the list itself.
    #[test]
    fn no_proxy_reads_networks_prefixes_and_blank_separated_lists() {
        let via = |list: &str| {
            Via::from_vars(
                true,
                env(&[("HTTP_PROXY", "http://p:3128"), ("NO_PROXY", list)]),
            )
            .unwrap()
        };
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "http://10.1.2.3/", false),
            ("10.0.0.0/8", "http://11.1.2.3/", true),
            ("192.168.0.0/16 fd00::/8", "http://[fd12::1]/", false),
            ("192.168.0.0/16 fd00::/8", "http://192.169.0.1/", true),
            ("0.0.0.0/0", "http://8.8.8.8/", false),
            ("192.168.", "http://192.168.1.5/", false),
            ("10.*", "http://10.1.2.3/", false),
            ("updates*", "https://updates.corp/", false),
            ("updates*", "https://www.updates.corp/", true),
            ("example.com.", "https://a.example.com/", false),
            ("example.com", "https://example.com./", false),
            ("localhost 127.0.0.1", "http://127.0.0.1:8080/", false),
            ("localhost\t127.0.0.1", "http://localhost/", false),
            ("localhost:8080", "http://localhost:9090/", false),
            // An address with a port is still an address.
            ("127.0.0.1:8080", "http://127.0.0.1/", false),
            ("[::1]:8080", "http://[::1]:9090/", false),
            ("::1", "http://[::1]/", false),
            ("[::1]:8080", "http://[::2]/", true),
            // An address is matched as one, never as a domain.
            ("0.0.1", "http://10.0.0.1/", true),
            ("10.0.0.1", "http://10.0.0.10/", true),
        ];
        for (list, url, proxied) in cases {
            assert_eq!(via(list).serves(url), *proxied, "NO_PROXY={list:?} {url}");
        }
    }

    #[test]
    fn a_variable_with_a_port_past_65535_is_passed_over() {
        let vars = [
            ("HTTPS_PROXY", "http://p:99999"),
            ("ALL_PROXY", "http://q:1"),
        ];
        let via = Via::from_vars(true, env(&vars)).unwrap();
        assert_eq!(via.name(), "http://q:1 (from ALL_PROXY)");
    }

    #[test]
    fn a_password_is_never_shown_however_the_url_is_written() {
        let via = Via::configured("http://ops:s3/cret@127.0.0.1:9").unwrap();
        assert!(!via.name().contains("cret"), "{}", via.name());
        let via =
            Via::from_vars(true, env(&[("ALL_PROXY", "socks5://u:p%40ss@[::1]:1080")])).unwrap();
        assert_eq!(via.name(), "socks5://u:***@[::1]:1080 (from ALL_PROXY)");
    }

    #[test]
    fn an_asterisk_sends_everything_direct_and_the_lowercase_list_counts_second() {
        let via = Via::from_vars(
            true,
            env(&[("all_proxy", "http://p:1"), ("no_proxy", " * ")]),
        );
        assert!(!via.unwrap().serves("https://anything.example/"));
        let via = Via::from_vars(
            true,
            env(&[
                ("all_proxy", "http://p:1"),
                ("NO_PROXY", "a.example"),
                ("no_proxy", "*"),
            ]),
        );
        assert!(via.unwrap().serves("https://b.example/"));
    }

    #[test]
    fn the_configured_proxy_serves_every_host_and_a_bad_url_is_a_config_error() {
        let via = Via::configured("http://ops:pw@proxy.lan:3128").unwrap();
        assert!(via.serves("http://127.0.0.1/"));
        assert_eq!(via.name(), "http://ops:***@proxy.lan:3128 (config proxy)");
        // ureq reads a port past 65535 as none and goes to port 80: named instead.
        let e = Via::configured("http://ops:pw@proxy.lan:312800").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(
            e.to_string()
                .contains("a port from 1 to 65535, found 312800")
                && !e.to_string().contains("pw@"),
            "{e}"
        );
        let e = Via::configured("ftp://proxy:21").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(e.to_string().contains("expected a proxy URL"), "{e}");
    }
}
