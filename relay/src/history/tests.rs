//! The history service over the real sled engine in a temp dir, with a
//! driven clock: expiry, paging, quotas, and that one account can neither
//! read nor delete another's blobs.

use super::*;
use crate::clock::ManualClock;
use crate::core::ConnAuth;
use ed25519_dalek::{Signer, SigningKey};
use std::sync::Arc;
use tern_protocol::history::history_signed_bytes;
use tern_protocol::pb::{self, control_request::Request, control_response::Response};
use tern_protocol::ErrorCode;

const EXPORTER: [u8; 32] = [5; 32];
const DAY: u64 = 24 * 60 * 60 * 1000;

struct Fixture {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    service: HistoryService,
    conn: ConnAuth,
}

fn fixture(quota: HistoryQuota) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SledHistory::open(&dir.path().join("history")).unwrap();
    let clock = ManualClock::new(1_000 * DAY);
    let mut limits = HistoryLimits::from_limits(&crate::config::Limits::default());
    limits.quota = quota;
    let service = HistoryService::new(Arc::new(store), Arc::new(clock.clone()), limits);
    Fixture {
        _dir: dir,
        clock,
        service,
        conn: ConnAuth::authenticated([1; 16]),
    }
}

fn roomy() -> HistoryQuota {
    HistoryQuota {
        account_bytes: 1 << 20,
        account_blobs: 1_000,
        total_bytes: 0,
    }
}

/// Sign `req` as `key`, claiming account `claimed` (normally key's own).
fn signed(
    key: &SigningKey,
    claimed: [u8; 32],
    exporter: &[u8],
    mut req: Request,
) -> pb::ControlRequest {
    let auth = Some(pb::HistoryAuth {
        account_key: claimed.to_vec().into(),
        signature: Default::default(),
    });
    match &mut req {
        Request::HistoryPut(r) => r.auth = auth,
        Request::HistoryPage(r) => r.auth = auth,
        Request::HistoryDelete(r) => r.auth = auth,
        _ => unreachable!(),
    }
    let mut req = pb::ControlRequest { request: Some(req) };
    let sig = key.sign(&history_signed_bytes(exporter, &req).unwrap());
    match &mut req.request {
        Some(Request::HistoryPut(r)) => {
            r.auth.as_mut().unwrap().signature = sig.to_bytes().to_vec().into()
        }
        Some(Request::HistoryPage(r)) => {
            r.auth.as_mut().unwrap().signature = sig.to_bytes().to_vec().into()
        }
        Some(Request::HistoryDelete(r)) => {
            r.auth.as_mut().unwrap().signature = sig.to_bytes().to_vec().into()
        }
        _ => unreachable!(),
    }
    req
}

fn put(tag: u8, blobs: &[(u64, &[u8])], keep_days: u32) -> Request {
    Request::HistoryPut(pb::HistoryPut {
        auth: None,
        blobs: blobs
            .iter()
            .map(|(bucket, c)| pb::HistoryBlobIn {
                tag: vec![tag; 16].into(),
                bucket_ms: *bucket,
                ciphertext: c.to_vec().into(),
            })
            .collect(),
        keep_days,
    })
}

fn page(tag: u8, before_ms: u64, cursor: &[u8], limit: u32) -> Request {
    Request::HistoryPage(pb::HistoryPage {
        auth: None,
        tag: vec![tag; 16].into(),
        before_ms,
        cursor: cursor.to_vec().into(),
        limit,
    })
}

impl Fixture {
    fn call(&self, key: &SigningKey, req: Request) -> Response {
        let req = signed(key, key.verifying_key().to_bytes(), &EXPORTER, req);
        self.service
            .control(&self.conn, &EXPORTER, &req)
            .unwrap()
            .response
            .unwrap()
    }

    fn page_all(&self, key: &SigningKey, tag: u8) -> Vec<u64> {
        match self.call(key, page(tag, 0, b"", 100)) {
            Response::HistoryBlobs(b) => b.blobs.iter().map(|b| b.bucket_ms).collect(),
            other => panic!("{other:?}"),
        }
    }
}

fn code(r: &Response) -> ErrorCode {
    match r {
        Response::Error(e) => e.code(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn blobs_older_than_their_days_are_swept() {
    let f = fixture(roomy());
    let k = SigningKey::from_bytes(&[7; 32]);
    assert!(matches!(
        f.call(&k, put(1, &[(10, b"one day")], 1)),
        Response::HistoryStored(_)
    ));
    assert!(matches!(
        f.call(&k, put(1, &[(20, b"two days")], 2)),
        Response::HistoryStored(_)
    ));
    f.clock.advance(DAY - 1);
    assert_eq!(f.service.sweep().unwrap(), 0);
    assert_eq!(f.page_all(&k, 1), vec![20, 10]);
    f.clock.advance(2);
    // Past its day: no longer paged, even before the sweeper runs...
    assert_eq!(f.page_all(&k, 1), vec![20]);
    // ...and the sweeper deletes it, with its bytes off the account.
    assert_eq!(f.service.sweep().unwrap(), 1);
    let account = k.verifying_key().to_bytes();
    assert_eq!(f.service.usage(&account).unwrap(), (1, 8));
    f.clock.advance(DAY);
    assert_eq!(f.service.sweep().unwrap(), 1);
    assert_eq!(f.service.usage(&account).unwrap(), (0, 0));
    assert!(f.page_all(&k, 1).is_empty());
}

#[test]
fn keep_days_are_one_to_ninety() {
    let f = fixture(roomy());
    let k = SigningKey::from_bytes(&[7; 32]);
    for days in [0, 91] {
        assert_eq!(
            code(&f.call(&k, put(1, &[(1, b"x")], days))),
            ErrorCode::Malformed
        );
    }
    assert!(matches!(
        f.call(&k, put(1, &[(1, b"x")], 90)),
        Response::HistoryStored(_)
    ));
}

#[test]
fn pages_are_newest_first_and_follow_the_cursor() {
    let f = fixture(roomy());
    let k = SigningKey::from_bytes(&[7; 32]);
    let blobs: Vec<(u64, &[u8])> = (1..=5).map(|b| (b * 100, &b"blob"[..])).collect();
    f.call(&k, put(1, &blobs, 30));
    f.call(&k, put(2, &[(999, b"other conversation")], 30));
    let Response::HistoryBlobs(first) = f.call(&k, page(1, 0, b"", 2)) else {
        panic!()
    };
    let got: Vec<u64> = first.blobs.iter().map(|b| b.bucket_ms).collect();
    assert_eq!(got, vec![500, 400]);
    assert!(!first.cursor.is_empty());
    let Response::HistoryBlobs(second) = f.call(&k, page(1, 0, &first.cursor, 2)) else {
        panic!()
    };
    let got: Vec<u64> = second.blobs.iter().map(|b| b.bucket_ms).collect();
    assert_eq!(got, vec![300, 200]);
    let Response::HistoryBlobs(last) = f.call(&k, page(1, 0, &second.cursor, 2)) else {
        panic!()
    };
    assert_eq!(last.blobs.len(), 1);
    assert!(last.cursor.is_empty(), "no more after the oldest");
    // `before` bounds the first page.
    let Response::HistoryBlobs(before) = f.call(&k, page(1, 300, b"", 10)) else {
        panic!()
    };
    let got: Vec<u64> = before.blobs.iter().map(|b| b.bucket_ms).collect();
    assert_eq!(got, vec![200, 100]);
}

#[test]
fn another_account_can_neither_read_nor_delete_blobs() {
    let f = fixture(roomy());
    let ann = SigningKey::from_bytes(&[7; 32]);
    let eve = SigningKey::from_bytes(&[8; 32]);
    f.call(&ann, put(1, &[(10, b"ann's")], 30));
    // Eve's own account has nothing under Ann's tag.
    assert!(f.page_all(&eve, 1).is_empty());
    // Claiming Ann's account with Eve's signature is refused.
    let ann_id = ann.verifying_key().to_bytes();
    for req in [
        page(1, 0, b"", 10),
        Request::HistoryDelete(pb::HistoryDelete { auth: None }),
    ] {
        let forged = signed(&eve, ann_id, &EXPORTER, req);
        let r = f
            .service
            .control(&f.conn, &EXPORTER, &forged)
            .unwrap()
            .response
            .unwrap();
        assert_eq!(code(&r), ErrorCode::HistoryAuthFailed);
    }
    // Ann's signature from another TLS session does not carry over.
    let replayed = signed(
        &ann,
        ann_id,
        &[6; 32],
        Request::HistoryDelete(pb::HistoryDelete { auth: None }),
    );
    let r = f
        .service
        .control(&f.conn, &EXPORTER, &replayed)
        .unwrap()
        .response
        .unwrap();
    assert_eq!(code(&r), ErrorCode::HistoryAuthFailed);
    // Eve deleting her own account leaves Ann's blobs.
    let Response::HistoryDeleted(d) = f.call(
        &eve,
        Request::HistoryDelete(pb::HistoryDelete { auth: None }),
    ) else {
        panic!()
    };
    assert_eq!(d.blobs, 0);
    assert_eq!(f.page_all(&ann, 1), vec![10]);
}

#[test]
fn delete_removes_every_blob_of_the_account_at_once() {
    let f = fixture(roomy());
    let ann = SigningKey::from_bytes(&[7; 32]);
    for tag in 1..=3 {
        f.call(&ann, put(tag, &[(1, b"a"), (2, b"b")], 30));
    }
    let Response::HistoryDeleted(d) = f.call(
        &ann,
        Request::HistoryDelete(pb::HistoryDelete { auth: None }),
    ) else {
        panic!()
    };
    assert_eq!(d.blobs, 6);
    assert_eq!(
        f.service.usage(&ann.verifying_key().to_bytes()).unwrap(),
        (0, 0)
    );
    for tag in 1..=3 {
        assert!(f.page_all(&ann, tag).is_empty());
    }
    // Nothing left for the sweeper either.
    f.clock.advance(31 * DAY);
    assert_eq!(f.service.sweep().unwrap(), 0);
}

#[test]
fn quotas_refuse_with_typed_errors_and_store_nothing_of_the_refused_put() {
    let f = fixture(HistoryQuota {
        account_bytes: 10,
        account_blobs: 2,
        total_bytes: 0,
    });
    let k = SigningKey::from_bytes(&[7; 32]);
    let r = f.call(&k, put(1, &[(1, b"a"), (2, b"b"), (3, b"c")], 30));
    assert_eq!(code(&r), ErrorCode::HistoryQuotaExceeded);
    assert!(f.page_all(&k, 1).is_empty(), "all or nothing");
    let r = f.call(&k, put(1, &[(1, b"eleven byte")], 30));
    assert_eq!(code(&r), ErrorCode::HistoryQuotaExceeded);
    assert!(matches!(
        f.call(&k, put(1, &[(1, b"a"), (2, b"b")], 30)),
        Response::HistoryStored(_)
    ));
    // Relay-wide cap.
    let g = fixture(HistoryQuota {
        account_bytes: 100,
        account_blobs: 100,
        total_bytes: 3,
    });
    g.call(&k, put(1, &[(1, b"abc")], 30));
    let other = SigningKey::from_bytes(&[9; 32]);
    assert_eq!(
        code(&g.call(&other, put(1, &[(1, b"d")], 30))),
        ErrorCode::HistoryQuotaExceeded
    );
}

#[test]
fn history_needs_an_authenticated_connection() {
    let f = fixture(roomy());
    let k = SigningKey::from_bytes(&[7; 32]);
    let req = signed(
        &k,
        k.verifying_key().to_bytes(),
        &EXPORTER,
        page(1, 0, b"", 1),
    );
    let anon = ConnAuth::new("127.0.0.1".parse().unwrap());
    let r = f
        .service
        .control(&anon, &EXPORTER, &req)
        .unwrap()
        .response
        .unwrap();
    assert_eq!(code(&r), ErrorCode::NotAuthenticated);
    // Not a history request: not answered here.
    let other = pb::ControlRequest {
        request: Some(Request::CreateToken(pb::CreateToken {})),
    };
    assert!(f.service.control(&f.conn, &EXPORTER, &other).is_none());
}
