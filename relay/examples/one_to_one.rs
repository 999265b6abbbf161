//! First relay figure: messages per second from one sender to one online
//! recipient through one relay, over real QUIC on loopback, with the
//! durability rule on (a send is answered only after the flush that covers
//! it). Payloads are opaque 200-byte blobs: the relay never decrypts, so this
//! measures the relay, not the clients' crypto.
//!
//! `cargo run --release -p tern-relay --example one_to_one -- [MESSAGES] [IN_FLIGHT] [RUNS]`

use std::sync::Arc;
use std::time::Instant;
use tern_client::transport::{Dialer, Outgoing};
use tern_crypto::DeviceAccount;
use tern_protocol::pb::relay_frame::Frame;
use tern_relay::{RateConfig, RelayConfig, RunningRelay, SystemClock};

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (messages, in_flight, runs) = (arg(1, 20_000), arg(2, 64), arg(3, 5));
    println!("one sender -> one online recipient, {messages} x 200-byte messages, {in_flight} in flight, durable acks");
    let mut rates = Vec::new();
    for run in 1..=runs {
        let rate = one_run(messages, in_flight).await?;
        println!("run {run}: {rate:.0} msgs/s");
        rates.push(rate);
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!(
        "median: {:.0} msgs/s over {runs} runs",
        rates[rates.len() / 2]
    );
    Ok(())
}

async fn one_run(messages: usize, in_flight: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = RelayConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().to_path_buf(),
        // One token and one connection carry the whole load here.
        rates: RateConfig::unlimited(),
        ..RelayConfig::default()
    };
    let relay = RunningRelay::start(config, Arc::new(SystemClock)).await?;

    // The recipient registers, authenticates, mints a token and subscribes.
    let account = DeviceAccount::new();
    let mut dialer = Dialer::default();
    let link = dialer.connect(&relay.url).await?;
    let mailbox = link.register(account.signing_key()).await?;
    link.authenticate(&mailbox, |m| account.sign(m)).await?;
    let token = link.create_token().await?;
    let mut inbox = link.messages().await?;
    inbox.subscribe(1024).await?;
    let receiver = tokio::spawn(async move {
        let mut got = 0usize;
        let mut acks = Vec::new();
        while got < messages {
            match inbox.next().await {
                Ok(Some(Frame::Envelope(e))) => {
                    got += 1;
                    acks.push(e.seq);
                    if acks.len() >= 64 {
                        inbox.ack(std::mem::take(&mut acks)).await.ok();
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        (got, Instant::now())
    });

    // The sender uses its own connection, as a real sender would.
    let mut sender_dialer = Dialer::default();
    let sender = sender_dialer.connect(&relay.url).await?;
    let mut out = sender.messages().await?;
    let payload = vec![0x5a; 200];
    let start = Instant::now();
    let mut sent = 0usize;
    while sent < messages {
        let batch: Vec<Outgoing> = (sent..(sent + in_flight).min(messages))
            .map(|i| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                Outgoing {
                    mailbox,
                    token,
                    message_id: id,
                    payload: payload.clone(),
                }
            })
            .collect();
        for r in out.send_all(&batch).await? {
            r?;
        }
        sent += batch.len();
    }
    let (got, done) = receiver.await?;
    relay.shutdown().await;
    if got != messages {
        return Err(format!("delivered {got} of {messages}").into());
    }
    Ok(messages as f64 / done.duration_since(start).as_secs_f64())
}
