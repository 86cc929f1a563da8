//! The guest init's DHCP client: DISCOVER, OFFER, REQUEST, ACK on a UDP socket bound to
//! the interface (SO_BINDTODEVICE; the server broadcasts its replies), retried for up to
//! a minute (slow TCG guests, a dnsmasq that starts late). The hostname is sent so the
//! network's DNS answers for it. The lease is not renewed after the hand-over to the
//! guest's own init (microvm networks lease for 12 h; a guest that must run longer runs
//! its own DHCP client, e.g. networkd).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use microvm_init::dhcp::{self, Reply};

use super::console::say;
use super::fail::{Context, Failure};

const TOTAL: Duration = Duration::from_secs(60);

/// Asks for a lease on `ifname` (already up) and returns the ACK.
pub fn acquire(ifname: &str, mac: &str) -> Result<Reply, Failure> {
    let what = || format!("DHCP on {ifname}");
    let mac =
        dhcp::parse_mac(mac).ok_or_else(|| Failure::new(what(), format!("bad MAC {mac:?}")))?;
    let sock =
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, dhcp::CLIENT_PORT)).ctx(what)?;
    sock.set_broadcast(true).ctx(what)?;
    bind_to_device(&sock, ifname).ctx(what)?;
    let hostname = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let server = SocketAddrV4::new(Ipv4Addr::BROADCAST, dhcp::SERVER_PORT);
    let deadline = Instant::now() + TOTAL;
    let mut wait = Duration::from_secs(1);
    let mut attempt: u32 = 0;
    while Instant::now() < deadline {
        attempt += 1;
        let xid = xid(mac, attempt);
        sock.send_to(&dhcp::discover(xid, mac, &hostname), server)
            .ctx(what)?;
        let Some(offer) = receive(&sock, xid, mac, wait, &[dhcp::OFFER]) else {
            wait = (wait * 2).min(Duration::from_secs(8));
            continue;
        };
        let Some(server_id) = offer.server else {
            continue;
        };
        let req = dhcp::request(xid, mac, &hostname, offer.address, server_id);
        sock.send_to(&req, server).ctx(what)?;
        match receive(&sock, xid, mac, wait, &[dhcp::ACK, dhcp::NAK]) {
            Some(ack) if ack.kind == dhcp::ACK => {
                say(&format!(
                    "microvm-init: {ifname}: DHCP lease {}",
                    ack.address
                ));
                return Ok(ack);
            }
            _ => continue,
        }
    }
    Err(Failure::new(
        what(),
        format!("no lease after {} s", TOTAL.as_secs()),
    ))
}

/// A transaction id that differs per attempt and per interface.
fn xid(mac: [u8; 6], attempt: u32) -> u32 {
    let t = super::console::uptime().to_bits() as u32;
    u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ t ^ attempt.rotate_left(16)
}

/// Waits up to `wait` for a reply of one of `kinds` to `xid`.
fn receive(
    sock: &UdpSocket,
    xid: u32,
    mac: [u8; 6],
    wait: Duration,
    kinds: &[u8],
) -> Option<Reply> {
    let end = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = end
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())?;
        sock.set_read_timeout(Some(left)).ok()?;
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            return None;
        };
        if let Some(r) = dhcp::parse(&buf[..n], xid, mac).filter(|r| kinds.contains(&r.kind)) {
            return Some(r);
        }
    }
}

fn bind_to_device(sock: &UdpSocket, ifname: &str) -> std::io::Result<()> {
    let name = ifname.as_bytes();
    // SAFETY: the option value is a valid buffer of `name.len()` bytes for the call's
    // duration, and the fd is an open socket owned by `sock`.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
