//! The server side's wire codec: tarpc's bincode format, with request deadlines
//! clamped while decoding (a deadline from the wire must never panic the server).

use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tarpc::ClientMessage;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_serde::{Deserializer, Serializer};

use crate::{RaftKvRequest, RaftKvResponse};

/// The most a request's deadline may lie ahead, whatever its client sent. tarpc turns
/// the wire's relative deadline into an `Instant` and arms a timer with it: a deadline
/// centuries away overflows the `Instant` or the timer wheel and panics the server, so
/// [`ServerCodec`] clamps it while decoding.
pub const MAX_REQUEST_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);

/// What a client sends, as the server decodes it: tarpc's [`ClientMessage`] with its
/// deadline clamped to [`MAX_REQUEST_DEADLINE`].
pub type ServerMessage = ClientMessage<RaftKvRequest>;

/// The server side's codec: tarpc's bincode format, but a request's deadline is read as
/// the relative [`Duration`] it is on the wire and clamped before it becomes an
/// `Instant` (see [`MAX_REQUEST_DEADLINE`]). Responses are encoded unchanged.
#[derive(Debug, Default)]
pub struct ServerCodec {
    inner: Bincode<wire::ClientMessage<RaftKvRequest>, tarpc::Response<RaftKvResponse>>,
}

impl Deserializer<ServerMessage> for ServerCodec {
    type Error = io::Error;

    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> io::Result<ServerMessage> {
        let message = Pin::new(&mut self.get_mut().inner).deserialize(src)?;
        Ok(message.into_tarpc(MAX_REQUEST_DEADLINE))
    }
}

impl Serializer<tarpc::Response<RaftKvResponse>> for ServerCodec {
    type Error = io::Error;

    fn serialize(self: Pin<&mut Self>, item: &tarpc::Response<RaftKvResponse>) -> io::Result<Bytes> {
        Pin::new(&mut self.get_mut().inner).serialize(item)
    }
}

/// Decodes one frame's payload (without its length prefix) exactly as a server does.
/// An error, never a panic, on any bytes.
pub fn decode_client_message(frame: &[u8]) -> io::Result<ServerMessage> {
    let mut codec = ServerCodec::default();
    Pin::new(&mut codec).deserialize(&BytesMut::from(frame))
}

/// A request frame's payload (without its length prefix) as a client sends it, with
/// any relative `deadline`: for tests and fuzz seeds that need deadlines tarpc's own
/// client cannot send.
pub fn encode_request(deadline: Duration, id: u64, message: RaftKvRequest) -> io::Result<Bytes> {
    let request = wire::Request {
        context: wire::Context { deadline, trace_context: tarpc::trace::Context::default() },
        id,
        message,
    };
    let mut codec: Bincode<RaftKvRequest, wire::ClientMessage<RaftKvRequest>> = Bincode::default();
    Pin::new(&mut codec).serialize(&wire::ClientMessage::Request(request))
}

/// The layout of tarpc's `ClientMessage` on the wire (bincode is not self-describing:
/// these mirror tarpc 0.38's field and variant order), with the deadline kept as the
/// relative `Duration` it is sent as.
mod wire {
    use std::time::{Duration, Instant};

    use serde::{Deserialize, Serialize};
    use tarpc::trace;

    #[derive(Debug, Serialize, Deserialize)]
    pub enum ClientMessage<T> {
        Request(Request<T>),
        Cancel { trace_context: trace::Context, request_id: u64 },
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Request<T> {
        pub context: Context,
        pub id: u64,
        pub message: T,
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Context {
        /// How long from now the client waits for the answer.
        pub deadline: Duration,
        pub trace_context: trace::Context,
    }

    impl<T> ClientMessage<T> {
        /// tarpc's message, its deadline at most `max` from now.
        pub fn into_tarpc(self, max: Duration) -> tarpc::ClientMessage<T> {
            match self {
                ClientMessage::Request(r) => {
                    let mut context = tarpc::context::current();
                    context.deadline = Instant::now() + r.context.deadline.min(max);
                    context.trace_context = r.context.trace_context;
                    tarpc::ClientMessage::Request(tarpc::Request { context, id: r.id, message: r.message })
                }
                ClientMessage::Cancel { trace_context, request_id } => {
                    tarpc::ClientMessage::Cancel { trace_context, request_id }
                }
            }
        }
    }
}
