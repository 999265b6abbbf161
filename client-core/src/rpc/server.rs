//! The socket's server side: binds `<home>/tern.sock`, accepts local
//! callers, and serves each on its own task against an [`RpcBackend`] (the
//! running client's handle).
//!
//! Who may connect: the home directory is owner-only (0700, as `tern init`
//! makes it, and checked here), the socket file is 0600, and each caller's
//! uid (from the kernel, `SO_PEERCRED`) must be the home's owner. The file
//! is made by `bind` with the process umask and tightened just after; the
//! private home is what closes that short window.
//!
//! One owner per home: a socket file that accepts a connection belongs to a
//! live client, and a second server is refused with
//! [`ServeError::AlreadyRunning`]. A file whose connect is refused was left
//! by a killed process and is replaced. (Two clients cannot start for one
//! home at once anyway: the store's lock admits one.)

use super::connection;
use super::socket_path;
use crate::receipts::MessageReport;
use crate::settings::Settings;
use crate::store::Profile;
use crate::typing::TypingOutcome;
use crate::{ClientError, Contact, Event, OutboxReport, SendOutcome, StoredMessage};
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Mutex};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, debug_span, warn, Instrument};

/// Connections served at once; more are closed at accept. Callers are the
/// owner's own programs, so this only bounds a runaway script.
pub const MAX_CONNECTIONS: usize = 64;

/// How long `shutdown` lets connections finish before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What the server needs from a running client: the client handle's
/// operations. The client handle implements it by delegation; tests
/// implement it over in-process state. An implementation may write each
/// method as an `async fn`:
///
/// ```ignore
/// impl RpcBackend for ClientHandle {
///     type Events = EventStream;
///     async fn invite(&self) -> Result<String, ClientError> {
///         ClientHandle::invite(self).await
///     }
///     // … one line each for the others …
///     fn subscribe(&self) -> EventStream {
///         ClientHandle::subscribe(self)
///     }
/// }
/// impl EventFeed for EventStream {
///     async fn next(&mut self) -> Option<FeedItem> {
///         EventStream::next(self).await.map(|e| match e {
///             Event::Lagged { missed } => FeedItem::Lagged(missed),
///             e => FeedItem::Event(e),
///         })
///     }
/// }
/// ```
pub trait RpcBackend: Clone + Send + Sync + 'static {
    /// What [`RpcBackend::subscribe`] returns.
    type Events: EventFeed;

    /// Send a text; returns its id (hex) and whether it reached the
    /// contact's relay.
    fn send_text(
        &self,
        contact: &str,
        text: &str,
    ) -> impl Future<Output = Result<(String, SendOutcome), ClientError>> + Send;
    /// Make an invite code.
    fn invite(&self) -> impl Future<Output = Result<String, ClientError>> + Send;
    /// Accept an invite code, naming its maker `name`.
    fn accept(
        &self,
        code: &str,
        name: &str,
    ) -> impl Future<Output = Result<Contact, ClientError>> + Send;
    /// All contacts.
    fn contacts(&self) -> impl Future<Output = Result<Vec<Contact>, ClientError>> + Send;
    /// The latest `limit` messages with `contact`, oldest first.
    fn history(
        &self,
        contact: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredMessage>, ClientError>> + Send;
    /// Revoke the send token `contact` holds.
    fn block(&self, contact: &str) -> impl Future<Output = Result<(), ClientError>> + Send;
    /// Try to deliver everything queued.
    fn flush_outbox(&self) -> impl Future<Output = Result<OutboxReport, ClientError>> + Send;
    /// Who this account is.
    fn profile(&self) -> impl Future<Output = Result<Profile, ClientError>> + Send;
    /// Run a group command; its result as JSON.
    fn group(
        &self,
        call: crate::groups::GroupCall,
    ) -> impl Future<Output = Result<serde_json::Value, ClientError>> + Send;

    /// A trust operation ([`crate::trust`]).
    fn trust(
        &self,
        req: crate::trust::TrustRequest,
    ) -> impl Future<Output = Result<crate::trust::TrustResult, ClientError>> + Send;
    /// A new feed of every event from now on.
    fn subscribe(&self) -> Self::Events;
    /// Where a message we sent stands, per recipient. (Defaults, here and
    /// below, refuse: a backend without receipts need not implement them.)
    fn message_status(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<MessageReport, ClientError>> + Send {
        let id = id.to_string();
        async move { Err(ClientError::UnknownMessage(id)) }
    }
    /// Tell a contact we are typing.
    fn send_typing(
        &self,
        contact: &str,
    ) -> impl Future<Output = Result<TypingOutcome, ClientError>> + Send {
        let contact = contact.to_string();
        async move { Err(ClientError::UnknownContact(contact)) }
    }
    /// The settings, after setting read receipts if given.
    fn settings(
        &self,
        read_receipts: Option<bool>,
    ) -> impl Future<Output = Result<Settings, ClientError>> + Send {
        let _ = read_receipts;
        async { Err(ClientError::Store("this backend keeps no settings".into())) }
    }
    /// A history operation ([`crate::history`]).
    fn history_op(
        &self,
        req: crate::history::request::HistoryRequest,
    ) -> impl Future<Output = Result<crate::history::request::HistoryResult, ClientError>> + Send
    {
        let _ = req;
        async { Err(ClientError::History("this backend keeps no history".into())) }
    }
    /// A presence command ([`crate::presence`]).
    fn presence_op(
        &self,
        req: crate::presence::request::PresenceRequest,
    ) -> impl Future<Output = Result<crate::presence::request::PresenceResult, ClientError>> + Send
    {
        let _ = req;
        async { Err(ClientError::Store("this backend keeps no presence".into())) }
    }
    /// Set with whom direct paths open.
    fn set_direct(
        &self,
        mode: crate::settings::DirectMode,
    ) -> impl Future<Output = Result<Settings, ClientError>> + Send {
        let _ = mode;
        async { Err(ClientError::Store("this backend keeps no settings".into())) }
    }
    /// Whether a direct path to `contact` is open (a backend without
    /// direct paths: never).
    fn path_info(
        &self,
        contact: &str,
    ) -> impl Future<Output = Result<crate::direct::PathInfo, ClientError>> + Send {
        let _ = contact;
        async {
            Ok(crate::direct::PathInfo {
                direct: false,
                rtt_ms: None,
            })
        }
    }
}

/// A receiver of client events for one subscribed connection.
pub trait EventFeed: Send + 'static {
    /// The next event; `None` once the client has stopped.
    fn next(&mut self) -> impl Future<Output = Option<FeedItem>> + Send;
}

/// What a feed yields.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// An event.
    Event(Event),
    /// This receiver fell behind and this many events were dropped for it
    /// (a broadcast channel's `Lagged`).
    Lagged(u64),
}

/// Why the socket could not be served.
#[derive(Debug, Error)]
pub enum ServeError {
    /// A live client already serves this home.
    #[error("another client is running for this home ({})", path.display())]
    AlreadyRunning {
        /// The socket it listens on.
        path: PathBuf,
    },
    /// Something that is not a socket sits where the socket goes; it is
    /// left alone rather than deleted.
    #[error("{} exists and is not a socket; move it away", path.display())]
    NotASocket {
        /// The file.
        path: PathBuf,
    },
    /// Others may enter the home directory, so an owner-only socket in it
    /// cannot be promised.
    #[error("{} is open to other users (mode {mode:o}); run `chmod 700` on it", path.display())]
    HomeNotPrivate {
        /// The home directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// A running socket server. Stop it with [`RpcServer::shutdown`]; dropping
/// it also stops it, without waiting.
#[derive(Debug)]
pub struct RpcServer {
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl RpcServer {
    /// Bind `<home>/tern.sock` and serve `backend` on it until shut down.
    pub async fn start<B: RpcBackend>(home: &Path, backend: B) -> Result<Self, ServeError> {
        let owner = check_home(home)?;
        let path = socket_path(home);
        let listener = bind(&path).await?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, backend, stopped, path.clone(), owner));
        Ok(Self {
            path,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting, remove the socket file, end every connection (in-flight
    /// calls get a bounded grace period), and return once all that is done.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The home's owner uid, once the home is known to be owner-only.
fn check_home(home: &Path) -> Result<u32, ServeError> {
    let meta = std::fs::metadata(home).map_err(|source| ServeError::Io {
        path: home.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ServeError::HomeNotPrivate {
            path: home.to_path_buf(),
            mode,
        });
    }
    Ok(meta.uid())
}

/// Bind `path`, replacing a stale socket file and refusing a live one.
async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let io = |source| ServeError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServeError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(ServeError::AlreadyRunning {
                    path: path.to_path_buf(),
                })
            }
            // Nobody listens: the process that bound it is gone.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                debug!("replacing stale socket {}", path.display());
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(e)),
                }
            }
            // Gone since we looked: bind finds the path free.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Anything else (say, no permission) does not show the owner
            // dead, so the file is not ours to remove.
            Err(e) => return Err(io(e)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Whether the caller on `stream` runs as the home's owner.
fn caller_is_owner(stream: &UnixStream, owner: u32) -> bool {
    match stream.peer_cred() {
        Ok(cred) => cred.uid() == owner,
        Err(e) => {
            warn!("cannot read a caller's credentials: {e}");
            false
        }
    }
}

async fn accept_loop<B: RpcBackend>(
    listener: UnixListener,
    backend: B,
    mut stop: watch::Receiver<bool>,
    path: PathBuf,
    owner: u32,
) {
    let mut connections = JoinSet::new();
    let mut accepted_total: u64 = 0;
    loop {
        tokio::select! {
            // A send of `true` or the server being dropped both end it.
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if !caller_is_owner(&stream, owner) {
                        warn!("refused a caller that is not the home's owner");
                        continue;
                    }
                    if connections.len() >= MAX_CONNECTIONS {
                        warn!("refused a caller: {MAX_CONNECTIONS} connections already");
                        continue;
                    }
                    accepted_total += 1;
                    let span = debug_span!("rpc", conn = accepted_total);
                    connections.spawn(
                        connection::serve(stream, backend.clone(), stop.clone()).instrument(span),
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!("accepting on {}: {e}", path.display());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // New callers must find no socket (and run on their own) rather than a
    // server that is going away.
    drop(listener);
    if let Err(e) = std::fs::remove_file(&path) {
        debug!("removing {}: {e}", path.display());
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Shared between a connection's tasks: the owner's stop signal.
pub(crate) type Stop = watch::Receiver<bool>;
