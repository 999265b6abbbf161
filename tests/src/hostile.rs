//! A hostile relay: it completes the QUIC and TLS handshake with the real
//! relay's certificate (so clients pinning its fingerprint connect), takes
//! every stream and reads whatever is written, and never answers anything.
//! QUIC keep-alives hold its connections open, so only a client's own
//! deadlines can get it out. It runs on a thread of its own (with its own
//! runtime), so blocking tests can use it beside `tern` processes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tern_relay::tls::TlsIdentity;
use tokio::sync::oneshot;

/// A silent relay on loopback; stops when dropped.
pub struct HostileRelay {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostileRelay {
    /// Listen on `127.0.0.1:port` with the TLS identity kept in `data_dir`
    /// (a real relay's data directory: clients that know that relay's URL
    /// reach this one instead).
    pub fn start(data_dir: &Path, port: u16) -> Self {
        let identity = TlsIdentity::load_or_create(data_dir).unwrap();
        let crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(identity.server_config().unwrap())
                .unwrap();
        let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // The port may take a moment to be free after the real
                // relay was killed: bounded retries.
                let mut endpoint = None;
                for _ in 0..100 {
                    match quinn::Endpoint::server(
                        server.clone(),
                        SocketAddr::from(([127, 0, 0, 1], port)),
                    ) {
                        Ok(e) => {
                            endpoint = Some(e);
                            break;
                        }
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                    }
                }
                let endpoint = endpoint.expect("binding the hostile relay's port");
                addr_tx.send(endpoint.local_addr().unwrap()).unwrap();
                tokio::select! {
                    _ = stopped => {}
                    _ = accept(&endpoint) => {}
                }
                endpoint.close(0u32.into(), b"");
            });
        });
        let addr = addr_rx.recv().expect("the hostile relay started");
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Take connections and their streams, read everything, answer nothing.
async fn accept(endpoint: &quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    // Held, never written to or finished.
                    let _send = send;
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(Some(_)) = recv.read(&mut buf).await {}
                    std::future::pending::<()>().await;
                });
            }
        });
    }
}

impl Drop for HostileRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
