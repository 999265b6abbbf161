//! Device lists and link codes: what a contact's or our own other device
//! sends (`DeviceListUpdate`, the lists inside invites, hellos and link
//! bundles) and the text a user pastes on a new device. The input is read
//! as a signed list and checked against a fixed root key (it must never
//! panic; what it accepts must read back the same), signed by that key
//! as it decoded (accepted exactly when every entry is well formed), and
//! as a link code.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tern_client::devices::list::{accept_update, sign_list, verify_list, Device};
use tern_crypto::RootKey;
use tern_protocol::link::{decode_link_code, encode_link_code, LINK_PREFIX};
use tern_protocol::pb;

fn check_list(data: &[u8], root: &RootKey) {
    if let Ok(signed) = pb::DeviceSignedList::decode(data) {
        if let Ok(list) = verify_list(&root.public(), &signed) {
            assert_eq!(
                verify_list(&root.public(), &list.signed()).as_ref(),
                Ok(&list)
            );
        }
    }
    let Ok(list) = pb::DeviceList::decode(data) else {
        return;
    };
    let devices: Result<Vec<Device>, _> = list.devices.iter().map(Device::from_pb).collect();
    if let Ok(devices) = devices {
        let held = sign_list(root, list.version, devices.clone());
        match verify_list(&root.public(), &held.signed()) {
            Ok(read) => assert_eq!(read.devices, devices),
            // Empty, too many, or a device listed twice.
            Err(_) => {}
        }
        // An update never goes back in version.
        if let Ok(newer) = accept_update(&held, &held.signed()) {
            panic!(
                "the same version was accepted as an update: {}",
                newer.version
            );
        }
    }
}

fn check_code(text: &str) {
    let Ok(code) = decode_link_code(text) else {
        return;
    };
    assert_eq!(decode_link_code(&encode_link_code(&code)), Ok(code));
}

fuzz_target!(|data: &[u8]| {
    let root = RootKey::from_bytes(&[7; 32]);
    check_list(data, &root);
    check_code(&String::from_utf8_lossy(data));
    check_code(&format!("{LINK_PREFIX}{}", URL_SAFE_NO_PAD.encode(data)));
});
