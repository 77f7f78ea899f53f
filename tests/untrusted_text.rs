//! Text from outside Evergreen as the CLI prints it: a server's headers before any
//! signature check, signed but publisher-written fields, the config. Every line printed
//! is Evergreen's own, bounded, and shows control characters escaped.

mod common;
mod require;
mod support;

use common::Repo;
use support::{Fault, TestServer};

fn publish(repo: &Repo, version: &str, channel: &str, notes: &str) {
    repo.release_settings(channel, version, &["--notes", notes]);
}

/// A repository of `product` offering 1.0.0 on stable with `notes`, served on loopback,
/// and a device at 0.9.0 checking it.
fn served(product: &str, notes: &str) -> (Repo, TestServer, common::Device) {
    let repo = Repo::new(product);
    publish(&repo, "1.0.0", "stable", notes);
    let server = TestServer::serve(&repo.root);
    let dev = repo.device(
        "dev",
        &server.url(),
        serde_json::json!({"current_version": "0.9.0"}),
    );
    (repo, server, dev)
}

/// A server (not yet authenticated by any signature) answering with a `Location` of
/// 60,000 bytes, the most its headers may hold: the `error[<kind>]` line, the state's
/// history and `status` show its start and say how long it was, rather than a 60 KB
/// line that a log splits in two (the second half no longer an `error[` line) and that
/// the state keeps.
#[test]
fn a_huge_location_header_is_cut_in_the_error_line_and_the_history() {
    let (_repo, server, dev) = served("com.acme.hugelocation", "n");
    let location = format!("ftp://mirror/{}", "a".repeat(60_000));
    server.set_fault("channels/stable.json", Fault::Redirect(location.clone()));

    let err = dev.fails("check", &[]);
    assert!(err.starts_with("error[http_status]: GET "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.len() < 1024, "a line of {} bytes", err.len());
    assert!(
        err.contains(&format!("({} bytes in all)", location.len())),
        "{err}"
    );
    let state = std::fs::read(dev.state.join("state.json")).unwrap();
    assert!(state.len() < 16 * 1024, "a state of {} bytes", state.len());
    let status = dev.expect("status", &[], 0);
    for line in status.lines() {
        assert!(line.len() < 1024, "a line of {} bytes", line.len());
    }
}

/// Whether `text` holds a byte that drives a terminal (C0 controls but the newline, DEL)
/// or the UTF-8 of a C1 control.
fn has_control(text: &str) -> bool {
    text.chars().any(|c| c != '\n' && c.is_control())
}

/// Release notes are the publisher's words, shown by `check`: a newline in them goes on
/// a line of its own under the first, indented, so that none reads as an `error[` line of
/// Evergreen's; ESC, BEL and CR are shown escaped rather than sent to the terminal (where
/// `ESC ] 0 ;` sets the window title and `ESC [ 2 K` erases the line).
#[test]
fn release_notes_reach_the_terminal_escaped_and_indented() {
    let notes =
        "Fixes the reconnect loop.\nerror[signature]: forged\x1b]0;title\x07\x1b[2K\rover\u{9b}31m";
    let (_repo, _server, dev) = served("com.acme.notes", notes);

    let text = dev.expect("check", &[], 10);
    assert!(!has_control(&text), "{text:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(&"  notes: Fixes the reconnect loop."),
        "{text}"
    );
    assert!(
        lines.contains(
            &r"         error[signature]: forged\u{1b}]0;title\u{7}\u{1b}[2K\rover\u{9b}31m"
        ),
        "{text}"
    );
    // The JSON output has the notes as they were signed.
    let offer: serde_json::Value =
        serde_json::from_str(&dev.expect("check", &["--json"], 10)).unwrap();
    assert_eq!(offer["notes"], notes);
}

/// A config key is the config author's text, quoted back by serde in `error[config]`: its
/// ESC and BEL are shown escaped on the one stderr line, not sent to the terminal.
#[test]
fn an_unknown_config_key_is_quoted_escaped() {
    let repo = Repo::new("com.acme.badkey");
    let dev = repo.device(
        "dev",
        "http://127.0.0.1:9",
        serde_json::json!({"\u{1b}]0;title\u{7}\u{1b}[2Kforged": 1}),
    );
    let err = dev.fails("check", &[]);
    assert!(err.starts_with("error[config]: "), "{err}");
    assert!(!has_control(&err), "{err:?}");
    assert!(
        err.contains(r"unknown field `\u{1b}]0;title\u{7}\u{1b}[2Kforged`"),
        "{err}"
    );
}

/// `channel`'s manifest signed again with a field named `field` added, as a newer or a
/// careless publisher's tool could write it, with the next sequence.
fn resign_with_field(repo: &Repo, channel: &str, field: &str) {
    use evergreen::trust;
    let path = repo.root.join(format!("channels/{channel}.json"));
    let key = trust::SecretKey::from_base64(&std::fs::read_to_string(&repo.manifest_key).unwrap())
        .unwrap();
    let keys = trust::KeySet::new(vec![key.public()], 1).unwrap();
    let envelope = std::fs::read(&path).unwrap();
    let payload = trust::open(&envelope, trust::MANIFEST_TYPE, &keys, 1 << 20).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    manifest[field] = 1.into();
    manifest["sequence"] = (manifest["sequence"].as_u64().unwrap() + 1).into();
    let payload = serde_json::to_vec(&manifest).unwrap();
    std::fs::write(&path, trust::seal(trust::MANIFEST_TYPE, &payload, &[&key])).unwrap();
}

/// A field name in a signed manifest is the publisher's text, which serde quotes back when
/// this build has no such field: a host linking the library gets the error's message (a C
/// host from `evg_last_error_message`, to log as it is) on one line, its newline, ESC and
/// BEL escaped, as the CLI's `error[…]` line shows it.
#[test]
fn an_unknown_manifest_field_reaches_a_library_host_escaped() {
    let (repo, _server, dev) = served("com.acme.fieldname", "n");
    resign_with_field(&repo, "stable", "\u{1b}]0;title\u{7}\nerror[forged]: x");
    let quoted = r"unknown field `\u{1b}]0;title\u{7}\nerror[forged]: x`";

    let config = evergreen::Config::from_file(&dev.config).unwrap();
    let updater = evergreen::Updater::builder(config).build().unwrap();
    let err = updater.check().unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::WrongMetadata, "{err}");
    assert!(!err.message().contains(char::is_control), "{err:?}");
    assert!(err.message().contains(quoted), "{err}");

    let line = dev.fails("check", &[]);
    assert!(line.starts_with("error[wrong_metadata]: "), "{line}");
    assert!(!has_control(&line), "{line:?}");
    assert!(line.contains(quoted), "{line}");
}

/// The history keeps a failed check's error line as the library gave it, which may quote
/// a server's or a publisher's text; `status` prints every entry on one line of its own,
/// its control characters escaped.
#[test]
fn status_prints_each_history_entry_on_one_line_escaped() {
    let (_repo, server, dev) = served("com.acme.history", "n");
    server.set_fault("channels/stable.json", Fault::Status(500));
    dev.fails("check", &[]);
    let mut state = dev.state_file();
    let entry = state["history"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .rfind(|h| h["event"] == "check_failed")
        .unwrap();
    let detail = entry["detail"].as_str().unwrap().to_owned();
    entry["detail"] = format!("{detail} \u{1b}[2K\r\nerror[forged]: x").into();
    std::fs::write(
        dev.state.join("state.json"),
        serde_json::to_vec_pretty(&state).unwrap(),
    )
    .unwrap();

    let text = dev.expect("status", &[], 0);
    assert!(!has_control(&text), "{text:?}");
    assert!(!text.lines().any(|l| l.starts_with("error[")), "{text}");
    assert!(text.contains(r"\u{1b}[2K\r\nerror[forged]: x"), "{text}");
}

/// The process holding the work lock is named from its `/proc/<pid>/comm`, which any
/// process that can open the lock file sets to what it likes (`prctl(PR_SET_NAME)`, 15
/// bytes): a newline and ESC there are shown escaped in the `evergreen: waiting …` line,
/// not a second line reading `error[…]`.
#[cfg(target_os = "linux")]
#[test]
fn the_lock_holders_process_name_is_shown_escaped() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let repo = Repo::new("com.acme.holder");
    publish(&repo, "1.0.0", "stable", "n");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    dev.expect("check", &[], 10);
    let lock = dev.state.join("work.lock");
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import ctypes, fcntl, sys, time\n\
             ctypes.CDLL(None).prctl(15, b'x\\nerror[f]\\x1b[2K', 0, 0, 0)\n\
             f = open(sys.argv[1])\n\
             fcntl.flock(f, fcntl.LOCK_EX)\n\
             print('locked', flush=True)\n\
             time.sleep(60)",
        ])
        .arg(&lock)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    let mut said = String::new();
    std::io::BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert_eq!(said, "locked\n");

    let mut cmd = Command::new(common::bin());
    cmd.args(["check", "--config"]).arg(&dev.config);
    let mut check = common::Watched::start(&mut cmd);
    let line = check.wait_for_line("waiting for");
    holder.kill().unwrap();
    holder.wait().unwrap();
    let out = check.finish();
    assert_eq!(out.status.code(), Some(10), "the check after the wait");
    let rest = String::from_utf8_lossy(&out.stderr);
    assert!(
        line.ends_with(r"(x\nerror[f]\u{1b}[2K)"),
        "{line:?} then {rest:?}"
    );
    assert!(!rest.lines().any(|l| l.starts_with("error[")), "{rest:?}");
}

/// A loopback server answering every request (at most `n`, each within 5 s) with `reply`,
/// bytes written by hand.
fn answer_with(reply: Vec<u8>, n: usize) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let thread = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut served = 0;
        while served < n && std::time::Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            };
            served += 1;
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = stream.write_all(&reply);
        }
    });
    (url, thread)
}

/// A `Content-Encoding` of 60,000 bytes on an answer that is no envelope: the hint that
/// names the coding shows its start and how long it was.
#[test]
fn a_huge_content_encoding_is_cut_in_the_error_line() {
    let repo = Repo::new("com.acme.hugecoding");
    let coding = "x".repeat(60_000);
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nJUNK"
    );
    let (url, server) = answer_with(reply.into_bytes(), 4);
    let dev = repo.device("dev", &url, serde_json::json!({"current_version": "0.9.0"}));

    let err = dev.fails("check", &[]);
    assert!(err.starts_with("error["), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.len() < 1024, "a line of {} bytes", err.len());
    assert!(err.contains("(60000 bytes in all)"), "{err}");
    drop(server);
}

/// A file name in the repository is whoever made the file's choice: `verify` names a
/// stray temp file in a `warning:` line of its own, its newline and ESC shown escaped
/// rather than starting an `error[` line or driving the terminal.
#[test]
fn verify_names_a_stray_temp_file_escaped() {
    let repo = Repo::new("com.acme.straytemp");
    publish(&repo, "1.0.0", "stable", "n");
    std::fs::write(
        repo.root
            .join("channels")
            .join("x\nerror[signature]: forged\x1b[2K.tmp-1"),
        b"",
    )
    .unwrap();
    let out = common::run(&["verify", repo.root.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!has_control(&err), "{err:?}");
    assert!(!err.lines().any(|l| l.starts_with("error[")), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with("warning: ")
            && l.contains(r"x\nerror[signature]: forged\u{1b}[2K.tmp-1 is a temp file")),
        "{err}"
    );
}
