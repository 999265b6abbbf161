//! The local socket a running client serves, so other programs can use the
//! account it owns.
//!
//! A long-running client (`tern listen`, an app built on this library) owns
//! the home's store and relay connections; the store is locked while it runs.
//! Every other `tern` command for that home, and any script or app
//! front-end, hands its work to that client over `<home>/tern.sock`: a Unix
//! socket (mode 0600 inside the owner-only home) speaking JSON-RPC 2.0, one
//! JSON object per line. docs/rpc.md documents the protocol.
//!
//! - [`wire`]: the JSON-RPC messages and the typed error codes.
//! - [`framing`]: newline-delimited JSON with a maximum line length.
//! - [`methods`]: method names and the params and result of each.
//! - [`server`]: binds the socket and serves an [`server::RpcBackend`].
//! - [`client`]: connects to a running client and calls it.

pub mod client;
mod connection;
mod dispatch;
pub mod framing;
mod handle_backend;
pub mod methods;
pub mod server;
pub mod wire;

#[cfg(test)]
mod test_backend;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

/// The socket's file name inside a home directory.
pub const SOCKET_FILE: &str = "tern.sock";

/// Where the client running for `home` listens.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_FILE)
}

pub use client::{RpcClient, RpcClientError};
pub use server::{EventFeed, FeedItem, RpcBackend, RpcServer, ServeError};
