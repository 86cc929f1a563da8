//! The guest init's DHCP client: DISCOVER, OFFER, REQUEST, ACK on a UDP socket bound to
//! the interface (SO_BINDTODEVICE; the server broadcasts its replies), retried for up to
//! a minute (slow TCG guests, a dnsmasq that starts late). The hostname is sent so the
//! network's DNS answers for it.
//!
//! The leases are then kept for as long as the guest runs ([`keep_in_threads`] while PID 1
//! runs a command, [`keep_in_children`] beside the guest's own init): RENEWING at T1
//! (unicast to the server), REBINDING at T2 (broadcast), and a new DISCOVER when the
//! lease is refused or ends. Beside systemd a keeper steps back as soon as
//! systemd-networkd manages the interface (its state file names a network file), since
//! networkd then renews the same lease itself (`ClientIdentifier=mac`, as ours).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use microvm_init::dhcp::{self, LeaseTimes, Reply, Step};

use super::console::say;
use super::fail::{Context, Failure};

const TOTAL: Duration = Duration::from_secs(60);

/// A lease the init holds on one interface.
struct Held {
    ifname: String,
    index: u32,
    mac: String,
    lease: Reply,
    acked: Instant,
}

/// The leases [`acquire`]d at boot, until they are handed to their keepers.
static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());

/// Remembers a configured lease so that it is renewed later.
pub fn hold(ifname: &str, index: u32, mac: &str, lease: Reply) {
    let held = Held {
        ifname: ifname.into(),
        index,
        mac: mac.into(),
        lease,
        acked: Instant::now(),
    };
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(held);
}

fn take_held() -> Vec<Held> {
    std::mem::take(&mut *HELD.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Command mode: one thread per lease, renewing it while PID 1 runs.
pub fn keep_in_threads() {
    for held in take_held() {
        std::thread::spawn(move || keep(held, false));
    }
}

/// Hand-over: one process per lease, forked now, renewing it for as long as the guest
/// lets it run (`systemd`: until systemd-networkd manages the interface).
pub fn keep_in_children(systemd: bool) {
    for held in take_held() {
        // SAFETY: PID 1 is single-threaded in hand-over mode (no thread was spawned), so
        // the child may run ordinary Rust code after fork.
        if unsafe { libc::fork() } == 0 {
            keep(held, systemd);
            // SAFETY: _exit() ends this forked child without running PID 1's atexit state.
            unsafe { libc::_exit(0) };
        }
    }
}

/// Whether systemd-networkd manages the link `index`: its state file
/// (`/run/systemd/netif/links/INDEX`) names the network file it applied.
fn networkd_manages(index: u32) -> bool {
    std::fs::read_to_string(format!("/run/systemd/netif/links/{index}"))
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("NETWORK_FILE=")))
}

/// Renews `held` until its lease is infinite (or a new one cannot be had); beside
/// `systemd`, until networkd manages the interface.
fn keep(mut held: Held, systemd: bool) {
    let Some(mac) = dhcp::parse_mac(&held.mac) else {
        return;
    };
    let Ok((sock, hostname)) = client_socket(&held.ifname) else {
        say(&format!(
            "microvm-init: {}: cannot open the DHCP socket; the lease is not renewed",
            held.ifname
        ));
        return;
    };
    let mut attempt: u32 = 1 << 12;
    while let Some(times) = LeaseTimes::of(&held.lease) {
        if systemd && networkd_manages(held.index) {
            say(&format!(
                "microvm-init: {}: systemd-networkd manages the DHCP lease from now on",
                held.ifname
            ));
            return;
        }
        let (to, wait) = match times.step(held.acked.elapsed()) {
            // Beside systemd, look for networkd now and then while waiting.
            Step::Wait(d) if systemd => {
                std::thread::sleep(d.min(Duration::from_secs(60)));
                continue;
            }
            Step::Wait(d) => {
                std::thread::sleep(d);
                continue;
            }
            Step::Renew(wait) => (held.lease.server.unwrap_or(Ipv4Addr::BROADCAST), wait),
            Step::Rebind(wait) => (Ipv4Addr::BROADCAST, wait),
            Step::Expired => {
                say(&format!(
                    "microvm-init: {}: DHCP lease {} ended",
                    held.ifname, held.lease.address
                ));
                if !reacquire(&mut held) {
                    return;
                }
                continue;
            }
        };
        attempt += 1;
        let xid = xid(mac, attempt);
        let sent = Instant::now();
        let request = dhcp::extend(xid, mac, &hostname, held.lease.address);
        if sock
            .send_to(&request, SocketAddrV4::new(to, dhcp::SERVER_PORT))
            .is_err()
        {
            std::thread::sleep(wait);
            continue;
        }
        match receive(&sock, xid, mac, wait, &[dhcp::ACK, dhcp::NAK]) {
            Some(ack) if ack.kind == dhcp::ACK && ack.address == held.lease.address => {
                say(&format!(
                    "microvm-init: {}: DHCP lease {} renewed",
                    held.ifname, ack.address
                ));
                held.lease = ack;
                held.acked = sent;
            }
            Some(_) => {
                say(&format!(
                    "microvm-init: {}: DHCP lease {} refused",
                    held.ifname, held.lease.address
                ));
                if !reacquire(&mut held) {
                    return;
                }
            }
            None => {} // the schedule says when to ask again
        }
    }
}

/// A new lease after the old one was refused or ended; false when none can be had.
fn reacquire(held: &mut Held) -> bool {
    let lease = match acquire(&held.ifname, &held.mac) {
        Ok(lease) => lease,
        Err(e) => {
            say(&format!("microvm-init: warning: {e}"));
            return false;
        }
    };
    if let Err(e) = super::net::replace_lease(&held.ifname, held.index, &held.lease, &lease) {
        say(&format!("microvm-init: warning: {e}"));
    }
    held.lease = lease;
    held.acked = Instant::now();
    true
}

/// A UDP socket on the DHCP client port of `ifname`, and the hostname to send.
/// Bound to the device before the port, with SO_REUSEADDR, so that the keepers of several
/// interfaces each have one.
fn client_socket(ifname: &str) -> std::io::Result<(UdpSocket, String)> {
    use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    let sock = UdpSocket::from(fd);
    bind_to_device(&sock, ifname)?;
    rustix::net::bind(
        &sock,
        &SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, dhcp::CLIENT_PORT),
    )?;
    sock.set_broadcast(true)?;
    let hostname = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    Ok((sock, hostname))
}

/// Asks for a lease on `ifname` (already up) and returns the ACK.
pub fn acquire(ifname: &str, mac: &str) -> Result<Reply, Failure> {
    let what = || format!("DHCP on {ifname}");
    let mac =
        dhcp::parse_mac(mac).ok_or_else(|| Failure::new(what(), format!("bad MAC {mac:?}")))?;
    let (sock, hostname) = client_socket(ifname).ctx(what)?;
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
