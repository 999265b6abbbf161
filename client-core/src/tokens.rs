//! The pool of send tokens minted ahead of need.
//!
//! Minting a token for an invite or an accept right before the hello goes
//! out lets a relay pair "mailbox B minted token T" with "someone sent with
//! T" by timing. So the client mints a few tokens at times unrelated to
//! invites and accepts (whenever it authenticates to receive: `tern recv`,
//! a `listen` connecting) and keeps them here (`priv_token_pool`, sealed);
//! `tern invite` and `tern accept` take one from the pool, and mint on
//! demand only when it is empty (then still spaced from the send, as
//! before: [`crate::spacing`]).

use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::transport::RelayLink;
use serde::{Deserialize, Serialize};
use tracing::debug;

/// The tree of pooled tokens.
const TREE: &str = "priv_token_pool";
/// How many tokens the pool is topped up to.
pub const POOL_TARGET: usize = 3;

/// A token minted ahead of need.
#[derive(Serialize, Deserialize)]
struct Pooled {
    token: [u8; 32],
    minted_at_ms: u64,
}

impl Client {
    /// How many tokens wait in the pool.
    pub fn pooled_tokens(&self) -> Result<usize, ClientError> {
        Ok(self.store.db().open_tree(TREE)?.len())
    }

    /// Mint tokens on `link` (authenticated as us, for another reason)
    /// until the pool holds [`POOL_TARGET`]. Returns how many were minted.
    pub(crate) async fn top_up_tokens(&self, link: &RelayLink) -> Result<usize, ClientError> {
        let tree = self.store.db().open_tree(TREE)?;
        let mut minted = 0;
        while tree.len() < POOL_TARGET {
            let token = link.create_token().await?;
            let k = random16();
            let v = self.store.seal_record(
                TREE,
                &k,
                &Pooled {
                    token,
                    minted_at_ms: now_ms(),
                },
            )?;
            tree.insert(k, v)?;
            minted += 1;
        }
        if minted > 0 {
            self.store.flush().await?;
            debug!("minted {minted} token(s) ahead of need");
        }
        Ok(minted)
    }

    /// A token for an invite or an accept: from the pool, or minted now if
    /// the pool is empty.
    pub(crate) async fn take_token(&mut self) -> Result<[u8; 32], ClientError> {
        let tree = self.store.db().open_tree(TREE)?;
        if let Some(kv) = tree.iter().next() {
            let (k, v) = kv?;
            let pooled: Pooled = self.store.open_record(TREE, &k, &v)?;
            tree.remove(k)?;
            self.store.flush().await?;
            return Ok(pooled.token);
        }
        let link = self.home_link().await?;
        let token = link.create_token().await;
        // What is sent next goes out no sooner than a random gap after this.
        self.dialer.spacing().note_auth();
        link.close();
        token
    }
}
