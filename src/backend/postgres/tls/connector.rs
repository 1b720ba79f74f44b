//! The driver's TLS connector (tokio-postgres-rustls), wrapped to record how
//! far the TLS handshake got: libpq's `prefer` retries without TLS only
//! when TLS was tried, and its `allow` only when it was not.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use rustls::ClientConfig;
use tokio_postgres::Socket;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How far the TLS handshake of one connection attempt got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(in super::super) enum Handshake {
    /// Not started: no TLS asked for, or the server declined it.
    #[default]
    NotTried,
    /// Started and failed (the certificate, the client certificate, the
    /// protocol).
    Failed,
    /// Done: the connection is encrypted.
    Done,
}

type InnerConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// A connector for one connection attempt.
pub(in super::super) struct Connector {
    /// `None` under `sslmode=disable`, when the driver never starts TLS.
    inner: Option<MakeRustlsConnect>,
    handshake: Arc<Mutex<Handshake>>,
}

impl Connector {
    pub fn new(config: Option<&Arc<ClientConfig>>) -> Connector {
        Connector {
            inner: config.map(|config| MakeRustlsConnect::new(ClientConfig::clone(config))),
            handshake: Arc::default(),
        }
    }

    /// What tells how far the handshake got, once the connector is gone.
    pub fn handshake_watch(&self) -> HandshakeWatch {
        HandshakeWatch(self.handshake.clone())
    }
}

/// How far the handshake of a connector's connection got.
pub(in super::super) struct HandshakeWatch(Arc<Mutex<Handshake>>);

impl HandshakeWatch {
    pub fn get(&self) -> Handshake {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MakeTlsConnect<Socket> for Connector {
    type Stream = Stream;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let inner =
            self.inner.as_mut().map(|make| {
                match MakeTlsConnect::<Socket>::make_tls_connect(make, domain) {
                    Ok(connect) => connect,
                    Err(never) => match never {},
                }
            });
        Ok(Connect {
            inner,
            handshake: self.handshake.clone(),
        })
    }
}

/// The handshake of one connection.
pub(in super::super) struct Connect {
    inner: Option<InnerConnect>,
    handshake: Arc<Mutex<Handshake>>,
}

impl TlsConnect<Socket> for Connect {
    type Stream = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        let Connect { inner, handshake } = self;
        Box::pin(async move {
            let inner =
                inner.ok_or_else(|| io::Error::other("TLS is disabled (sslmode=disable)"))?;
            let result = inner.connect(stream).await;
            *handshake.lock().unwrap_or_else(|e| e.into_inner()) = match result {
                Ok(_) => Handshake::Done,
                Err(_) => Handshake::Failed,
            };
            result
        })
    }
}
