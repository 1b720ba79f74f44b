//! The kernel's Unix socket diagnostics (`NETLINK_SOCK_DIAG`): every Unix
//! socket of this network namespace with its name and owner.

use std::io;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_UID: u32 = 0x40;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_UID: u16 = 7;
const SOCK_STREAM: u8 = 1;
/// The states of a Unix stream socket (as TCP's): bound or not, but not
/// listening or connected; listening.
pub(super) const UNCONNECTED: u8 = 7;
pub(super) const LISTEN: u8 = 10;
/// struct nlmsghdr; struct unix_diag_msg.
const HEADER_LEN: usize = 16;
const DIAG_MSG_LEN: usize = 16;

/// One socket as the kernel describes it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct UnixSocket {
    pub stream: bool,
    pub state: u8,
    /// The bound name as in `sun_path`: an abstract name starts with NUL.
    pub name: Option<Vec<u8>>,
    pub uid: Option<u32>,
}

/// Every Unix socket in one of `states` (a mask of `1 << state`; the
/// kernel looks at every socket, but describes only those).
pub(super) fn dump(states: u32) -> io::Result<Vec<UnixSocket>> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    let mut request = Vec::with_capacity(HEADER_LEN + 24);
    request.extend_from_slice(&((HEADER_LEN + 24) as u32).to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&[0; 8]); // sequence number, port id
    request.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
    request.extend_from_slice(&states.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes()); // any inode
    request.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_UID).to_ne_bytes());
    request.extend_from_slice(&[0; 8]); // cookie
    rustix::net::sendto(
        &fd,
        &request,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    let mut sockets = Vec::new();
    BUFFER.with_borrow_mut(|buf| {
        loop {
            let (len, _) = rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty())?;
            if len == 0 || !parse(&buf[..len], &mut sockets)? {
                return Ok(sockets);
            }
        }
    })
}

thread_local! {
    /// The buffer the answers are received into, made once per thread:
    /// allocating and zeroing 64 KiB was a tenth of a dump.
    static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 64 * 1024]);
}

/// Adds the sockets described in one datagram of the dump; false once
/// the dump is done.
pub(super) fn parse(mut data: &[u8], sockets: &mut Vec<UnixSocket>) -> io::Result<bool> {
    while data.len() >= HEADER_LEN {
        let len = u32_at(data, 0) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < HEADER_LEN || len > data.len() {
            return Err(io::Error::other("malformed sock_diag answer"));
        }
        match kind {
            NLMSG_DONE => return Ok(false),
            NLMSG_ERROR => return Err(io::Error::other("sock_diag refused the request")),
            _ => sockets.extend(socket(&data[HEADER_LEN..len])),
        }
        data = &data[align(len).min(data.len())..];
    }
    Ok(true)
}

/// One `unix_diag_msg` and its attributes.
fn socket(message: &[u8]) -> Option<UnixSocket> {
    let mut attributes = message.get(DIAG_MSG_LEN..)?;
    let mut socket = UnixSocket {
        stream: message[1] == SOCK_STREAM,
        state: message[2],
        ..UnixSocket::default()
    };
    while attributes.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]);
        let payload = attributes.get(4..len)?;
        match kind {
            UNIX_DIAG_NAME => socket.name = Some(payload.to_vec()),
            UNIX_DIAG_UID if payload.len() >= 4 => socket.uid = Some(u32_at(payload, 0)),
            _ => {}
        }
        attributes = attributes.get(align(len)..).unwrap_or_default();
    }
    Some(socket)
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut message = ((HEADER_LEN + body.len()) as u32).to_ne_bytes().to_vec();
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&[0; 10]);
        message.extend_from_slice(body);
        message.resize(align(message.len()), 0);
        message
    }

    fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut attribute = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        attribute.extend_from_slice(&kind.to_ne_bytes());
        attribute.extend_from_slice(payload);
        attribute.resize(align(attribute.len()), 0);
        attribute
    }

    #[test]
    fn reads_names_and_owners_until_done() {
        let mut body = vec![libc::AF_UNIX as u8, SOCK_STREAM, 10, 0];
        body.extend_from_slice(&[0; 12]);
        body.extend(attribute(UNIX_DIAG_NAME, b"\0onlyone/v1/ab"));
        body.extend(attribute(UNIX_DIAG_UID, &1000u32.to_ne_bytes()));
        let mut datagram = message(SOCK_DIAG_BY_FAMILY, &body);
        let mut unnamed = vec![libc::AF_UNIX as u8, 2, 7, 0];
        unnamed.extend_from_slice(&[0; 12]);
        datagram.extend(message(SOCK_DIAG_BY_FAMILY, &unnamed));
        let mut sockets = Vec::new();
        assert!(parse(&datagram, &mut sockets).unwrap());
        assert_eq!(
            sockets,
            vec![
                UnixSocket {
                    stream: true,
                    state: LISTEN,
                    name: Some(b"\0onlyone/v1/ab".to_vec()),
                    uid: Some(1000),
                },
                UnixSocket {
                    state: UNCONNECTED,
                    ..UnixSocket::default()
                },
            ]
        );
        assert!(!parse(&message(NLMSG_DONE, &[0; 4]), &mut sockets).unwrap());
        assert!(parse(&message(NLMSG_ERROR, &[0; 4]), &mut sockets).is_err());
    }
}
