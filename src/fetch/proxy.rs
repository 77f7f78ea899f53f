//! Which proxy an HTTP request goes through: the config's `proxy`, else the one the
//! environment names, minus the hosts of `NO_PROXY`.
//!
//! Evergreen reads the environment itself rather than leaving it to ureq, so that an error
//! can name the proxy and the variable it came from (a device that cannot reach its server
//! because of a stale `HTTPS_PROXY` is otherwise a puzzle), and so that `NO_PROXY` is read
//! as curl reads it: entries trimmed (`localhost, 127.0.0.1`), and `example.com` also
//! covering its subdomains.

use crate::error::{Error, Result};

/// The environment variables naming a proxy, in the order they are tried (ureq's and the
/// order the library always had): the first one set to a usable URL serves every request
/// of an updater whose config names no `proxy`.
pub const PROXY_VARIABLES: [&str; 6] = [
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
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
    /// Hosts reached directly; `*` is every host.
    direct: Vec<String>,
}

impl Via {
    /// The config's `proxy` (no host bypasses it), or `config` error for a URL ureq
    /// cannot use.
    pub(super) fn configured(url: &str) -> Result<Via> {
        let redacted = super::without_passwords(url);
        let proxy = ureq::Proxy::new(url)
            .map_err(|e| Error::config(format!("expected a proxy URL, found {redacted:?}: {e}")))?;
        Ok(Via {
            proxy,
            name: format!("{redacted} (config proxy)"),
            direct: Vec::new(),
        })
    }

    /// The proxy the process's environment names, if any.
    pub(super) fn from_env() -> Option<Via> {
        Via::from_vars(|name| std::env::var(name).ok())
    }

    /// The proxy `var` names: the first of [`PROXY_VARIABLES`] that holds a URL ureq can use
    /// (one that cannot be used is passed over, as ureq did), with `NO_PROXY`'s hosts.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Via> {
        let (name, url, proxy) = PROXY_VARIABLES.iter().find_map(|name| {
            let url = var(name)?;
            let proxy = ureq::Proxy::new(url.trim()).ok()?;
            Some((name, url, proxy))
        })?;
        let direct = NO_PROXY_VARIABLES
            .iter()
            .find_map(|name| var(name))
            .map(|list| no_proxy_hosts(&list))
            .unwrap_or_default();
        Some(Via {
            proxy,
            name: format!("{} (from {name})", super::without_passwords(url.trim())),
            direct,
        })
    }

    /// Whether a request for `url` goes through this proxy.
    pub(super) fn serves(&self, url: &str) -> bool {
        let Some(host) = host_of(url) else {
            return true;
        };
        !self.direct.iter().any(|entry| covers(entry, &host))
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

/// The entries of a `NO_PROXY` list: trimmed, lowercase, without the leading `*.` or `.`
/// (which mean the same as none), IPv6 addresses without brackets.
fn no_proxy_hosts(list: &str) -> Vec<String> {
    list.split(',')
        .map(|entry| {
            let entry = entry.trim();
            let entry = entry
                .strip_prefix("*.")
                .or_else(|| entry.strip_prefix('.'))
                .unwrap_or(entry);
            let entry = entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .unwrap_or(entry);
            entry.to_ascii_lowercase()
        })
        .filter(|entry| !entry.is_empty())
        .collect()
}

/// Whether the `NO_PROXY` entry covers `host`: `*`, the host itself, or a domain it is in.
fn covers(entry: &str, host: &str) -> bool {
    entry == "*"
        || host == entry
        || host
            .strip_suffix(entry)
            .is_some_and(|head| head.ends_with('.'))
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
    Some(host.to_ascii_lowercase())
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
        assert!(Via::from_vars(env(&[])).is_none());
        let via = Via::from_vars(env(&[
            ("http_proxy", "http://low:1"),
            ("HTTPS_PROXY", "http://u:secret@mid:3128"),
        ]))
        .unwrap();
        assert_eq!(via.name(), "http://u:***@mid:3128 (from HTTPS_PROXY)");
        // One that cannot be used is passed over, not an error of every request.
        let via = Via::from_vars(env(&[
            ("ALL_PROXY", "ftp://nope:21"),
            ("http_proxy", "socks5://s:1080"),
        ]))
        .unwrap();
        assert_eq!(via.name(), "socks5://s:1080 (from http_proxy)");
    }

    #[test]
    fn no_proxy_entries_are_trimmed_and_cover_their_subdomains() {
        let via = Via::from_vars(env(&[
            ("HTTP_PROXY", "http://p:3128"),
            (
                "NO_PROXY",
                "localhost, 127.0.0.1 ,.internal.example,*.lan,[::1],,Example.ORG",
            ),
        ]))
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

    #[test]
    fn an_asterisk_sends_everything_direct_and_the_lowercase_list_counts_second() {
        let via = Via::from_vars(env(&[("all_proxy", "http://p:1"), ("no_proxy", " * ")]));
        assert!(!via.unwrap().serves("https://anything.example/"));
        let via = Via::from_vars(env(&[
            ("all_proxy", "http://p:1"),
            ("NO_PROXY", "a.example"),
            ("no_proxy", "*"),
        ]));
        assert!(via.unwrap().serves("https://b.example/"));
    }

    #[test]
    fn the_configured_proxy_serves_every_host_and_a_bad_url_is_a_config_error() {
        let via = Via::configured("http://ops:pw@proxy.lan:3128").unwrap();
        assert!(via.serves("http://127.0.0.1/"));
        assert_eq!(via.name(), "http://ops:***@proxy.lan:3128 (config proxy)");
        let e = Via::configured("ftp://proxy:21").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(e.to_string().contains("expected a proxy URL"), "{e}");
    }
}
