//! The `tern-relay` binary as an operator runs it: it prints its URL, `url`
//! prints the same one from the data directory, SIGTERM stops it cleanly,
//! and the same data gives the same identity on the next start.
//!
//! Moved here from `relay/tests/` so it shares the one process harness
//! ([`tern_tests::process`]); `tern-relay` cannot dev-depend on this crate,
//! which depends on it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tern_tests::process::{relay_cmd, run_bounded, RelayProcess};

/// Check `tern://127.0.0.1:PORT?fp=HEX` has a real port and 64 lowercase
/// hex digits.
fn check_url(url: &str) {
    let rest = url.strip_prefix("tern://127.0.0.1:").expect(url);
    let (port, fp) = rest.split_once("?fp=").expect(url);
    assert_eq!(fp.len(), 64, "{url}");
    assert!(
        fp.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{url}"
    );
    let port: u16 = port.parse().expect(url);
    assert_ne!(port, 0, "{url}");
}

#[test]
fn run_prints_its_url_url_agrees_and_sigterm_stops_it() {
    let data = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start_in(data.path());
    let url = relay.url().to_string();
    check_url(&url);

    let out = run_bounded(
        relay_cmd()
            .args(["url", "--data"])
            .arg(data.path())
            .args(["--listen", &format!("127.0.0.1:{}", relay.port())]),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), url);

    let status = relay.terminate();
    assert!(status.success(), "exit after SIGTERM: {status:?}");

    // The same data gives the same identity on the next start.
    let mut again = RelayProcess::start_in(data.path());
    assert_eq!(
        again.url().split_once("?fp=").unwrap().1,
        url.split_once("?fp=").unwrap().1
    );
    assert!(again.terminate().success());
}

#[test]
fn url_without_relay_data_fails() {
    let empty = tempfile::tempdir().unwrap();
    let out = run_bounded(relay_cmd().args(["url", "--data"]).arg(empty.path()));
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(!out.stderr.is_empty());
}

#[test]
fn a_developers_tern_settings_do_not_reach_the_relay() {
    // Each would make `run` fail or listen elsewhere if it got through.
    // (Every test here starts from a cleared environment, so setting these
    // in this process changes nothing for the others.)
    std::env::set_var("TERN_RELAY_CONFIG", "/nonexistent/tern-relay.toml");
    std::env::set_var("TERN_RELAY_PUBLIC_HOST", "relay.invalid");
    std::env::set_var("TERN_LOG", "not a valid filter [");
    let relay = RelayProcess::start();
    check_url(relay.url());
}
