//! Known-answer tests, from data files in `tests/vectors/`.
//!
//! `seal.json` fixes the sealed-sender format byte for byte; each case is
//! also recomputed here straight from the primitives (X25519, HKDF-SHA256,
//! ChaCha20-Poly1305), independently of `tern_crypto::seal`, so the file
//! and the module docs' construction are checked against each other.
//! `store_key.json` is decrypt-only, since `StoreKey::encrypt` picks a random
//! nonce.
//!
//! The files were made once by `regenerate_vectors` below
//! (`TERN_REGEN_VECTORS=1 cargo test -p tern-crypto --test vectors -- --ignored`).
//! Changing them is changing the wire format.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tern_crypto::{open, seal_with_ephemeral, CryptoError, SealKey, StoreKey};

const SEAL_JSON: &str = include_str!("vectors/seal.json");
const STORE_KEY_JSON: &str = include_str!("vectors/store_key.json");

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn unhex32(v: &Value) -> [u8; 32] {
    unhex(v).try_into().expect("32 bytes")
}

/// The seal construction from the module docs, written out from the
/// primitives.
fn independent_seal(recipient_secret: [u8; 32], eph_secret: [u8; 32], pt: &[u8]) -> Vec<u8> {
    let base = x25519_dalek::X25519_BASEPOINT_BYTES;
    let recipient_pub = x25519_dalek::x25519(recipient_secret, base);
    let eph_pub = x25519_dalek::x25519(eph_secret, base);
    let dh = x25519_dalek::x25519(eph_secret, recipient_pub);
    // Both sides reach the same secret.
    assert_eq!(dh, x25519_dalek::x25519(recipient_secret, eph_pub));
    assert_ne!(dh, [0u8; 32]);
    let mut salt = eph_pub.to_vec();
    salt.extend_from_slice(&recipient_pub);
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&salt), &dh)
        .expand(b"tern/1 seal", &mut key)
        .unwrap();
    let mut header = vec![0x01];
    header.extend_from_slice(&eph_pub);
    let ct = ChaCha20Poly1305::new(Key::from_slice(&key))
        .encrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: pt,
                aad: &header,
            },
        )
        .unwrap();
    header.extend_from_slice(&ct);
    header
}

#[test]
fn seal_known_answers() {
    let file: Value = serde_json::from_str(SEAL_JSON).unwrap();
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for (i, case) in cases.iter().enumerate() {
        let recipient_secret = unhex32(&case["recipient_secret"]);
        let eph_secret = unhex32(&case["ephemeral_secret"]);
        let plaintext = unhex(&case["plaintext"]);
        let sealed = unhex(&case["sealed"]);
        let key = SealKey::from_bytes(recipient_secret);
        assert_eq!(key.public(), unhex32(&case["recipient_public"]), "case {i}");
        assert_eq!(
            seal_with_ephemeral(&key.public(), eph_secret, &plaintext),
            sealed,
            "case {i}: seal"
        );
        assert_eq!(
            independent_seal(recipient_secret, eph_secret, &plaintext),
            sealed,
            "case {i}: independent computation"
        );
        assert_eq!(open(&key, &sealed), Ok(plaintext), "case {i}: open");
    }
}

#[test]
fn store_key_known_answer() {
    let file: Value = serde_json::from_str(STORE_KEY_JSON).unwrap();
    let cases = file["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for (i, case) in cases.iter().enumerate() {
        let key_bytes = unhex32(&case["key"]);
        let aad = unhex(&case["aad"]);
        let data = unhex(&case["data"]);
        let plaintext = unhex(&case["plaintext"]);
        let key = StoreKey::from_bytes(key_bytes);
        assert_eq!(key.decrypt(&aad, &data), Ok(plaintext.clone()), "case {i}");
        // Independently: nonce || ChaCha20-Poly1305(ciphertext || tag).
        let independent = ChaCha20Poly1305::new(Key::from_slice(&key_bytes))
            .decrypt(
                Nonce::from_slice(&data[..12]),
                Payload {
                    msg: &data[12..],
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(independent, plaintext, "case {i}: independent");
        let mut other_aad = aad.clone();
        other_aad.push(b'!');
        assert_eq!(
            key.decrypt(&other_aad, &data),
            Err(CryptoError::StoreOpen),
            "case {i}: aad binding"
        );
    }
}

fn labelled(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

/// Rewrites the vector files from the current code. Run only to change the
/// format on purpose (see the module docs).
#[test]
#[ignore = "writes tests/vectors/*.json; run by hand to change the format"]
fn regenerate_vectors() {
    if std::env::var_os("TERN_REGEN_VECTORS").is_none() {
        return;
    }
    let plaintexts: [&[u8]; 5] = [
        b"",
        b"a",
        b"hello bob, this is alice",
        &[0xa5; 200],
        &[0u8; 1024],
    ];
    let cases: Vec<Value> = plaintexts
        .iter()
        .enumerate()
        .map(|(i, pt)| {
            let recipient_secret = labelled(&format!("tern seal vector {i} recipient"));
            let eph_secret = labelled(&format!("tern seal vector {i} ephemeral"));
            let key = SealKey::from_bytes(recipient_secret);
            json!({
                "recipient_secret": hex::encode(recipient_secret),
                "recipient_public": hex::encode(key.public()),
                "ephemeral_secret": hex::encode(eph_secret),
                "plaintext": hex::encode(pt),
                "sealed": hex::encode(seal_with_ephemeral(&key.public(), eph_secret, pt)),
            })
        })
        .collect();
    let seal = json!({
        "description": "tern/1 sealed payload: 0x01 || eph_pub || ChaCha20-Poly1305(key = HKDF-SHA256(salt = eph_pub || recipient_pub, ikm = X25519(eph, recipient), info = \"tern/1 seal\"), nonce = 0^12, aad = 0x01 || eph_pub). Secrets are SHA-256 of labels; all values hex.",
        "cases": cases,
    });

    let store_cases: Vec<Value> = [
        ("", &b""[..]),
        ("account", &b"{\"v\":1}"[..]),
        ("messages/0000000000000001", &[0x5a; 300][..]),
    ]
    .iter()
    .enumerate()
    .map(|(i, (aad, pt))| {
        let key_bytes = labelled(&format!("tern store key vector {i}"));
        let data = StoreKey::from_bytes(key_bytes).encrypt(aad.as_bytes(), pt);
        json!({
            "key": hex::encode(key_bytes),
            "aad": hex::encode(aad.as_bytes()),
            "data": hex::encode(data),
            "plaintext": hex::encode(pt),
        })
    })
    .collect();
    let store = json!({
        "description": "StoreKey at-rest format: nonce(12) || ChaCha20-Poly1305(key, nonce, aad, plaintext) || tag(16). Decrypt-only (encrypt uses a random nonce). All values hex.",
        "cases": store_cases,
    });

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, v: &Value| {
        let mut text = serde_json::to_string_pretty(v).unwrap();
        text.push('\n');
        std::fs::write(dir.join(name), text).unwrap();
    };
    write("seal.json", &seal);
    write("store_key.json", &store);
}
