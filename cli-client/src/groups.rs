//! `tern group ...` and `tern history --group`: each is a
//! [`GroupCall`], run by tern-client alone or by a running `tern listen`
//! (forward.rs, RPC method `group`), and printed here from its JSON result
//! the same way in both cases. Group messages that arrive print through
//! `print_event` in main.rs, with the group's name.

use crate::{time, GroupCommand};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::io::Write;
use tern_client::GroupCall;

/// The call a `tern group` subcommand makes, and whether it prints JSON.
pub(crate) fn call_of(command: &GroupCommand) -> (GroupCall, bool) {
    match command.clone() {
        GroupCommand::Create { name, contacts } => (GroupCall::Create { name, contacts }, false),
        GroupCommand::Add {
            name,
            contact,
            admin,
        } => (
            GroupCall::Add {
                name,
                contact,
                admin,
            },
            false,
        ),
        GroupCommand::Remove { name, contact } => (GroupCall::Remove { name, contact }, false),
        GroupCommand::Leave { name } => (GroupCall::Leave { name }, false),
        GroupCommand::List { json } => (GroupCall::List, json),
        GroupCommand::Members { name, json } => (GroupCall::Members { name }, json),
        GroupCommand::Send { name, text, json } => (GroupCall::Send { name, text }, json),
    }
}

fn line(to: &mut impl Write, text: impl std::fmt::Display) -> Result<()> {
    writeln!(to, "{text}")?;
    to.flush()?;
    Ok(())
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// Print what `call` gave, as the command prints it.
pub(crate) fn render(
    call: &GroupCall,
    v: &Value,
    as_json: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<()> {
    match call {
        GroupCall::Create { name, contacts } => {
            line(
                out,
                format!("created group {name} with {} member(s)", contacts.len() + 1),
            )?;
            tell(v, err)?;
        }
        GroupCall::Add { name, contact, .. } => {
            line(out, format!("added {contact} to {name}"))?;
            tell(v, err)?;
        }
        GroupCall::Remove { name, contact } => {
            line(out, format!("removed {contact} from {name}"))?;
            tell(v, err)?;
        }
        GroupCall::Leave { name } => {
            line(out, format!("left {name}"))?;
            tell(v, err)?;
        }
        GroupCall::List => {
            for g in v.as_array().context("a list of groups")? {
                let members: Vec<&str> = g["members"]
                    .as_array()
                    .map(|m| m.iter().map(|m| str_of(m, "name")).collect())
                    .unwrap_or_default();
                let (member, admin) = (g["member"] == true, g["admin"] == true);
                if as_json {
                    let o = json!({ "name": g["name"], "id": g["id"], "member": member,
                                    "admin": admin, "members": members });
                    line(out, o)?;
                } else {
                    let mark = match (member, admin) {
                        (false, _) => "\t(left)",
                        (true, true) => "\tadmin",
                        _ => "",
                    };
                    line(
                        out,
                        format!("{}\t{} member(s){}", str_of(g, "name"), members.len(), mark),
                    )?;
                }
            }
        }
        GroupCall::Members { .. } => {
            for m in v["members"].as_array().context("a list of members")? {
                if as_json {
                    line(out, m)?;
                } else {
                    let mut text = str_of(m, "name").to_string();
                    for (flag, word) in [("admin", false), ("me", false), ("reachable", true)] {
                        if (m[flag] == true) != word {
                            text.push_str(match flag {
                                "admin" => " (admin)",
                                "me" => " (you)",
                                _ => " (pending)",
                            });
                        }
                    }
                    line(out, text)?;
                }
            }
        }
        GroupCall::Send { .. } => {
            let id = str_of(v, "id");
            let queued = v["report"]["queued"]
                .as_array()
                .and_then(|q| q.iter().find(|q| q["id"] == id))
                .map(|q| str_of(q, "reason").to_string());
            match (queued, as_json) {
                (None, false) => line(out, format!("sent {id}"))?,
                (Some(why), false) => line(
                    out,
                    format!(
                        "queued {id}: {why}; it goes out with the next `tern send` or `tern recv`"
                    ),
                )?,
                (None, true) => line(out, json!({ "id": id, "status": "sent" }))?,
                (Some(why), true) => {
                    line(out, json!({ "id": id, "status": "queued", "reason": why }))?
                }
            }
        }
        GroupCall::History { name, .. } => {
            for m in v.as_array().context("a list of messages")? {
                let sent_at = time(m["sent_at_ms"].as_u64().unwrap_or_default());
                let (from, text) = (str_of(m, "from"), str_of(m, "text"));
                if as_json {
                    let o = json!({
                        "type": "message", "id": m["id"], "from": from, "text": text,
                        "sent_at": sent_at, "outgoing": m["outgoing"], "group": name,
                    });
                    line(out, o)?;
                } else {
                    line(out, format!("[{sent_at}] #{name} {from}: {text}"))?;
                }
            }
        }
    }
    Ok(())
}

/// What the outbox flush left behind, on stderr.
fn tell(report: &Value, err: &mut impl Write) -> Result<()> {
    if let Some(q) = report["queued"].as_array().filter(|q| !q.is_empty()) {
        line(
            err,
            format!(
                "{} message(s) still queued: {}",
                q.len(),
                str_of(&q[0], "reason")
            ),
        )?;
    }
    Ok(())
}
