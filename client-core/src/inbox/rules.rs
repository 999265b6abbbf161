//! The inbox's rules, pure: for a message that opened, what to store and
//! what to show ([`decide`]), and which envelopes to acknowledge
//! ([`ack_of`]): all of them, dropped or not, once what they carried is
//! durable.

use crate::event::ReceivedMessage;
use crate::layers::{self, Introduction, Opened};
use crate::store::{Contact, Status, StoredMessage};
use tern_protocol::pb::{self, content::Body};

/// What to do with a message that opened.
// One short-lived value per envelope: boxing the large variants would buy
// nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Store nothing, show nothing (still acknowledged). The reason is for
    /// the log; `quiet` ones are expected (a repeat) and logged at debug.
    Drop {
        /// Why.
        reason: &'static str,
        /// Expected, not worth a warning.
        quiet: bool,
    },
    /// A stranger introduced itself: store the contact, the session and the
    /// id; show that they are a contact now.
    Introduce(Introduction),
    /// A known contact's hello again (its first copy raced a reply): store
    /// the session and the id; show nothing.
    Rehello(Contact),
    /// A contact gave us a new token to write to them with: store the
    /// contact with it, the session and the id; show nothing.
    Rotate(Contact),
    /// A text: store it, the session and the id; show it.
    Text {
        /// From whom.
        contact: Contact,
        /// The conversation entry.
        entry: StoredMessage,
        /// What the user sees.
        shown: ReceivedMessage,
    },
    /// A contact's receipts for messages we sent: store the session and
    /// the id, apply them (`crate::receipts`); never answered by a receipt.
    Receipts {
        /// From whom.
        contact: Contact,
        /// The ids they acknowledge.
        batch: pb::ReceiptBatch,
    },
    /// A contact is typing: store the session and the id; show it if it
    /// came ephemeral (a stored one is stale); never answered.
    Typing(Contact),
    /// A contact offers a direct path (`crate::direct`): store the session
    /// and the id; the running client dials; never shown or answered with
    /// a receipt.
    PathOffer {
        /// From whom.
        contact: Contact,
        /// Their candidates.
        offer: pb::PathOffer,
    },
}

/// Decide what an opened message means. `known` is the sender if they are
/// a contact, `seen` whether its id was stored before, `now_ms` our clock
/// and `received_at_ms` the home relay's.
pub(crate) fn decide(
    opened: Opened,
    known: Option<Contact>,
    seen: bool,
    now_ms: u64,
    received_at_ms: u64,
) -> Verdict {
    let drop = |reason| Verdict::Drop {
        reason,
        quiet: false,
    };
    if seen {
        return Verdict::Drop {
            reason: "a message stored before",
            quiet: true,
        };
    }
    match (opened.body, known) {
        (Some(Body::Hello(h)), None) => match layers::read_introduction(h) {
            Some(intro) => Verdict::Introduce(intro),
            None => drop("a malformed introduction"),
        },
        (Some(Body::Hello(_)), Some(c)) => Verdict::Rehello(c),
        (Some(Body::TokenRotation(r)), Some(mut c)) => match layers::key32(&r.send_token) {
            Some(token) => {
                c.send_token = token;
                Verdict::Rotate(c)
            }
            None => drop("a malformed token rotation"),
        },
        (Some(Body::Text(t)), Some(c)) => {
            let id = hex::encode(opened.id);
            let entry = StoredMessage {
                id: id.clone(),
                contact: c.identity_key,
                outgoing: false,
                text: t.body.clone(),
                sent_at_ms: opened.sent_at_ms,
                stored_at_ms: now_ms,
                status: Status::Received,
            };
            let shown = ReceivedMessage {
                id,
                from: c.name.clone(),
                text: t.body,
                sent_at_ms: opened.sent_at_ms,
                received_at_ms,
                group: None,
                read: false,
            };
            Verdict::Text {
                contact: c,
                entry,
                shown,
            }
        }
        (Some(Body::Receipts(batch)), Some(contact)) => Verdict::Receipts { contact, batch },
        (Some(Body::Typing(_)), Some(c)) => Verdict::Typing(c),
        (Some(Body::PathOffer(offer)), Some(contact)) => Verdict::PathOffer { contact, offer },
        _ => drop("a message that is neither text nor introduction"),
    }
}

/// The sequence number to acknowledge for an envelope: every pushed one
/// (dropped or not); 0 marks an envelope that was never stored (ephemeral).
pub(crate) fn ack_of(seq: u64) -> Option<u64> {
    (seq != 0).then_some(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact() -> Contact {
        Contact {
            name: "bob".into(),
            identity_key: [1; 32],
            signing_key: [2; 32],
            seal_key: [3; 32],
            relay_url: "r".into(),
            mailbox_id: [4; 16],
            send_token: [5; 32],
            token_given: None,
            added_at_ms: 0,
        }
    }

    fn opened(body: Option<Body>) -> Opened {
        Opened {
            id: [9; 16],
            sent_at_ms: 100,
            body,
        }
    }

    fn text(t: &str) -> Option<Body> {
        Some(layers::text_body(t))
    }

    #[test]
    fn a_text_from_a_contact_is_stored_and_shown() {
        match decide(opened(text("hi")), Some(contact()), false, 150, 120) {
            Verdict::Text { entry, shown, .. } => {
                assert_eq!(entry.text, "hi");
                assert_eq!((entry.sent_at_ms, entry.stored_at_ms), (100, 150));
                assert_eq!(entry.status, Status::Received);
                assert!(!entry.outgoing);
                assert_eq!(shown.from, "bob");
                assert_eq!((shown.sent_at_ms, shown.received_at_ms), (100, 120));
                assert_eq!(shown.id, hex::encode([9; 16]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_repeat_is_dropped_quietly() {
        let v = decide(opened(text("hi")), Some(contact()), true, 0, 0);
        assert!(matches!(v, Verdict::Drop { quiet: true, .. }));
    }

    #[test]
    fn a_text_from_a_stranger_and_an_unknown_body_are_dropped() {
        let v = decide(opened(text("hi")), None, false, 0, 0);
        assert!(matches!(v, Verdict::Drop { quiet: false, .. }));
        let v = decide(opened(None), Some(contact()), false, 0, 0);
        assert!(matches!(v, Verdict::Drop { quiet: false, .. }));
    }

    #[test]
    fn hellos_introduce_strangers_and_only_advance_known_contacts() {
        let hello = Some(Body::Hello(pb::ContactHello::default()));
        // Malformed (no address, no keys): dropped.
        let v = decide(opened(hello.clone()), None, false, 0, 0);
        assert!(matches!(v, Verdict::Drop { quiet: false, .. }));
        let v = decide(opened(hello), Some(contact()), false, 0, 0);
        assert_eq!(v, Verdict::Rehello(contact()));

        let good = pb::ContactHello {
            name: "carol".into(),
            reply_to: Some(layers::address(
                &format!("tern://127.0.0.1:1?fp={}", "00".repeat(32)),
                &[1; 16],
                &[2; 32],
            )),
            signing_key: vec![3; 32].into(),
            seal_key: tern_crypto::SealKey::generate().public().to_vec().into(),
            invite_token: vec![].into(),
            ..Default::default()
        };
        match decide(opened(Some(Body::Hello(good))), None, false, 0, 0) {
            Verdict::Introduce(i) => assert_eq!(i.name, "carol"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn receipts_and_typing_count_only_from_contacts() {
        let batch = pb::ReceiptBatch {
            delivered: vec![vec![9; 16].into()],
            read: vec![],
        };
        let v = decide(
            opened(Some(Body::Receipts(batch.clone()))),
            Some(contact()),
            false,
            0,
            0,
        );
        assert_eq!(
            v,
            Verdict::Receipts {
                contact: contact(),
                batch: batch.clone()
            }
        );
        let v = decide(opened(Some(Body::Receipts(batch))), None, false, 0, 0);
        assert!(matches!(v, Verdict::Drop { quiet: false, .. }));
        let typing = Some(Body::Typing(pb::TypingNotice {}));
        let v = decide(opened(typing.clone()), Some(contact()), false, 0, 0);
        assert_eq!(v, Verdict::Typing(contact()));
        let v = decide(opened(typing), None, false, 0, 0);
        assert!(matches!(v, Verdict::Drop { quiet: false, .. }));
    }

    #[test]
    fn path_offers_count_only_from_contacts() {
        let offer = pb::PathOffer {
            candidates: vec!["192.0.2.1:1".into()],
            ..Default::default()
        };
        let body = Some(Body::PathOffer(offer.clone()));
        let v = decide(opened(body.clone()), Some(contact()), false, 0, 0);
        assert_eq!(
            v,
            Verdict::PathOffer {
                contact: contact(),
                offer
            }
        );
        let v = decide(opened(body), None, false, 0, 0);
        assert!(matches!(v, Verdict::Drop { quiet: false, .. }));
    }

    #[test]
    fn every_stored_envelope_is_acked() {
        assert_eq!(ack_of(5), Some(5));
        assert_eq!(ack_of(0), None);
    }
}
