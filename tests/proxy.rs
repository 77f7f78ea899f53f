//! Proxies: the config's `proxy` and the environment's (`HTTPS_PROXY`, `NO_PROXY`), through
//! real loopback proxies speaking HTTP `CONNECT` and SOCKS5, with the real CLI.

mod common;
mod require;
mod support;

use common::{Device, Repo};
use evergreen::fetch::{NO_PROXY_VARIABLES, PROXY_VARIABLES};
use serde_json::json;
use support::proxy::{Tunnel, TunnelProxy};
use support::TestServer;

/// A repository with 1.0.0 on stable, served on loopback, and a device at 0.9.0 whose
/// config has `extra` (a failed request is not retried, so failures are quick).
fn setup(product: &str, extra: serde_json::Value) -> (Repo, TestServer, Device) {
    let repo = Repo::new(product);
    let file = repo.scratch("src").join("settings.json");
    std::fs::write(&file, "{}").unwrap();
    repo.release("stable", "1.0.0", "x86_64-linux", &[("config", &file)], &[]);
    let server = TestServer::serve(&repo.root);
    let mut config = json!({"current_version": "0.9.0", "limits": {"retries": 0}});
    for (key, value) in extra.as_object().unwrap() {
        config[key] = value.clone();
    }
    let dev = repo.device("dev", &server.url(), config);
    (repo, server, dev)
}

/// The server's `127.0.0.1:PORT`, as a tunnel to it is asked for.
fn address(server: &TestServer) -> String {
    server.url().trim_start_matches("http://").to_owned()
}

/// The environment of a CLI run: `vars` set, every other proxy variable cleared (the
/// machine running the tests may have its own).
fn env<'a>(vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all: Vec<(&str, &str)> = PROXY_VARIABLES
        .iter()
        .chain(&NO_PROXY_VARIABLES)
        .map(|name| (*name, ""))
        .collect();
    for (name, value) in vars {
        all.retain(|(n, _)| n != name);
        all.push((name, value));
    }
    all
}

#[test]
fn the_configured_connect_proxy_carries_the_check_and_the_download() {
    let proxy = TunnelProxy::start(Tunnel::Connect { password: None });
    let (_repo, server, dev) = setup("com.acme.proxy", json!({"proxy": proxy.url()}));
    // The environment's proxy is not used when the config names one.
    let out = dev.run_env(
        "update",
        &["--yes", "--json"],
        &env(&[("HTTPS_PROXY", "http://127.0.0.1:9")]),
    );
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let tunnels = proxy.tunnels();
    assert!(!tunnels.is_empty(), "nothing went through the proxy");
    assert!(
        tunnels
            .iter()
            .all(|t| t.target == address(&server) && t.opened),
        "{tunnels:?}"
    );
    // Each request of the check and the download went through a tunnel of its own.
    assert_eq!(tunnels.len(), server.log().len(), "{tunnels:?}");
    let status = dev.status();
    let trial = status["trial"]["slot"].as_str().expect("a slot on trial");
    assert_eq!(status["slots"][trial]["version"], "1.0.0", "{status}");
}

#[test]
fn a_socks5_proxy_carries_the_check() {
    let proxy = TunnelProxy::start(Tunnel::Socks5);
    let (_repo, server, dev) = setup("com.acme.socks", json!({"proxy": proxy.url()}));
    let out = dev.run_env("check", &["--json"], &env(&[]));
    assert_eq!(out.status.code(), Some(10), "{}", common::stderr(&out));
    let tunnels = proxy.tunnels();
    assert!(
        !tunnels.is_empty() && tunnels.iter().all(|t| t.target == address(&server)),
        "{tunnels:?}"
    );
}

#[test]
fn the_environments_proxy_is_used_unless_no_proxy_lists_the_host() {
    let proxy = TunnelProxy::start(Tunnel::Connect { password: None });
    let (_repo, server, dev) = setup("com.acme.envproxy", json!({}));
    let url = proxy.url();
    let out = dev.run_env("check", &[], &env(&[("HTTPS_PROXY", &url)]));
    assert_eq!(out.status.code(), Some(10), "{}", common::stderr(&out));
    let through = proxy.tunnels().len();
    assert!(through > 0, "the check did not go through HTTPS_PROXY");
    // Entries with spaces after the commas, as people write them.
    let out = dev.run_env(
        "check",
        &[],
        &env(&[("https_proxy", &url), ("NO_PROXY", "localhost, 127.0.0.1")]),
    );
    assert_eq!(out.status.code(), Some(10), "{}", common::stderr(&out));
    assert_eq!(
        proxy.tunnels().len(),
        through,
        "NO_PROXY's 127.0.0.1 was proxied"
    );
    assert!(server.log().len() > through);
}

#[test]
fn a_proxy_that_cannot_be_reached_is_named_in_the_error() {
    let (_repo, _server, dev) = setup("com.acme.deadproxy", json!({}));
    let dead = support::RefusingPort::bind();
    let url = format!("http://127.0.0.1:{}", dead.port);
    let out = dev.run_env("check", &[], &env(&[("HTTP_PROXY", &url)]));
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error[network]: "), "{err}");
    assert!(
        err.contains(&format!(", through proxy {url} (from HTTP_PROXY)")),
        "{err}"
    );
}

#[test]
fn a_proxy_refusing_the_credentials_is_named_without_the_password() {
    let proxy = TunnelProxy::start(Tunnel::Connect {
        password: Some("right".into()),
    });
    let wrong = proxy.url().replace(":right@", ":hunter2@");
    let (_repo, server, dev) = setup("com.acme.proxyauth", json!({"proxy": wrong}));
    let out = dev.run_env("check", &[], &env(&[]));
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("407"), "{err}");
    assert!(
        err.contains(&format!(
            ", through proxy {} (config proxy)",
            wrong.replace("hunter2", "***")
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password was printed: {err}");
    assert!(server.log().is_empty(), "a request passed a refusing proxy");
    // The right password opens the tunnel, sent as Basic credentials.
    dev.edit_config(|c| c["proxy"] = json!(proxy.url()));
    dev.expect("check", &[], 10);
    let last = proxy.tunnels().pop().unwrap();
    assert!(last.opened, "{last:?}");
    assert!(last.authorization.is_some_and(|a| a.starts_with("Basic ")));
}

#[test]
fn an_https_proxy_without_usable_ca_roots_is_an_error_not_a_crash() {
    // A listening proxy, so that a request would get as far as the TLS handshake with it.
    let proxy = TunnelProxy::start(Tunnel::Connect { password: None });
    let url = proxy.url().replace("http://", "https://");
    let (_repo, _server, dev) = setup(
        "com.acme.tlsproxy",
        json!({"proxy": url, "ca_roots": "/nonexistent/roots.pem"}),
    );
    let out = dev.run_env("check", &[], &env(&[]));
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error[io]: GET http://127.0.0.1:")
            && err.contains(&format!(
                " through proxy {url} (config proxy): reading CA roots /nonexistent/roots.pem"
            )),
        "{err}"
    );
}

/// A proxy that refuses the tunnel (its policy: 403; credentials: 407; the origin
/// unreachable from it: 502): the error names the proxy and its status, not the origin as
/// if it had answered. A refusal (4xx) is the proxy's answer, `http_status`, and asked
/// once: retrying it only made every check wait out the backoff (about 7 s with the
/// defaults). A 5xx is the network beyond the proxy, retried as a server's 5xx is.
#[test]
fn a_proxy_refusing_the_tunnel_is_named_with_its_status() {
    for (status, kind, asked) in [
        (403u16, "http_status", 1),
        (407, "http_status", 1),
        (502, "network", 3),
    ] {
        let proxy = TunnelProxy::start(Tunnel::Refuse(status));
        let limits = json!({"retries": 2, "retry_backoff_ms": 10});
        let config = json!({"proxy": proxy.url(), "limits": limits});
        let (_repo, server, dev) = setup("com.acme.refused", config);
        let out = dev.run_env("check", &[], &env(&[]));
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.starts_with(&format!("error[{kind}]: ")),
            "{status}: {err}"
        );
        assert_eq!(proxy.tunnels().len(), asked, "{status}: {err}");
        assert!(
            err.contains(&format!("proxy server responded {status}"))
                && err
                    .trim_end()
                    .ends_with(&format!(", through proxy {} (config proxy)", proxy.url())),
            "{err}"
        );
        assert!(server.log().is_empty(), "a request passed a refusing proxy");
        assert_eq!(proxy.tunnels()[0].target, address(&server));
    }
}

/// A proxy that drops the download mid-body: the next attempt, through the proxy again,
/// resumes after the bytes kept (a `Range` request), and the update completes.
#[test]
fn a_download_cut_by_the_proxy_resumes_through_it() {
    let proxy = TunnelProxy::start(Tunnel::Cut { after: 600_000 });
    let repo = Repo::new("com.acme.cutproxy");
    let file = repo.scratch("src").join("payload.dat");
    std::fs::write(&file, support::noise(2 << 20, 7)).unwrap();
    repo.release(
        "stable",
        "1.0.0",
        "x86_64-linux",
        &[("payload", &file)],
        &[],
    );
    let server = TestServer::serve(&repo.root);
    let config = json!({
        "current_version": "0.9.0",
        "proxy": proxy.url(),
        "limits": {"retries": 2, "retry_backoff_ms": 10},
    });
    let dev = repo.device("dev", &server.url(), config);
    let out = dev.run_env("update", &["--yes"], &env(&[]));
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert!(proxy.was_cut(), "no tunnel was cut: {:?}", proxy.tunnels());
    let blobs: Vec<_> = (server.log().into_iter())
        .filter(|r| r.path.contains("blobs/"))
        .collect();
    assert!(
        blobs
            .iter()
            .any(|r| r.range.as_deref().is_some_and(|r| r != "bytes=0-")),
        "no resume: {blobs:?}"
    );
    assert_eq!(proxy.tunnels().len(), server.log().len());
}

/// A proxy URL written without its scheme (`ops:pw@proxy:3128`, as `HTTPS_PROXY` is often
/// set) is refused by the config's check, and the error, in every command that loads the
/// config, shows its password as `***`, as for a URL with a scheme.
#[test]
fn a_proxy_url_without_a_scheme_is_refused_without_its_password() {
    let (_repo, _server, dev) = setup(
        "com.acme.schemeless",
        json!({"proxy": "ops:s3cret@127.0.0.1:3128"}),
    );
    for (cmd, args) in [("check", &["--json"][..]), ("status", &["--json"][..])] {
        let out = dev.run_env(cmd, args, &env(&[]));
        let err = common::stderr(&out);
        let all = format!("{err}{}", String::from_utf8_lossy(&out.stdout));
        assert!(err.starts_with("error[config]: "), "{cmd}: {err}");
        assert!(!all.contains("s3cret"), "{cmd} printed the password: {all}");
        assert!(
            err.contains("found \"ops:***@127.0.0.1:3128\""),
            "{cmd}: {err}"
        );
    }
}

/// A port past 65535 (a digit too many) is a config error naming it: ureq alone reads
/// such a port as none and would have sent every request to the proxy's port 80.
#[test]
fn a_proxy_port_past_65535_is_a_config_error() {
    let (_repo, _server, dev) = setup(
        "com.acme.bigport",
        json!({"proxy": "http://ops:s3cret@127.0.0.1:312800"}),
    );
    let out = dev.run_env("check", &["--json"], &env(&[]));
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error[config]: "), "{err}");
    assert!(
        err.contains("expected a port from 1 to 65535, found 312800") && !err.contains("s3cret"),
        "{err}"
    );
}

/// The environment read as curl, Python, Go and apt read it: an `http://` server goes
/// through `HTTP_PROXY` when it is set, whatever `HTTPS_PROXY` or `ALL_PROXY` say
/// (`ALL_PROXY` only for a scheme without a variable of its own); a device that sets only
/// the other scheme's variable still uses it.
#[test]
fn an_http_server_goes_through_http_proxy_before_https_proxy_and_all_proxy() {
    let (_repo, server, dev) = setup("com.acme.envorder", json!({}));
    let http = TunnelProxy::start(Tunnel::Connect { password: None });
    let other = TunnelProxy::start(Tunnel::Connect { password: None });
    let (http_url, other_url) = (http.url(), other.url());
    let cases: [&[(&str, &str)]; 3] = [
        &[("HTTPS_PROXY", &other_url), ("HTTP_PROXY", &http_url)],
        &[("ALL_PROXY", &other_url), ("http_proxy", &http_url)],
        &[
            ("all_proxy", &other_url),
            ("HTTPS_PROXY", &other_url),
            ("HTTP_PROXY", &http_url),
        ],
    ];
    for vars in cases {
        let before = http.tunnels().len();
        let out = dev.run_env("check", &[], &env(vars));
        assert_eq!(out.status.code(), Some(10), "{}", common::stderr(&out));
        assert!(
            http.tunnels().len() > before && other.tunnels().is_empty(),
            "{vars:?}: HTTP_PROXY carried {} tunnel(s), the other {:?}",
            http.tunnels().len() - before,
            other.tunnels()
        );
    }
    // Only HTTPS_PROXY set: it serves http:// too, as it always did.
    let out = dev.run_env("check", &[], &env(&[("HTTPS_PROXY", &other_url)]));
    assert_eq!(out.status.code(), Some(10), "{}", common::stderr(&out));
    assert!(!other.tunnels().is_empty());
    assert!(other.tunnels().iter().all(|t| t.target == address(&server)));
}
