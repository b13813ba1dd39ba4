//! Link changes from the kernel, for `run` (issue 32): a NETLINK_ROUTE socket
//! subscribed to link, address and route events. `run` sleeps on it beside
//! the signal pipe while the central cannot be reached, so a sync starts
//! within moments of an interface, an address or a default route appearing,
//! instead of at the next probe.
//!
//! What holds: the messages are not parsed — any event means "look again"
//! (a cheap TCP probe decides), so a kernel with other message shapes costs
//! nothing but a probe. Where the socket cannot be had (not Linux, a sandbox
//! without netlink), `run` keeps its probe schedule and `status` says so.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// `RTMGRP_*` groups: links, IPv4 and IPv6 addresses and routes.
const GROUPS: u32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;

pub struct LinkEvents(OwnedFd);

impl LinkEvents {
    /// The kernel's link events, or why they cannot be had.
    pub fn open() -> std::io::Result<LinkEvents> {
        use rustix::net::{bind, netlink::SocketAddrNetlink, socket_with, AddressFamily};
        use rustix::net::{SocketFlags, SocketType};
        let fd = socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        bind(&fd, &SocketAddrNetlink::new(0, GROUPS))?;
        Ok(LinkEvents(fd))
    }

    /// Reads every waiting event; how many messages there were.
    pub fn drain(&self) -> usize {
        let mut buf = [0u8; 8192];
        let mut n = 0;
        while let Ok((_, len)) =
            rustix::net::recv(&self.0, &mut buf[..], rustix::net::RecvFlags::DONTWAIT)
        {
            if len == 0 {
                break;
            }
            n += 1;
        }
        n
    }
}

impl AsFd for LinkEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// What woke a sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// The time ran out.
    Time,
    /// A signal's byte arrived on the pipe.
    Signal,
    /// The kernel reported a link, address or route change.
    Link,
}

/// Sleeps until `pipe` has a byte, `link` (when given) has an event, or `d`
/// has passed.
pub fn sleep(pipe: &impl AsFd, link: Option<&LinkEvents>, d: std::time::Duration) -> Woke {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let timeout = Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    };
    let mut fds = vec![PollFd::new(pipe, PollFlags::IN)];
    if let Some(l) = link {
        fds.push(PollFd::new(l, PollFlags::IN));
    }
    match poll(&mut fds, Some(&timeout)) {
        Ok(0) => Woke::Time,
        // Interrupted: a signal came (its byte follows on the pipe).
        Err(_) => Woke::Signal,
        Ok(_) if !fds[0].revents().is_empty() => Woke::Signal,
        Ok(_) => Woke::Link,
    }
}
