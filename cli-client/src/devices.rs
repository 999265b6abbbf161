//! `tern device ...` and `tern init --link`: linking a new device, and
//! listing, renaming and removing the account's devices. List, rename and
//! remove are trust operations ([`tern_client::trust`]), so they go through
//! a running `tern listen` when there is one. So does `device link`: the
//! running client registers the link mailbox and makes the code
//! (`TrustRequest::LinkOffer`), this command waits for the new device and
//! asks for confirmation itself (the running client keeps receiving
//! meanwhile), then the running client adds the device
//! (`TrustRequest::LinkAdd`).

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;
use tern_client::devices::link::{LinkOffer, OfferMailbox, DEFAULT_LINK_TIMEOUT};
use tern_client::devices::manage::DeviceInfo;
use tern_client::transport::Dialer;
use tern_client::trust::{TrustRequest, TrustResult};
use tern_client::Client;
use tern_protocol::url::RelayUrl;

/// `tern device ...`
#[derive(Subcommand, Clone)]
pub(crate) enum DeviceCommand {
    /// Print a one-time link code for a new device and wait for it.
    Link {
        /// Also draw the code as a QR code.
        #[arg(long)]
        qr: bool,
        /// Seconds to wait for the new device (default 600).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Accept the new device once the check codes are shown, without
        /// asking (also TERN_LINK_CONFIRM=1). Compare them first.
        #[arg(long)]
        yes: bool,
    },
    /// List the account's devices.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Rename a device (ID: its id or a unique prefix of at least 4 digits).
    Rename {
        /// The device id.
        id: String,
        /// Its new name.
        name: String,
    },
    /// Remove a device from the account: contacts and the other devices
    /// stop sending to it.
    Remove {
        /// The device id.
        id: String,
    },
}

/// Whether the user accepts the check code: `--yes` or
/// TERN_LINK_CONFIRM=1, else asked on a terminal; without either, no.
fn confirmed(yes: bool) -> Result<bool> {
    if yes || std::env::var("TERN_LINK_CONFIRM").is_ok_and(|v| v == "1") {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("compare the check codes, then confirm with --yes (or TERN_LINK_CONFIRM=1)");
    }
    eprint!("do the check codes match? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn out(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// Whether a running client (`tern listen`) serves this home.
async fn running(home: &Path) -> Result<bool> {
    #[cfg(unix)]
    if tern_client::rpc::RpcClient::connect(home).await?.is_some() {
        return Ok(true);
    }
    #[cfg(not(unix))]
    let _ = home;
    Ok(false)
}

/// Run `tern device ...`.
pub(crate) async fn run(
    home: &Path,
    open: impl FnOnce() -> Result<Client>,
    command: DeviceCommand,
) -> Result<()> {
    let req = match command {
        DeviceCommand::Link { qr, timeout, yes } => {
            if running(home).await? {
                return link_beside_listen(home, qr, timeout, yes).await;
            }
            return link(open()?, qr, timeout, yes).await;
        }
        DeviceCommand::List { json } => {
            let devices = devices_of(crate::trust_op(home, open, TrustRequest::DeviceList).await?)?;
            for d in devices {
                if json {
                    out(&json!({
                        "id": d.id, "name": d.name, "this_device": d.this_device,
                        "relay": d.relay, "added_at": crate::time(d.added_at_ms),
                    })
                    .to_string());
                } else {
                    let me = if d.this_device { "\t(this device)" } else { "" };
                    out(&format!("{}\t{}{me}", d.id, d.name));
                }
            }
            return Ok(());
        }
        DeviceCommand::Rename { id, name } => TrustRequest::DeviceRename { id, name },
        DeviceCommand::Remove { id } => TrustRequest::DeviceRemove { id },
    };
    let line = match &req {
        TrustRequest::DeviceRename { id, name } => format!("renamed device {id} to {name}"),
        TrustRequest::DeviceRemove { id } => format!("removed device {id}"),
        _ => String::new(),
    };
    devices_of(crate::trust_op(home, open, req).await?)?;
    out(&line);
    Ok(())
}

fn devices_of(r: TrustResult) -> Result<Vec<DeviceInfo>> {
    match r {
        TrustResult::Devices { devices } => Ok(devices),
        _ => anyhow::bail!("unexpected answer to a device command"),
    }
}

/// Print the link code (and its QR code), and what to do with it.
fn show_code(code: &str, qr: bool, wait: Duration) -> Result<()> {
    out(code);
    if qr {
        let qr = qrcode::QrCode::new(code.as_bytes()).context("drawing the QR code")?;
        out(&qr
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build());
    }
    eprintln!(
        "on the new device: tern --home DIR init --link CODE (waiting up to {} s)",
        wait.as_secs()
    );
    Ok(())
}

/// `tern device link` beside a running `tern listen`: it offers and adds;
/// the waiting and the confirmation are here, on a connection of ours to
/// the link mailbox.
async fn link_beside_listen(home: &Path, qr: bool, timeout: Option<u64>, yes: bool) -> Result<()> {
    let wait = timeout
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LINK_TIMEOUT);
    let no_client = || anyhow::bail!("`tern listen` stopped during the link");
    let TrustResult::LinkOffer { code, auth } =
        crate::trust_op(home, no_client, TrustRequest::LinkOffer).await?
    else {
        anyhow::bail!("unexpected answer to a link offer");
    };
    let auth: [u8; 32] = hex::decode(&auth)
        .ok()
        .and_then(|b| b.try_into().ok())
        .context("a damaged link offer")?;
    let mailbox = OfferMailbox { code, auth };
    show_code(&mailbox.code, qr, wait)?;
    let mut dialer = Dialer::default();
    let mut offer = LinkOffer::listen(&mut dialer, &mailbox).await?;
    let request = offer.wait(wait).await;
    offer.close().await;
    let request = request?;
    out(&format!("check code: {}", request.check_code));
    if !confirmed(yes)? {
        anyhow::bail!("link refused: the new device was not added");
    }
    let req = TrustRequest::LinkAdd {
        code: mailbox.code.clone(),
        device: hex::encode(request.device_entry()),
    };
    let added = devices_of(crate::trust_op(home, no_client, req).await?)?;
    let added = added.first().context("no device added")?;
    out(&format!("linked device {} ({})", added.id, added.name));
    Ok(())
}

/// `tern device link`: offer, wait, show the check code, confirm, add.
async fn link(mut client: Client, qr: bool, timeout: Option<u64>, yes: bool) -> Result<()> {
    let wait = timeout
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LINK_TIMEOUT);
    let mut offer = client.link_offer().await?;
    show_code(&offer.code, qr, wait)?;
    let request = client.link_wait(&mut offer, wait).await?;
    out(&format!("check code: {}", request.check_code));
    if !confirmed(yes)? {
        anyhow::bail!("link refused: the new device was not added");
    }
    let added = client.link_accept(offer, request).await?;
    out(&format!("linked device {} ({})", added.id, added.name));
    client.close().await;
    Ok(())
}

/// `tern init --link CODE`: join the account the code is for.
pub(crate) async fn init_linked(
    home: &Path,
    code: &str,
    device_name: Option<&str>,
    relay: Option<&str>,
    passphrase: Option<&[u8]>,
    timeout: Option<u64>,
    yes: bool,
) -> Result<()> {
    let relay: Option<RelayUrl> = relay
        .map(|r| r.parse())
        .transpose()
        .context("bad --relay")?;
    let name = device_name.unwrap_or("new device");
    let (mut client, pending) =
        Client::link_join(home, code, name, relay.as_ref(), passphrase).await?;
    out(&format!("check code: {}", pending.check_code));
    let ok = match confirmed(yes) {
        Ok(ok) => ok,
        Err(e) => {
            client.discard();
            return Err(e);
        }
    };
    if !ok {
        client.discard();
        anyhow::bail!("link refused: nothing was kept");
    }
    let wait = timeout
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LINK_TIMEOUT);
    if let Err(e) = client.link_complete(pending, wait).await {
        client.discard();
        return Err(e.into());
    }
    let me = client
        .devices()?
        .into_iter()
        .find(|d| d.this_device)
        .map(|d| d.id)
        .unwrap_or_default();
    out(&format!(
        "account {} linked in {} (device {me})",
        client.profile().name,
        home.display()
    ));
    // With history on, the account's conversations come back now.
    if client.settings()?.history_days > 0 {
        let terminal = std::io::stderr().is_terminal();
        match client
            .restore_history(&mut |p| crate::history_cli::show(p, terminal))
            .await
        {
            Ok(done) => out(&format!(
                "restored {} message(s) from history ({} conversation(s))",
                done.restored, done.conversations
            )),
            Err(e) => {
                eprintln!("tern: history not restored yet ({e}); run `tern history --restore`")
            }
        }
    }
    client.close().await;
    Ok(())
}
