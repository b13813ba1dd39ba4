//! systemd notifications (`sd_notify`) written by hand over the Unix datagram socket
//! in `$NOTIFY_SOCKET`, so the long-running service needs no libsystemd: READY once
//! started, WATCHDOG while alive, STATUS for `systemctl status`, STOPPING on exit.

use std::os::unix::net::UnixDatagram;

/// Sends one notification; silently nothing when not started by systemd.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let result = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        log::debug!("sd_notify: {e}");
    }
}

/// Half the watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(std::time::Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_to_the_socket() {
        let tmp = crate::testkit::tempdir::TempDir::new("notify");
        let dir = tmp.join("socket");
        let server = std::os::unix::net::UnixDatagram::bind(&dir).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &dir);
        super::notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_file(dir).unwrap();
    }
}
