//! A stand-in for a transaction-pooling connection pooler (PgBouncer in
//! transaction mode): it forwards a client's PostgreSQL protocol messages,
//! and after `reassign` it sends the client's next message to a different
//! server session, exactly as a pooler does between transactions. A
//! session-level advisory lock taken through it stays behind on the old
//! session; the client now talks to a backend with another pid.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// The protocol code of an SSLRequest, answered 'N' by a server without TLS.
const SSL_REQUEST: i32 = 80877103;

pub struct Pooler {
    addr: SocketAddr,
    reassign: Arc<AtomicBool>,
    sessions: Arc<Mutex<Vec<TcpStream>>>,
}

impl Pooler {
    /// Listens on 127.0.0.1 (any free port) and pools onto `target`, a
    /// server that trusts user `postgres` on database `postgres`.
    pub fn start(target: SocketAddr) -> Pooler {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the pooler");
        let addr = listener.local_addr().unwrap();
        let reassign = Arc::new(AtomicBool::new(false));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let (flag, open) = (reassign.clone(), sessions.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let (flag, open) = (flag.clone(), open.clone());
                thread::spawn(move || {
                    let _ = serve(client, target, &flag, &open);
                });
            }
        });
        Pooler {
            addr,
            reassign,
            sessions,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From the next message on, each client is served by a new session.
    pub fn reassign(&self) {
        self.reassign.store(true, Ordering::SeqCst);
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        for session in self.sessions.lock().unwrap().drain(..) {
            let _ = session.shutdown(Shutdown::Both);
        }
    }
}

/// Forwards one client: the startup phase as is, then message by message,
/// moving to a fresh server session when asked to.
fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    reassign: &AtomicBool,
    sessions: &Mutex<Vec<TcpStream>>,
) -> io::Result<()> {
    let mut server = connect(target, sessions)?;
    // Untyped startup messages: an optional SSLRequest, then the startup.
    loop {
        let message = read_untyped(&mut client)?;
        server.write_all(&message)?;
        if i32::from_be_bytes(message[4..8].try_into().unwrap()) == SSL_REQUEST {
            let mut answer = [0u8; 1];
            server.read_exact(&mut answer)?;
            client.write_all(&answer)?;
            continue;
        }
        break;
    }
    relay_replies(&server, &client)?;
    loop {
        let message = read_typed(&mut client)?;
        if reassign.swap(false, Ordering::SeqCst) {
            let _ = server.shutdown(Shutdown::Read);
            server = connect(target, sessions)?;
            handshake(&mut server)?;
            relay_replies(&server, &client)?;
        }
        server.write_all(&message)?;
    }
}

fn connect(target: SocketAddr, sessions: &Mutex<Vec<TcpStream>>) -> io::Result<TcpStream> {
    let server = TcpStream::connect(target)?;
    sessions.lock().unwrap().push(server.try_clone()?);
    Ok(server)
}

/// Copies everything the server sends to the client, in a thread.
fn relay_replies(server: &TcpStream, client: &TcpStream) -> io::Result<()> {
    let (mut from, mut to) = (server.try_clone()?, client.try_clone()?);
    thread::spawn(move || io::copy(&mut from, &mut to));
    Ok(())
}

/// Opens a session as the pooler would: startup as postgres, trust auth,
/// up to ReadyForQuery.
fn handshake(server: &mut TcpStream) -> io::Result<()> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes());
    for text in ["user", "postgres", "database", "postgres"] {
        body.extend_from_slice(text.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    server.write_all(&startup)?;
    loop {
        let message = read_typed(server)?;
        if message[0] == b'Z' {
            return Ok(());
        }
        if message[0] == b'E' {
            return Err(io::Error::other("the server refused the pooled session"));
        }
    }
}

fn read_untyped(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let mut message = len.to_vec();
    message.resize(i32::from_be_bytes(len) as usize, 0);
    stream.read_exact(&mut message[4..])?;
    Ok(message)
}

fn read_typed(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header)?;
    let len = i32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
    let mut message = header.to_vec();
    message.resize(1 + len, 0);
    stream.read_exact(&mut message[5..])?;
    Ok(message)
}

#[cfg(feature = "postgres")]
#[test]
fn reassign_moves_the_client_to_another_backend() {
    let cluster = super::pg_cluster::PgCluster::start();
    let target: SocketAddr = format!("127.0.0.1:{}", cluster.port()).parse().unwrap();
    let pooler = Pooler::start(target);
    let url = cluster.url_via(&pooler.addr().to_string());
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let pid = |client: &mut postgres::Client| -> i32 {
        client
            .query_one("select pg_backend_pid()", &[])
            .unwrap()
            .get(0)
    };
    let before = pid(&mut client);
    assert_eq!(pid(&mut client), before);
    pooler.reassign();
    assert_ne!(pid(&mut client), before);
}
