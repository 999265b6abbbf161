//! The CLI side of history and backups: run a [`HistoryRequest`] in the
//! client running for this home if there is one (over its socket), else
//! here; draw a restore's progress (a bar on a terminal, plain lines
//! otherwise); write and restore backups.

use anyhow::{Context, Result};
use std::io::{IsTerminal, Write};
use std::path::Path;
use tern_client::history::remote::RestoreProgress;
use tern_client::history::request::{HistoryRequest, HistoryResult};
use tern_client::Client;

/// Run `req` in the running client for `home` if there is one, else here.
pub async fn op(
    home: &Path,
    open: impl FnOnce() -> Result<Client>,
    req: HistoryRequest,
) -> Result<HistoryResult> {
    op_with_progress(home, open, req, &mut |_| {}).await
}

async fn op_with_progress(
    home: &Path,
    open: impl FnOnce() -> Result<Client>,
    req: HistoryRequest,
    progress: &mut (dyn FnMut(RestoreProgress) + Send),
) -> Result<HistoryResult> {
    #[cfg(unix)]
    if let Some(mut rpc) = tern_client::rpc::RpcClient::connect(home).await? {
        return Ok(rpc
            .request(tern_client::rpc::methods::HISTORY_OP, &req)
            .await?);
    }
    let mut client = open()?;
    let result = client.history_op(req, progress).await;
    client.close().await;
    Ok(result?)
}

/// This account's name (for printing "from" on our own messages).
pub async fn my_name(home: &Path, open: impl FnOnce() -> Result<Client>) -> Result<String> {
    #[cfg(unix)]
    if let Some(mut rpc) = tern_client::rpc::RpcClient::connect(home).await? {
        let p: serde_json::Value = rpc
            .request(tern_client::rpc::methods::PROFILE, &serde_json::json!({}))
            .await?;
        return Ok(p["name"].as_str().unwrap_or_default().to_string());
    }
    Ok(open()?.profile().name.clone())
}

/// One progress report: a redrawn bar on a terminal, a line otherwise.
pub(crate) fn show(p: RestoreProgress, terminal: bool) {
    let mut err = std::io::stderr().lock();
    if terminal {
        const WIDTH: usize = 30;
        let filled = (p.conversations_done * WIDTH)
            .checked_div(p.conversations)
            .unwrap_or(WIDTH);
        let _ = write!(
            err,
            "\r[{}{}] {}/{} conversations, {} messages",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            p.conversations_done,
            p.conversations,
            p.messages
        );
        if p.conversations_done == p.conversations {
            let _ = writeln!(err);
        }
    } else {
        let _ = writeln!(
            err,
            "restore: {}/{} conversations, {} messages",
            p.conversations_done, p.conversations, p.messages
        );
    }
    let _ = err.flush();
}

/// `tern history --restore`.
pub async fn restore(home: &Path, open: impl FnOnce() -> Result<Client>) -> Result<()> {
    let terminal = std::io::stderr().is_terminal();
    let result = op_with_progress(home, open, HistoryRequest::Restore, &mut |p| {
        show(p, terminal)
    })
    .await?;
    let HistoryResult::Restored {
        conversations,
        messages,
        restored,
    } = result
    else {
        anyhow::bail!("unexpected answer to history --restore");
    };
    println!(
        "restored {restored} message(s) ({messages} in history, {conversations} conversation(s))"
    );
    Ok(())
}

/// Upload queued history after a one-shot command; a relay that cannot be
/// reached gets it next time.
pub async fn upload_quietly(client: &mut Client) {
    if let Err(e) = client.upload_history().await {
        eprintln!("tern: history upload deferred: {e}");
    }
}

/// `tern backup export FILE`.
pub async fn export_backup(
    home: &Path,
    open: impl FnOnce() -> Result<Client>,
    file: &Path,
) -> Result<()> {
    // The running client writes it, so the path must not depend on its
    // working directory.
    let file = if file.is_absolute() {
        file.to_path_buf()
    } else {
        std::env::current_dir()
            .context("the working directory")?
            .join(file)
    };
    let req = HistoryRequest::BackupExport { path: file.clone() };
    let HistoryResult::BackupWritten { phrase } = op(home, open, req).await? else {
        anyhow::bail!("unexpected answer to backup export");
    };
    println!("backup written to {}", file.display());
    println!("recovery phrase: {phrase}");
    eprintln!("write the phrase down: it is shown once, and the backup opens with nothing else");
    Ok(())
}

/// `tern init --restore FILE`.
pub async fn restore_backup(
    home: &Path,
    file: &Path,
    phrase: Option<String>,
    passphrase: Option<&[u8]>,
) -> Result<()> {
    let phrase = zeroize::Zeroizing::new(
        phrase
            .or_else(|| std::env::var("TERN_RECOVERY_PHRASE").ok())
            .context("the recovery phrase goes in --phrase or TERN_RECOVERY_PHRASE")?,
    );
    let meta = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    if meta.len() > tern_client::backup::MAX_BACKUP_BYTES {
        anyhow::bail!("{} is too large to be a tern backup", file.display());
    }
    let raw = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let client = Client::restore_backup(home, &raw, &phrase, passphrase).await?;
    println!(
        "account {} restored in {}",
        client.profile().name,
        home.display()
    );
    println!(
        "mailbox {} on {}",
        crate::hex_short(&client.profile().mailbox_id),
        client.profile().relay_url
    );
    client.close().await;
    Ok(())
}
