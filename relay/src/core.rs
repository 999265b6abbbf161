//! The relay's protocol logic without sockets: registration, challenge-response
//! authentication, send tokens, sends, fetches, acks and expiry. It takes
//! decoded requests and returns responses; the QUIC driver in
//! [`crate::connection`] only moves frames in and out, and awaits durability.
//! It is the only way above the store to the store: fetches, acks and
//! durability waits go through it too. Time comes from its [`Clock`] and
//! randomness from its [`Entropy`], both injected.

use crate::clock::Clock;
use crate::config::Limits;
use crate::entropy::{Entropy, OsEntropy};
use crate::rate::Rates;
use crate::store::{
    Durable, MailboxId, MailboxStore, MessageId, NewEnvelope, Quota, StoreError, Swept, TokenHash,
    TokenRecord,
};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tern_protocol::pb::{self, control_request::Request, control_response::Response};
use tern_protocol::{
    auth_signed_bytes, ErrorCode, WireError, MAILBOX_ID_LEN, NONCE_LEN, TOKEN_LEN,
};

/// What one connection has proven so far.
#[derive(Debug, Default)]
pub struct ConnAuth {
    nonce: Option<[u8; NONCE_LEN]>,
    mailbox: Option<MailboxId>,
    remote: Option<IpAddr>,
    /// Address and port the connection comes from, for `ObserveAddress`.
    observed: Option<std::net::SocketAddr>,
}

impl ConnAuth {
    /// State for a new connection from `remote`.
    pub fn new(remote: IpAddr) -> Self {
        Self {
            remote: Some(remote),
            ..Self::default()
        }
    }

    /// State for a new connection from `remote`, also answering
    /// `ObserveAddress` with its port.
    pub fn observed(remote: std::net::SocketAddr) -> Self {
        Self {
            remote: Some(remote.ip()),
            observed: Some(remote),
            ..Self::default()
        }
    }

    /// The mailbox this connection authenticated for, if any.
    pub fn mailbox(&self) -> Option<MailboxId> {
        self.mailbox
    }

    /// A connection already authenticated for `mailbox`, for tests of what
    /// comes after authentication.
    #[cfg(test)]
    pub(crate) fn authenticated(mailbox: MailboxId) -> Self {
        Self {
            mailbox: Some(mailbox),
            ..Self::default()
        }
    }
}

/// Where this connection's packets come from, as the relay sees it: the
/// one thing `ObserveAddress` tells, on any connection (docs/protocol.md,
/// "Direct paths"). Nothing is stored or logged.
fn observe_address(conn: &ConnAuth) -> Result<pb::ObservedAddress, WireError> {
    let addr = conn
        .observed
        .ok_or_else(|| WireError::new(ErrorCode::Unsupported, "address not known"))?;
    Ok(pb::ObservedAddress {
        ip: addr.ip().to_canonical().to_string(),
        port: u32::from(addr.port()),
    })
}

/// The key an unknown mailbox's authentication is checked against: the
/// Ed25519 base point, a valid key of full order (a weak key would be
/// refused before the signature is checked, which is faster) whose secret
/// is known to nobody who could use it here, since no mailbox has it.
pub(crate) const STAND_IN_AUTH_KEY: [u8; 32] = [
    0x58, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
    0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
];

/// A send the relay accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored (or already stored); reply once the store is durable.
    Stored {
        /// The target mailbox.
        mailbox: MailboxId,
        /// Its sequence number there.
        seq: u64,
        /// True if the message id was already stored.
        duplicate: bool,
    },
    /// Ephemeral: pass to the connected recipient, never store.
    Ephemeral {
        /// The target mailbox.
        mailbox: MailboxId,
    },
    /// Sent with a token its mailbox's owner revoked (blocked the sender):
    /// answered exactly as an accepted send of its kind, a stored one only
    /// after the same durability wait, but dropped, so the sender cannot
    /// tell that it was blocked (threat-model.md).
    Discarded {
        /// True for an ephemeral send (answered at once, as one is).
        ephemeral: bool,
    },
}

/// What a send token check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenCheck {
    /// A live token of the mailbox: the send goes ahead.
    Valid(TokenHash),
    /// A token of the mailbox that its owner revoked: the send is answered
    /// as accepted and dropped.
    Revoked(TokenHash),
}

/// A control request's answer, and whether it may leave only once the
/// store is durable. This is the one place that decides which requests
/// wait: those that wrote something and succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlAnswer {
    /// What to send back.
    pub response: pb::ControlResponse,
    /// True if the response must wait for [`RelayCore::durable`]; if that
    /// fails, answer [`storage_unavailable`] instead.
    pub needs_durability: bool,
}

/// The answer to a send whose token is unknown, malformed or another
/// mailbox's.
fn invalid_token() -> WireError {
    WireError::new(ErrorCode::TokenInvalid, "send token is not valid")
}

/// What a request that wrote to the store is answered when its write did
/// not reach the disk: retry in a second.
pub fn storage_unavailable() -> WireError {
    WireError::new(ErrorCode::StorageUnavailable, "storage unavailable").retry_after(1_000)
}

/// The relay's request handling over a store, a clock and a source of
/// randomness.
pub struct RelayCore<S, C> {
    store: Arc<S>,
    clock: C,
    limits: Limits,
    rates: Rates,
    disk_low: AtomicBool,
    entropy: Box<dyn Entropy>,
}

fn store_error(e: StoreError) -> WireError {
    match e {
        StoreError::UnknownMailbox => WireError::new(ErrorCode::UnknownMailbox, "no such mailbox"),
        StoreError::QuotaExceeded { .. } => {
            WireError::new(ErrorCode::QuotaExceeded, e.to_string()).retry_after(60_000)
        }
        StoreError::RelayFull { .. } => {
            tracing::warn!("{e}");
            WireError::new(ErrorCode::RelayFull, "relay storage is full").retry_after(60_000)
        }
        StoreError::Unavailable(_) => {
            tracing::warn!("storage unavailable: {e}");
            WireError::new(
                ErrorCode::StorageUnavailable,
                "relay storage is unavailable",
            )
            .retry_after(1_000)
        }
        StoreError::MailboxExists | StoreError::Corrupt(_) => {
            tracing::error!("store: {e}");
            WireError::new(ErrorCode::Internal, "internal relay error").retry_after(1_000)
        }
    }
}

fn fixed<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], WireError> {
    bytes.try_into().map_err(|_| {
        WireError::new(
            ErrorCode::Malformed,
            format!("{what} must be {N} bytes, not {}", bytes.len()),
        )
    })
}

/// SHA-256 of a send token, the form in which the relay keeps it.
pub fn token_hash(token: &[u8]) -> TokenHash {
    Sha256::digest(token).into()
}

impl<S: MailboxStore, C: Clock> RelayCore<S, C> {
    /// A core over `store`, stamping time from `clock`.
    pub fn new(store: Arc<S>, clock: C, limits: Limits, rates: Rates) -> Self {
        Self {
            store,
            clock,
            limits,
            rates,
            disk_low: AtomicBool::new(false),
            entropy: Box::new(OsEntropy),
        }
    }

    /// The same core drawing ids, nonces and tokens from `entropy`.
    pub fn with_entropy(mut self, entropy: impl Entropy) -> Self {
        self.entropy = Box::new(entropy);
        self
    }

    /// Tell the core whether the disk is nearly full. While it is, requests
    /// that store something new are refused; deliveries and acks go on.
    pub fn set_disk_low(&self, low: bool) {
        self.disk_low.store(low, Ordering::Relaxed);
    }

    fn check_disk(&self) -> Result<(), WireError> {
        if self.disk_low.load(Ordering::Relaxed) {
            Err(WireError::new(
                ErrorCode::StorageUnavailable,
                "the relay's disk is nearly full",
            )
            .retry_after(5_000))
        } else {
            Ok(())
        }
    }

    /// The rate limiters.
    pub fn rates(&self) -> &Rates {
        &self.rates
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Answer one control request. `exporter` is this TLS session's keying
    /// material, which authentication signatures must cover.
    pub fn control(
        &self,
        conn: &mut ConnAuth,
        exporter: &[u8],
        req: pb::ControlRequest,
    ) -> ControlAnswer {
        // Challenges and authentication change only the connection; every
        // other request writes to the store.
        let writes = !matches!(
            req.request,
            Some(Request::Challenge(_))
                | Some(Request::Authenticate(_))
                | Some(Request::ObserveAddress(_))
                | None
        );
        let result = match req.request {
            Some(Request::Register(r)) => self.register(conn, &r).map(Response::Registered),
            Some(Request::Challenge(_)) => Ok(Response::Challenge(self.challenge(conn))),
            Some(Request::Authenticate(a)) => self
                .authenticate(conn, exporter, &a)
                .map(Response::Authenticated),
            Some(Request::CreateToken(_)) => self.create_token(conn).map(Response::TokenCreated),
            Some(Request::RevokeToken(r)) => self
                .revoke_token(conn, &r.token)
                .map(Response::TokenRevoked),
            Some(Request::ObserveAddress(_)) => {
                observe_address(conn).map(Response::ObservedAddress)
            }
            // History requests have their own service (crate::history),
            // which the connection driver hands them to.
            Some(Request::HistoryPut(_))
            | Some(Request::HistoryPage(_))
            | Some(Request::HistoryDelete(_))
            // Presence and push live in memory (crate::presence), answered
            // by the connection driver.
            | Some(Request::PresencePublish(_))
            | Some(Request::PresenceHeartbeat(_))
            | Some(Request::PushRegister(_))
            | None => Err(WireError::new(
                ErrorCode::Unsupported,
                "unknown or empty request",
            )),
        };
        let needs_durability = writes && result.is_ok();
        ControlAnswer {
            response: pb::ControlResponse {
                response: Some(result.unwrap_or_else(|e| Response::Error(e.into()))),
            },
            needs_durability,
        }
    }

    fn register(&self, conn: &ConnAuth, r: &pb::Register) -> Result<pb::Registered, WireError> {
        let key: [u8; 32] = fixed(&r.auth_key, "auth_key")?;
        self.check_disk()?;
        self.rates.registration(conn.remote)?;
        VerifyingKey::from_bytes(&key)
            .map_err(|_| WireError::new(ErrorCode::Malformed, "auth_key is not an Ed25519 key"))?;
        loop {
            let mut id = [0u8; MAILBOX_ID_LEN];
            self.entropy.fill(&mut id);
            match self.store.create_mailbox(id, key, self.clock.now_ms()) {
                Ok(()) => {
                    return Ok(pb::Registered {
                        mailbox_id: id.to_vec().into(),
                    })
                }
                Err(StoreError::MailboxExists) => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
    }

    fn challenge(&self, conn: &mut ConnAuth) -> pb::Challenge {
        let mut nonce = [0u8; NONCE_LEN];
        self.entropy.fill(&mut nonce);
        conn.nonce = Some(nonce);
        pb::Challenge {
            nonce: nonce.to_vec().into(),
        }
    }

    fn authenticate(
        &self,
        conn: &mut ConnAuth,
        exporter: &[u8],
        a: &pb::Authenticate,
    ) -> Result<pb::Authenticated, WireError> {
        let failed = || WireError::new(ErrorCode::AuthFailed, "authentication failed");
        // A nonce is good for one attempt.
        let nonce = conn
            .nonce
            .take()
            .ok_or_else(|| WireError::new(ErrorCode::AuthFailed, "ask for a challenge first"))?;
        if !bool::from(nonce.ct_eq(&a.nonce[..])) || a.nonce.len() != NONCE_LEN {
            return Err(failed());
        }
        let mailbox: MailboxId = fixed(&a.mailbox_id, "mailbox_id")?;
        // One connection serves one mailbox: its pushes and acks must never
        // mix two mailboxes' sequence numbers.
        if conn.mailbox.is_some_and(|m| m != mailbox) {
            return Err(WireError::new(
                ErrorCode::AuthFailed,
                "this connection is authenticated for another mailbox",
            ));
        }
        let record = self.store.mailbox(&mailbox).map_err(store_error)?;
        // An unknown mailbox takes the same path as a known one, checking
        // the signature against a stand-in key, so how long a refusal
        // takes does not say whether the mailbox exists.
        let auth_key = record.as_ref().map_or(STAND_IN_AUTH_KEY, |r| r.auth_key);
        let key = VerifyingKey::from_bytes(&auth_key).map_err(|_| failed())?;
        let sig = Signature::from_slice(&a.signature).map_err(|_| failed())?;
        let verified = key
            .verify_strict(&auth_signed_bytes(exporter, &nonce, &mailbox), &sig)
            .is_ok();
        let Some(record) = record.filter(|_| verified) else {
            return Err(failed());
        };
        conn.mailbox = Some(mailbox);
        Ok(pb::Authenticated {
            mailbox_id: mailbox.to_vec().into(),
            pending: record.envelopes,
        })
    }

    fn owner(&self, conn: &ConnAuth) -> Result<MailboxId, WireError> {
        conn.mailbox
            .ok_or_else(|| WireError::new(ErrorCode::NotAuthenticated, "authenticate first"))
    }

    fn create_token(&self, conn: &ConnAuth) -> Result<pb::TokenCreated, WireError> {
        let mailbox = self.owner(conn)?;
        self.check_disk()?;
        let mut token = [0u8; TOKEN_LEN];
        self.entropy.fill(&mut token);
        self.store
            .add_token(
                token_hash(&token),
                mailbox,
                self.limits.max_tokens_per_mailbox,
            )
            .map_err(|e| match e {
                StoreError::QuotaExceeded { .. } => {
                    WireError::new(ErrorCode::QuotaExceeded, "too many send tokens")
                }
                e => store_error(e),
            })?;
        Ok(pb::TokenCreated {
            token: token.to_vec().into(),
        })
    }

    fn revoke_token(&self, conn: &ConnAuth, token: &[u8]) -> Result<pb::TokenRevoked, WireError> {
        let mailbox = self.owner(conn)?;
        let token: [u8; TOKEN_LEN] = fixed(token, "token")?;
        if self
            .store
            .revoke_token(&token_hash(&token), &mailbox)
            .map_err(store_error)?
        {
            Ok(pb::TokenRevoked {})
        } else {
            Err(WireError::new(
                ErrorCode::TokenInvalid,
                "not a token of this mailbox",
            ))
        }
    }

    /// A new envelope stamped now, with its expiry, and the mailbox quota
    /// it is checked against.
    pub(crate) fn stamp<'a>(
        &self,
        message_id: MessageId,
        payload: &'a [u8],
    ) -> (NewEnvelope<'a>, Quota) {
        let now = self.clock.now_ms();
        let env = NewEnvelope {
            message_id,
            payload,
            now_ms: now,
            expires_ms: now.saturating_add(self.limits.envelope_ttl_secs.saturating_mul(1000)),
        };
        // The minimum charge: an envelope counts as at least
        // `min_envelope_charge` bytes, which caps how many tiny ones fit.
        let by_bytes = self.limits.mailbox_max_bytes / self.limits.min_envelope_charge.max(1);
        let quota = Quota {
            max_envelopes: self.limits.mailbox_max_envelopes.min(by_bytes),
            max_bytes: self.limits.mailbox_max_bytes,
        };
        (env, quota)
    }

    /// May `token` write to `mailbox`? Unknown and foreign tokens get the
    /// same answer (compared in constant time). A token the mailbox's owner
    /// revoked is [`TokenCheck::Revoked`]: its sends are answered as
    /// accepted and dropped, so a blocked sender cannot tell that it was
    /// blocked. Either kind is then charged the token's send rate, as a
    /// live one would be.
    pub(crate) fn check_token(
        &self,
        mailbox: &MailboxId,
        token: &[u8],
    ) -> Result<TokenCheck, WireError> {
        if token.len() != TOKEN_LEN {
            return Err(invalid_token());
        }
        let hash = token_hash(token);
        self.judge_token(mailbox, hash, self.store.token(&hash))
    }

    /// The rest of [`Self::check_token`], once the token's record was
    /// looked up (alone, or with a batch's others).
    pub(crate) fn judge_token(
        &self,
        mailbox: &MailboxId,
        hash: TokenHash,
        record: Result<Option<TokenRecord>, StoreError>,
    ) -> Result<TokenCheck, WireError> {
        let invalid = invalid_token;
        let Some(record) = record.map_err(store_error)? else {
            return Err(invalid());
        };
        if !bool::from(record.mailbox.ct_eq(mailbox)) {
            return Err(invalid());
        }
        self.rates.send(&hash)?;
        Ok(if record.revoked {
            TokenCheck::Revoked(hash)
        } else {
            TokenCheck::Valid(hash)
        })
    }

    /// Check and apply one send. For a stored envelope the caller must await
    /// [`Self::durable`] before telling the sender it succeeded. The same as
    /// a batch of one ([`Self::send_batch`]).
    pub fn send(&self, s: &pb::Send) -> Result<Accepted, WireError> {
        self.send_batch(std::slice::from_ref(s))
            .pop()
            .unwrap_or_else(|| Err(storage_unavailable()))
    }

    /// Resolves once every write so far is durable.
    pub fn durable(&self) -> Durable {
        self.store.durable()
    }

    /// Delete acknowledged envelopes of the connection's mailbox.
    pub fn ack(&self, conn: &ConnAuth, seqs: &[u64]) -> Result<u64, WireError> {
        let mailbox = self.owner(conn)?;
        if seqs.len() > tern_protocol::limits::MAX_ACK_SEQS {
            return Err(WireError::new(
                ErrorCode::Malformed,
                "too many sequence numbers in one ack",
            ));
        }
        self.store.ack(&mailbox, seqs).map_err(store_error)
    }

    /// [`Self::ack`] if the store can apply it at once without waiting
    /// ([`MailboxStore::try_ack_now`]); `None`: run [`Self::ack`] on a
    /// store thread.
    pub fn try_ack_now(&self, conn: &ConnAuth, seqs: &[u64]) -> Option<Result<u64, WireError>> {
        let mailbox = match self.owner(conn) {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        if seqs.len() > tern_protocol::limits::MAX_ACK_SEQS {
            return Some(Err(WireError::new(
                ErrorCode::Malformed,
                "too many sequence numbers in one ack",
            )));
        }
        self.store
            .try_ack_now(&mailbox, seqs)
            .map(|r| r.map_err(store_error))
    }

    /// Up to `limit` envelopes of `mailbox` after `after_seq`, in order, as
    /// they are pushed. The caller is the mailbox's authenticated
    /// subscription; this may block on the disk.
    pub fn fetch(
        &self,
        mailbox: &MailboxId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<pb::Envelope>, WireError> {
        let stored = self
            .store
            .fetch(mailbox, after_seq, limit)
            .map_err(store_error)?;
        Ok(stored
            .into_iter()
            .map(|e| pb::Envelope {
                seq: e.seq,
                message_id: e.message_id.to_vec().into(),
                received_at_ms: e.received_ms,
                payload: e.payload.into(),
                ephemeral: false,
            })
            .collect())
    }

    /// Delete whatever has expired by now.
    pub fn sweep(&self) -> Result<Swept, WireError> {
        self.store.sweep(self.clock.now_ms()).map_err(store_error)
    }

    /// The ephemeral envelope to pass on for an accepted ephemeral send.
    pub fn ephemeral_envelope(&self, s: &pb::Send) -> pb::Envelope {
        pb::Envelope {
            seq: 0,
            message_id: s.message_id.clone(),
            received_at_ms: self.clock.now_ms(),
            payload: s.payload.clone(),
            ephemeral: true,
        }
    }
}

#[path = "core_fanout.rs"]
mod fanout;
pub use fanout::{Handoff, SentMany};

#[path = "core_batch.rs"]
mod batch;

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
