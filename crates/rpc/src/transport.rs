//! Connections: plaintext TCP (the default) or mutual TLS over TCP, both carrying
//! length-delimited bincode frames of at most [`MAX_FRAME_BYTES`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tarpc::serde_transport::{self, Transport, tcp};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::codec::{ServerCodec, ServerMessage};
use crate::cork::Corked;
use crate::tls::{PeerIdentity, TlsConfig, server_name};
use crate::{MAX_FRAME_BYTES, RaftKvClient, RaftKvResponse};

/// How long an accepted connection may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a plaintext client connection to a node. Requests made at about the same
/// moment leave in one write ([`Corked`]).
pub async fn connect(addr: &str) -> io::Result<RaftKvClient> {
    let mut connecting = tcp::connect(addr, Bincode::default);
    connecting.config_mut().max_frame_length(MAX_FRAME_BYTES);
    let transport = connecting.await?;
    Ok(RaftKvClient::new(tarpc::client::Config::default(), Corked::new(transport)).spawn())
}

/// Opens a client connection to a node: plaintext ([`connect`]) without `tls`, else
/// mutual TLS, verifying the node's certificate against the CA for the host part of
/// `addr`. A failed handshake is an error that says so.
pub async fn connect_with(addr: &str, tls: Option<&TlsConfig>) -> io::Result<RaftKvClient> {
    let Some(tls) = tls else { return connect(addr).await };
    let name = server_name(addr).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let stream = tls.connector().connect(name, tcp).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("TLS handshake with {addr} failed: {e} (is the server using TLS? check --tls-ca and --tls-cert)"),
        )
    })?;
    Ok(client_on(stream))
}

/// A client on an already established byte stream (e.g. a TLS stream set up by the
/// caller), with the same framing as [`connect`].
pub fn client_on<S: AsyncRead + AsyncWrite + Send + 'static>(io: S) -> RaftKvClient {
    // Boxed: a pinned box is Unpin whatever `S` is, as the cork needs.
    let transport = serde_transport::new(framed(Box::pin(io)), Bincode::default());
    RaftKvClient::new(tarpc::client::Config::default(), Corked::new(transport)).spawn()
}

fn framed<S: AsyncRead + AsyncWrite>(io: S) -> Framed<S, LengthDelimitedCodec> {
    Framed::new(io, LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME_BYTES).new_codec())
}

/// A byte stream a server transport runs on: TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The server side of one established connection; its answers are corked (see
/// [`Corked`]).
pub type ServerTransport =
    Corked<Transport<Pin<Box<dyn Io>>, ServerMessage, tarpc::Response<RaftKvResponse>, ServerCodec>>;

/// A listener whose connections are plaintext or mutual TLS. Accepting does not
/// handshake: [`Accepted::establish`] does, on the connection's own task, so a slow
/// or silent peer never holds up other connections.
pub struct Listener {
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves on an already bound listener (bind first, so the caller knows the address,
/// including an ephemeral port): plaintext without `tls`, else TLS requiring a client
/// certificate signed by the CA.
pub fn listen_with(listener: TcpListener, tls: Option<&TlsConfig>) -> Listener {
    Listener { listener, acceptor: tls.map(TlsConfig::acceptor) }
}

impl Listener {
    /// Waits for the next TCP connection.
    pub async fn accept(&self) -> io::Result<Accepted> {
        let (stream, remote) = self.listener.accept().await?;
        Ok(Accepted { stream, remote, acceptor: self.acceptor.clone() })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether connections must use TLS.
    pub fn is_tls(&self) -> bool {
        self.acceptor.is_some()
    }
}

/// A TCP connection not yet established as a transport.
pub struct Accepted {
    stream: TcpStream,
    remote: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

impl Accepted {
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// Completes the TLS handshake (at most [`HANDSHAKE_TIMEOUT`]) if TLS is on, and
    /// returns the transport with the peer's identity. Errors name the remote address.
    pub async fn establish(self) -> io::Result<(ServerTransport, PeerIdentity)> {
        let Accepted { stream, remote, acceptor } = self;
        let (io, identity): (Pin<Box<dyn Io>>, _) = match acceptor {
            None => (Box::pin(stream), PeerIdentity::Plaintext),
            Some(acceptor) => {
                let _ = stream.set_nodelay(true);
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        return Err(io::Error::new(e.kind(), format!("TLS handshake with {remote} failed: {e}")));
                    }
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("TLS handshake with {remote} did not finish within {HANDSHAKE_TIMEOUT:?}"),
                        ));
                    }
                };
                let identity =
                    PeerIdentity::from_certificate(tls.get_ref().1.peer_certificates().and_then(|c| c.first()));
                (Box::pin(tls), identity)
            }
        };
        Ok((Corked::new(serde_transport::new(framed(io), ServerCodec::default())), identity))
    }
}
