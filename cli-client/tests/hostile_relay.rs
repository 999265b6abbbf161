//! A hostile relay cannot freeze a client. Bob's relay turns hostile: it
//! completes the handshake with the certificate Bob's invite pinned, then
//! never answers (keep-alives hold the connection open). `tern send` to Bob
//! gives up at its deadline with the message still queued, and `tern recv`
//! still receives from Alice's honest home relay, though the message to Bob
//! still waits in the outbox; a send to Carol's relay is delivered while
//! the same command still waits on Bob's. Bob's own `tern recv` fails with
//! a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use tern_tests::hostile::HostileRelay;
use tern_tests::process::{ok, received, tern, tern_cmd, RelayProcess};

#[test]
fn a_silent_relay_times_out_a_send_and_receiving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("alice"),
        dir.path().join("bob"),
        dir.path().join("carol"),
    );
    let home = RelayProcess::start();
    let mut bobs = RelayProcess::start();
    ok(&a, &["init", "--relay", home.url(), "--name", "alice"]);
    ok(&c, &["init", "--relay", home.url(), "--name", "carol"]);
    ok(&b, &["init", "--relay", bobs.url(), "--name", "bob"]);
    for (who, name) in [(&b, "bob"), (&c, "carol")] {
        let code = ok(who, &["invite"]);
        ok(&a, &["accept", code.trim(), "--name", name]);
        ok(who, &["recv"]);
    }

    // Bob's relay turns hostile on the same address and certificate.
    let (port, data) = (bobs.port(), bobs.data_dir().to_path_buf());
    bobs.kill();
    let _hostile = HostileRelay::start(&data, port);

    // Bounded by the harness's process deadline (60 s): the send's own
    // deadline (20 s) ends it, with the message kept for later.
    let out = tern(&a, &["send", "bob", "into the void"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("queued "), "{stdout}");
    assert!(stdout.contains("did not answer in time"), "{stdout}");

    // Sends to other relays do not wait for the silent one: Carol gets a
    // message while the command that sent it is still stuck retrying the
    // one for Bob (which cannot end before its 20 s deadline).
    let mut beside = tern_cmd(&a, &["send", "carol", "meanwhile"])
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(received(&c));
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got, [("alice".to_string(), "meanwhile".to_string())]);
    assert!(
        beside.try_wait().unwrap().is_none(),
        "the send was still waiting on Bob's relay"
    );
    let out = beside.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sent "));

    // Receiving goes on beside the stuck send.
    ok(&c, &["send", "alice", "from carol"]);
    let got: Vec<Value> = ok(&a, &["recv", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let texts: Vec<(&str, &str)> = got
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| (e["from"].as_str().unwrap(), e["text"].as_str().unwrap()))
        .collect();
    assert_eq!(texts, [("carol", "from carol")], "{got:?}");
    let history = ok(&a, &["history", "bob"]);
    assert!(
        history.trim_end().ends_with("into the void (queued)"),
        "{history}"
    );

    // Bob, whose own relay it is, gets a typed timeout, not a hang.
    let out = tern(&b, &["recv"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("did not answer in time"), "{stderr}");
}
