//! `tern presence` and `tern settings presence|last-seen|push`: one
//! presence request, handed to a running `tern listen` over its socket if
//! there is one, else answered by a client opened for this command.

use anyhow::{bail, Result};
use serde_json::json;
use std::path::Path;
use tern_client::presence::request::{PresenceRequest, PresenceResult, SharingArg};
use tern_client::presence::ContactPresence;
use tern_client::Client;

/// Run `req` in the running client if there is one, else in `open()`'s.
pub async fn op(
    home: &Path,
    open: impl FnOnce() -> Result<Client>,
    req: PresenceRequest,
) -> Result<PresenceResult> {
    #[cfg(unix)]
    if let Some(mut rpc) = tern_client::rpc::RpcClient::connect(home).await? {
        return Ok(rpc
            .request(tern_client::rpc::methods::PRESENCE_OP, &req)
            .await?);
    }
    let mut client = open()?;
    let result = client.presence_op(req).await;
    client.close().await;
    Ok(result?)
}

/// `tern settings presence on|off|contacts NAME...` as a request.
pub fn sharing_request(args: &[String]) -> Result<PresenceRequest> {
    let set = match args.split_first() {
        None => None,
        Some((first, rest)) => Some(match (first.as_str(), rest) {
            ("on", []) => SharingArg::On,
            ("off", []) => SharingArg::Off,
            ("contacts", names) if !names.is_empty() => SharingArg::Contacts(names.to_vec()),
            _ => bail!("presence takes on, off, or contacts NAME..."),
        }),
    };
    Ok(PresenceRequest::Sharing { set })
}

/// `tern settings push URL|off` as a request.
pub fn push_request(value: Option<&str>) -> PresenceRequest {
    PresenceRequest::Push {
        set: value.map(|v| {
            if v == "off" {
                String::new()
            } else {
                v.to_string()
            }
        }),
    }
}

fn last_seen_text(ms: Option<u64>) -> Option<String> {
    ms.map(crate::time)
}

/// One contact's presence as `tern presence` prints it.
pub fn presence_line(p: &ContactPresence, json: bool) -> String {
    if json {
        return json!({
            "type": "presence",
            "contact": p.contact,
            "online": p.online,
            "last_seen": last_seen_text(p.last_seen_ms),
        })
        .to_string();
    }
    match (p.online, last_seen_text(p.last_seen_ms)) {
        (Some(true), _) => format!("{} online", p.contact),
        (Some(false), Some(t)) => format!("{} offline, last seen {t}", p.contact),
        (Some(false), None) => format!("{} offline", p.contact),
        (None, _) => format!("{} unknown", p.contact),
    }
}

/// Print a presence result: states, or the setting `which` (`presence`,
/// `last-seen` or `push`).
pub fn print(result: &PresenceResult, which: &str, json: bool) {
    match result {
        PresenceResult::States { states } => {
            for p in states {
                println!("{}", presence_line(p, json));
            }
        }
        PresenceResult::Settings {
            sharing,
            last_seen,
            push,
            push_dropped,
        } => match which {
            "presence" => println!("presence {sharing}"),
            "last-seen" => println!("last-seen {}", crate::on_off(*last_seen)),
            _ => match (push, push_dropped) {
                (Some(url), _) => println!("push {url}"),
                (None, true) => {
                    println!("push off (the relay dropped the endpoint: it failed too long)")
                }
                (None, false) => println!("push off"),
            },
        },
    }
}
