//! `tern group ...` and `tern history --group`: parse, call tern-client,
//! print. Group messages that arrive print through `print_event` in
//! main.rs, with the group's name.

use crate::{time, GroupCommand};
use anyhow::Result;
use serde_json::json;
use tern_client::{Client, OutboxReport};

/// Run one `tern group` subcommand.
pub(crate) async fn run(client: &mut Client, command: GroupCommand) -> Result<()> {
    match command {
        GroupCommand::Create { name, contacts } => {
            let report = client.group_create(&name, &contacts).await?;
            println!("created group {name} with {} member(s)", contacts.len() + 1);
            tell(&report);
        }
        GroupCommand::Add {
            name,
            contact,
            admin,
        } => {
            let report = client.group_add(&name, &contact, admin).await?;
            println!("added {contact} to {name}");
            tell(&report);
        }
        GroupCommand::Remove { name, contact } => {
            let report = client.group_remove(&name, &contact).await?;
            println!("removed {contact} from {name}");
            tell(&report);
        }
        GroupCommand::Leave { name } => {
            let report = client.group_leave(&name).await?;
            println!("left {name}");
            tell(&report);
        }
        GroupCommand::List { json } => {
            for g in client.groups()? {
                if json {
                    let members: Vec<&str> = g.members.iter().map(|m| m.name.as_str()).collect();
                    println!(
                        "{}",
                        json!({ "name": g.name, "id": g.id, "member": g.member,
                                "admin": g.admin, "members": members })
                    );
                } else {
                    let mark = match (g.member, g.admin) {
                        (false, _) => "\t(left)",
                        (true, true) => "\tadmin",
                        _ => "",
                    };
                    println!("{}\t{} member(s){}", g.name, g.members.len(), mark);
                }
            }
        }
        GroupCommand::Members { name, json } => {
            for m in client.group(&name)?.members {
                if json {
                    println!("{}", serde_json::to_string(&m)?);
                } else {
                    let mut line = m.name.clone();
                    if m.admin {
                        line.push_str(" (admin)");
                    }
                    if m.me {
                        line.push_str(" (you)");
                    }
                    if !m.reachable {
                        line.push_str(" (pending)");
                    }
                    println!("{line}");
                }
            }
        }
        GroupCommand::Send { name, text, json } => {
            let (id, report) = client.group_send(&name, &text).await?;
            let queued = report.queued.iter().find(|(q, _)| *q == id);
            match (queued, json) {
                (None, false) => println!("sent {id}"),
                (Some((_, why)), false) => println!(
                    "queued {id}: {why}; it goes out with the next `tern send` or `tern recv`"
                ),
                (None, true) => println!("{}", json!({ "id": id, "status": "sent" })),
                (Some((_, why)), true) => {
                    println!("{}", json!({ "id": id, "status": "queued", "reason": why }))
                }
            }
        }
    }
    Ok(())
}

/// What the outbox flush left behind, on stderr.
fn tell(report: &OutboxReport) {
    if !report.queued.is_empty() {
        eprintln!(
            "{} message(s) still queued: {}",
            report.queued.len(),
            report.queued[0].1
        );
    }
}

/// `tern history --group NAME`.
pub(crate) fn print_history(client: &Client, group: &str, limit: usize, json: bool) -> Result<()> {
    for m in client.group_history(group, limit)? {
        if json {
            println!(
                "{}",
                json!({
                    "type": "message", "id": m.id, "from": m.from, "text": m.text,
                    "sent_at": time(m.sent_at_ms), "outgoing": m.outgoing, "group": group,
                })
            );
        } else {
            println!("[{}] #{} {}: {}", time(m.sent_at_ms), group, m.from, m.text);
        }
    }
    Ok(())
}
