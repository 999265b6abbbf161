//! The running client's handle as the socket's backend.

use super::server::{EventFeed, FeedItem, RpcBackend};
use crate::receipts::MessageReport;
use crate::settings::Settings;
use crate::store::Profile;
use crate::typing::TypingOutcome;
use crate::{
    ClientError, ClientHandle, Contact, Event, EventStream, OutboxReport, SendOutcome,
    StoredMessage,
};

impl RpcBackend for ClientHandle {
    type Events = EventStream;

    async fn send_text(
        &self,
        contact: &str,
        text: &str,
    ) -> Result<(String, SendOutcome), ClientError> {
        self.send_text_with_id(contact, text).await
    }
    async fn invite(&self) -> Result<String, ClientError> {
        ClientHandle::invite(self).await
    }
    async fn accept(&self, code: &str, name: &str) -> Result<Contact, ClientError> {
        ClientHandle::accept(self, code, name).await
    }
    async fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        ClientHandle::contacts(self).await
    }
    async fn history(
        &self,
        contact: &str,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        ClientHandle::history(self, contact, limit).await
    }
    async fn block(&self, contact: &str) -> Result<(), ClientError> {
        ClientHandle::block(self, contact).await
    }
    async fn flush_outbox(&self) -> Result<OutboxReport, ClientError> {
        ClientHandle::flush_outbox(self).await
    }
    async fn group(
        &self,
        call: crate::groups::GroupCall,
    ) -> Result<serde_json::Value, ClientError> {
        ClientHandle::group(self, call).await
    }
    async fn profile(&self) -> Result<Profile, ClientError> {
        ClientHandle::profile(self).await
    }
    async fn trust(
        &self,
        req: crate::trust::TrustRequest,
    ) -> Result<crate::trust::TrustResult, ClientError> {
        ClientHandle::trust(self, req).await
    }
    async fn history_op(
        &self,
        req: crate::history::request::HistoryRequest,
    ) -> Result<crate::history::request::HistoryResult, ClientError> {
        ClientHandle::history_op(self, req).await
    }
    async fn presence_op(
        &self,
        req: crate::presence::request::PresenceRequest,
    ) -> Result<crate::presence::request::PresenceResult, ClientError> {
        ClientHandle::presence_op(self, req).await
    }
    fn subscribe(&self) -> EventStream {
        ClientHandle::subscribe(self)
    }
    async fn message_status(&self, id: &str) -> Result<MessageReport, ClientError> {
        ClientHandle::message_status(self, id).await
    }
    async fn send_typing(&self, contact: &str) -> Result<TypingOutcome, ClientError> {
        ClientHandle::send_typing(self, contact).await
    }
    async fn settings(&self, read_receipts: Option<bool>) -> Result<Settings, ClientError> {
        ClientHandle::settings(self, read_receipts).await
    }

    async fn set_direct(&self, mode: crate::settings::DirectMode) -> Result<Settings, ClientError> {
        ClientHandle::set_direct(self, mode).await
    }

    async fn path_info(&self, contact: &str) -> Result<crate::direct::PathInfo, ClientError> {
        ClientHandle::path_info(self, contact).await
    }
}

impl EventFeed for EventStream {
    async fn next(&mut self) -> Option<FeedItem> {
        EventStream::next(self).await.map(|e| match e {
            Event::Lagged { missed } => FeedItem::Lagged(missed),
            e => FeedItem::Event(e),
        })
    }
}
