//! What the relay refuses, and that refusing never hurts anyone else:
//! made-up tokens, malformed, oversize, truncated and abandoned frames; and
//! a revoked token, whose sends are answered as stored and dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tern_client::Status;
use tern_protocol::limits::{DEFAULT_MAX_ENVELOPE, DEFAULT_MAX_FRAME};
use tern_protocol::pb::{self, control_response::Response, relay_frame::Frame, ErrorCode};
use tern_protocol::{STREAM_CONTROL, STREAM_MESSAGES};
use tern_relay::store::MailboxStore;
use tern_tests::{
    befriend, code, connect, invite_address, random16, random32, send_frame, texts, RawStream,
    TestRelay, TestUser,
};

fn error_code(frame: Frame) -> ErrorCode {
    match frame {
        Frame::Error(e) => code(&e),
        other => panic!("expected an Error frame, got {other:?}"),
    }
}

fn control_error_code(response: Response) -> ErrorCode {
    match response {
        Response::Error(e) => code(&e),
        other => panic!("expected an error response, got {other:?}"),
    }
}

fn result_code(r: &pb::SendResult) -> Option<ErrorCode> {
    r.error.as_ref().map(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_are_dropped_unseen_made_up_ones_refused_and_others_still_get_through() {
    let relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    let mut carol = TestUser::new(&relay, "carol").await;
    befriend(&mut bob, &mut alice).await;
    befriend(&mut bob, &mut carol).await;
    alice.send("bob", "before the block").await;
    assert_eq!(texts(&bob.receive_messages(1).await), ["before the block"]);

    bob.client.block("alice").await.unwrap();
    // Blocking is invisible: the blocked sender's send is answered as
    // stored, leaves the outbox as sent, and is never delivered.
    alice
        .client
        .send_text("bob", "after the block")
        .await
        .expect("a blocked sender is answered as any other");
    assert_eq!(alice.client.outbox_len().unwrap(), 0);
    let last = alice.client.history("bob", 10).unwrap().pop().unwrap();
    assert_eq!(last.text, "after the block");
    assert_eq!(last.status, Status::Sent);

    // Carol's token is her own; Bob can still write to Alice.
    carol.send("bob", "still welcome").await;
    let got = bob.receive_messages(1).await;
    assert_eq!(texts(&got), ["still welcome"]);
    assert_eq!(got[0].from, "carol");
    bob.send("alice", "I can still write").await;
    assert_eq!(
        texts(&alice.receive_messages(1).await),
        ["I can still write"]
    );

    // Tokens that were never Bob's, on the wire.
    let (other_mailbox, other_token) = invite_address(&carol.client.invite().await.unwrap());
    let (_dialer, link) = connect(relay.url()).await;
    let mut stream = RawStream::open(&link, STREAM_MESSAGES).await;
    let bobs = bob.mailbox();
    let made_up = random32();
    let cases: [(&str, &[u8], &[u8]); 3] = [
        ("made-up token", &bobs, &made_up),
        ("another mailbox's token", &bobs, &other_token),
        ("short token", &bobs, &made_up[..5]),
    ];
    for (i, (what, mailbox, token)) in cases.into_iter().enumerate() {
        let r = stream
            .send(&send_frame(i as u64 + 1, mailbox, token, &random16(), b"x"))
            .await;
        assert_eq!(result_code(&r), Some(ErrorCode::TokenInvalid), "{what}");
        assert_eq!(r.seq, 0, "{what}");
    }
    // The same stream still takes a send with a real token.
    let r = stream
        .send(&send_frame(
            9,
            &other_mailbox,
            &other_token,
            &random16(),
            b"x",
        ))
        .await;
    assert_eq!(result_code(&r), None);
    assert_eq!(r.seq, 0, "a sender is told no seq");
    link.close();

    // Nothing refused reached Bob.
    assert_eq!(bob.receive_rest().await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversize_truncated_and_abandoned_frames_are_refused_harmlessly() {
    let mut relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;
    let (mailbox, token) = invite_address(&bob.client.invite().await.unwrap());
    let (_dialer, link) = connect(relay.url()).await;
    let too_large = (DEFAULT_MAX_FRAME as u32 + 1).to_be_bytes();

    // (a) A control request that is not protobuf.
    let mut s = RawStream::open(&link, STREAM_CONTROL).await;
    s.write_body(&[0xff, 0xff, 0xff, 0xff]).await;
    s.finish();
    assert_eq!(
        control_error_code(s.read_control().await),
        ErrorCode::Malformed
    );
    assert!(
        s.read_body().await.unwrap().is_none(),
        "no end after the answer"
    );

    // (b) A length prefix over the limit, answered before any body is sent.
    let mut s = RawStream::open(&link, STREAM_CONTROL).await;
    s.write(&too_large).await;
    assert_eq!(
        control_error_code(s.read_control().await),
        ErrorCode::FrameTooLarge
    );

    // (c) A stream kind the relay does not know.
    let mut s = RawStream::open(&link, 0x7f).await;
    assert_eq!(error_code(s.read_relay().await), ErrorCode::Unsupported);
    assert!(s.read_body().await.unwrap().is_none());

    // (d) On the message stream: garbage, then an empty frame, then a valid
    // send on the same stream.
    let mut m = RawStream::open(&link, STREAM_MESSAGES).await;
    m.write_body(&[0xff, 0xff, 0xff]).await;
    assert_eq!(error_code(m.read_relay().await), ErrorCode::Malformed);
    m.write_body(&[]).await;
    assert_eq!(error_code(m.read_relay().await), ErrorCode::Unsupported);
    let ok_id = random16();
    let ok = m
        .send(&send_frame(1, &mailbox, &token, &ok_id, b"opaque"))
        .await;
    assert_eq!(result_code(&ok), None);
    assert_eq!(ok.seq, 0, "a sender is told no seq");

    // (e) A payload over max_envelope_bytes, in a frame under the limit; ids
    // of the wrong length. The stream goes on.
    let big = vec![0u8; DEFAULT_MAX_ENVELOPE + 1];
    let r = m
        .send(&send_frame(2, &mailbox, &token, &random16(), &big))
        .await;
    assert_eq!(result_code(&r), Some(ErrorCode::EnvelopeTooLarge));
    assert_eq!(r.seq, 0);
    let r = m
        .send(&send_frame(3, &mailbox[..3], &token, &random16(), b"x"))
        .await;
    assert_eq!(result_code(&r), Some(ErrorCode::Malformed));
    let r = m
        .send(&send_frame(4, &mailbox, &token, &[1, 2], b"x"))
        .await;
    assert_eq!(result_code(&r), Some(ErrorCode::Malformed));
    // Subscribing needs authentication.
    m.write_msg(&pb::ClientFrame {
        frame: Some(pb::client_frame::Frame::Subscribe(pb::Subscribe {
            window: 0,
        })),
    })
    .await;
    assert_eq!(
        error_code(m.read_relay().await),
        ErrorCode::NotAuthenticated
    );
    let last_id = random16();
    let r = m
        .send(&send_frame(5, &mailbox, &token, &last_id, b"opaque"))
        .await;
    assert_eq!(result_code(&r), None);
    // An oversize length ends the message stream: it cannot be resynced.
    m.write(&too_large).await;
    assert_eq!(error_code(m.read_relay().await), ErrorCode::FrameTooLarge);
    assert!(!matches!(m.read_body().await, Ok(Some(_))));

    // (f) Frames cut short, then the stream finished: no answer.
    for kind in [STREAM_CONTROL, STREAM_MESSAGES] {
        let mut s = RawStream::open(&link, kind).await;
        s.write(&[0, 0, 0, 10, 1, 2]).await;
        s.finish();
        let answer = s.read_body().await;
        assert!(!matches!(answer, Ok(Some(_))), "answered {answer:?}");
    }
    link.close();

    // (g) Streams opened and abandoned, then the connection dropped: no kind
    // byte, a kind byte alone, half a length prefix, half a body.
    let (_dialer2, link2) = connect(relay.url()).await;
    let mut abandoned = Vec::new();
    for bytes in [
        &[][..],
        &[STREAM_CONTROL],
        &[STREAM_MESSAGES, 0, 0],
        &[STREAM_CONTROL, 0, 0, 0, 50, 8, 1],
    ] {
        let mut s = RawStream::open_bare(&link2).await;
        s.write(bytes).await;
        abandoned.push(s);
    }
    drop(abandoned);
    link2.close();

    // Only the two accepted sends are stored: no refused one. (A sender is
    // told no seq, so this is read from the relay's store.)
    let store = relay.open_store().await;
    let held = store.fetch(&mailbox, 0, 1000).unwrap();
    let raw: Vec<_> = held
        .iter()
        .filter(|e| e.payload.len() == big.len() || e.payload[..] == b"x"[..])
        .collect();
    assert!(raw.is_empty(), "a refused send was stored");
    let mut opaque: Vec<[u8; 16]> = held
        .iter()
        .filter(|e| e.payload[..] == b"opaque"[..])
        .map(|e| e.message_id)
        .collect();
    opaque.sort();
    let mut expected = vec![ok_id, last_id];
    expected.sort();
    assert_eq!(opaque, expected);
    drop(store);
    relay.restart().await;

    // The relay still serves honest users, and Bob's client shrugs off the
    // opaque payloads deposited above.
    alice.send("bob", "still here").await;
    assert_eq!(texts(&bob.receive_messages(1).await), ["still here"]);
    bob.send("alice", "me too").await;
    assert_eq!(texts(&alice.receive_messages(1).await), ["me too"]);
    assert_eq!(bob.receive_rest().await, []);
}
