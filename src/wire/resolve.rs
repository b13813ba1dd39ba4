//! Finding the central's address, on the calling thread (the agent stays
//! single-threaded). Two ways:
//!
//! - [`Dns::System`]: the platform's resolver (glibc's `getaddrinfo`: `/etc/hosts`,
//!   NSS, `/etc/resolv.conf`). The default of a dynamically linked build.
//! - [`Dns::Servers`]: a small DNS client of our own asking the given servers
//!   over UDP (TCP when an answer is truncated), after the hosts file. Used when
//!   the `dns` setting names servers, and always by a statically linked build,
//!   which runs where glibc's NSS modules do not exist (Android tablets): there
//!   the servers come from `resolv.conf` (`$PREFIX/etc/resolv.conf` under Termux,
//!   then `/etc/resolv.conf`).
//!
//! The packets are written and read here (RFC 1035 §4: one question, A and AAAA
//! answers, name compression skipped): `simple-dns` would do it too but adds
//! 51 KiB to the device binary for record types the agent never asks for; the
//! test DNS server (`testkit::dns`) uses it, so the two are checked against each
//! other. Every failure is a [`TransportError`] of the offline class that names
//! the host and the servers asked.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use super::TransportError;

/// How names are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dns {
    /// The platform's resolver.
    System,
    /// Our own client, asking these servers in order.
    Servers(Vec<SocketAddr>),
}

/// Servers asked when a static build finds no `resolv.conf` (an Android device
/// keeps its resolvers out of reach): public resolvers, with a warning that
/// says how to name the network's own.
const FALLBACK: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
    IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
];

/// One try's wait for an answer; two tries per server.
const TRY_TIMEOUT: Duration = Duration::from_secs(2);

impl Dns {
    /// From the `dns` setting: a list of servers, or nothing for the default
    /// (the system's resolver; a static build asks the `resolv.conf` servers).
    pub fn configured(setting: Option<&str>) -> Result<Dns, String> {
        match setting.map(str::trim).filter(|s| !s.is_empty()) {
            Some(list) => Ok(Dns::Servers(parse_servers(list)?)),
            None if cfg!(target_feature = "crt-static") => Ok(Dns::Servers(system_nameservers())),
            None => Ok(Dns::System),
        }
    }
}

/// "1.1.1.1, 192.168.1.1:5353, [2606:4700::1111]" → addresses (port 53 unless given).
pub fn parse_servers(list: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for item in list
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let addr = if let Ok(a) = item.parse::<SocketAddr>() {
            a
        } else if let Ok(ip) = item.trim_matches(['[', ']']).parse::<IpAddr>() {
            SocketAddr::new(ip, 53)
        } else {
            return Err(format!(
                "{item:?} is not a DNS server address (an IP address, optionally with :port)"
            ));
        };
        out.push(addr);
    }
    if out.is_empty() {
        return Err("no DNS server address given".into());
    }
    Ok(out)
}

/// The `nameserver` lines of a `resolv.conf`.
pub fn nameservers_in(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            let ip = rest.trim().split('%').next()?;
            ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Where resolver files live: Termux's prefix first, then the usual place.
fn etc_files(name: &str) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    if let Some(prefix) = std::env::var_os("PREFIX") {
        v.push(std::path::Path::new(&prefix).join("etc").join(name));
    }
    v.push(std::path::Path::new("/etc").join(name));
    v
}

/// The device's nameservers, or public ones (with a warning) when it names none.
pub fn system_nameservers() -> Vec<SocketAddr> {
    for f in etc_files("resolv.conf") {
        if let Ok(text) = std::fs::read_to_string(&f) {
            let servers = nameservers_in(&text);
            if !servers.is_empty() {
                return servers;
            }
        }
    }
    log::warn!(
        "no nameserver in resolv.conf: asking public resolvers (1.1.1.1, 8.8.8.8); name the network's \
         own with `fieldsync config set dns ADDRESS`"
    );
    FALLBACK.iter().map(|ip| SocketAddr::new(*ip, 53)).collect()
}

/// The addresses of `host` (a name, an IP literal, or `[v6]`), port `port`,
/// within `timeout` when our own client asks.
pub fn lookup(
    host: &str,
    port: u16,
    dns: &Dns,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, TransportError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let servers = match dns {
        Dns::System => {
            return (bare, port)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>())
                .map_err(|e| TransportError::unreachable(format!("cannot resolve {bare}: {e}")))
                .and_then(|v| {
                    if v.is_empty() {
                        Err(TransportError::unreachable(format!(
                            "{bare} has no address"
                        )))
                    } else {
                        Ok(v)
                    }
                });
        }
        Dns::Servers(s) => s,
    };
    if bare.eq_ignore_ascii_case("localhost") {
        return Ok(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), port),
        ]);
    }
    if let Some(ips) = etc_files("hosts").iter().find_map(|f| {
        std::fs::read_to_string(f)
            .ok()
            .and_then(|t| in_hosts(&t, bare))
    }) {
        return Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect());
    }
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no server answered");
    for server in servers {
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match ask(*server, bare, left.min(TRY_TIMEOUT)) {
                Ok(Answer::Found(ips)) => {
                    return Ok(ips
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect())
                }
                Ok(Answer::NoSuchName) => {
                    return Err(TransportError::unreachable(format!(
                        "cannot resolve {bare}: no such name (asked {server})"
                    )))
                }
                Err(e) => last = format!("{server}: {e}"),
            }
        }
    }
    let asked: Vec<String> = servers.iter().map(ToString::to_string).collect();
    Err(TransportError::unreachable(format!(
        "cannot resolve {bare} (asked {}): {last}",
        asked.join(", ")
    )))
}

/// `host`'s addresses in a hosts file, if it names it.
fn in_hosts(text: &str, host: &str) -> Option<Vec<IpAddr>> {
    let ips: Vec<IpAddr> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(host)).then_some(ip)
        })
        .collect();
    (!ips.is_empty()).then_some(ips)
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Found(Vec<IpAddr>),
    NoSuchName,
}

/// Record types asked for.
const A: u16 = 1;
const AAAA: u16 = 28;

/// One server, one try: A, then AAAA when there is no A record.
fn ask(server: SocketAddr, host: &str, timeout: Duration) -> Result<Answer, String> {
    match query(server, host, A, timeout)? {
        Answer::Found(ips) if ips.is_empty() => match query(server, host, AAAA, timeout)? {
            Answer::Found(ips) if ips.is_empty() => Err(format!("{host} has no address record")),
            other => Ok(other),
        },
        other => Ok(other),
    }
}

/// A query for `host`, type `qtype`, recursion desired.
fn encode_query(id: u16, host: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(18 + host.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    let name = host.trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{host:?} is not a host name"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 || !label.is_ascii() {
            return Err(format!("{host:?} is not a host name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // class IN
    Ok(q)
}

/// What an answer says, once it is known to answer query `id`.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Truncated,
    Answer(Answer),
}

/// Reads an answer to query `id`; `None`: not an answer to it (a stray packet).
fn decode_reply(p: &[u8], id: u16) -> Option<Result<Reply, String>> {
    let u16_at =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?])) };
    let (flags, rcode) = (*p.get(2)?, *p.get(3)?);
    if u16_at(0)? != id || flags & 0x80 == 0 {
        return None;
    }
    let bad = || Some(Err("the server's answer does not parse".to_string()));
    if flags & 0x02 != 0 {
        return Some(Ok(Reply::Truncated));
    }
    match rcode & 0x0f {
        0 => {}
        3 => return Some(Ok(Reply::Answer(Answer::NoSuchName))),
        rcode => return Some(Err(format!("the server answered rcode {rcode}"))),
    }
    let (Some(qd), Some(an)) = (u16_at(4), u16_at(6)) else {
        return bad();
    };
    let mut at = 12;
    // A name, compressed or not: its end (after a pointer, the name ends there).
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let len = *p.get(i)? as usize;
            match len {
                0 => return Some(i + 1),
                l if l & 0xc0 == 0xc0 => return Some(i + 2),
                l if l < 64 => i += 1 + l,
                _ => return None,
            }
        }
    };
    for _ in 0..qd {
        let Some(end) = skip_name(at) else {
            return bad();
        };
        at = end + 4;
    }
    let mut ips = Vec::new();
    for _ in 0..an {
        let Some(end) = skip_name(at) else {
            return bad();
        };
        let (Some(rtype), Some(len)) = (u16_at(end), u16_at(end + 8)) else {
            return bad();
        };
        let data = end + 10;
        let Some(rdata) = p.get(data..data + len as usize) else {
            return bad();
        };
        // Other types (a CNAME on the way) are passed over: the target's records
        // come in the same answer.
        match (rtype, rdata.len()) {
            (A, 4) => ips.push(IpAddr::from(<[u8; 4]>::try_from(rdata).ok()?)),
            (AAAA, 16) => ips.push(IpAddr::from(<[u8; 16]>::try_from(rdata).ok()?)),
            _ => {}
        }
        at = data + len as usize;
    }
    Some(Ok(Reply::Answer(Answer::Found(ips))))
}

fn query(server: SocketAddr, host: &str, qtype: u16, timeout: Duration) -> Result<Answer, String> {
    let id = crate::wire::credentials::random_bytes()
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .map_err(|e| e.to_string())?;
    let bytes = encode_query(id, host, qtype)?;
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).map_err(|e| e.to_string())?;
    sock.connect(server).map_err(|e| e.to_string())?;
    sock.send(&bytes).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    let until = Instant::now() + timeout;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no answer".into());
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let n = sock.recv(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                "no answer".to_string()
            }
            _ => e.to_string(),
        })?;
        // A stray or forged packet (another id) is dropped; keep waiting.
        match decode_reply(&buf[..n], id) {
            None => continue,
            Some(Ok(Reply::Truncated)) => return query_tcp(server, &bytes, id, left),
            Some(Ok(Reply::Answer(a))) => return Ok(a),
            Some(Err(e)) => return Err(e),
        }
    }
}

/// The same query over TCP (two-byte length prefix), for an answer too long for UDP.
fn query_tcp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    timeout: Duration,
) -> Result<Answer, String> {
    let mut s = TcpStream::connect_timeout(&server, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.write_all(&framed).map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).map_err(|e| e.to_string())?;
    match decode_reply(&buf, id) {
        Some(Ok(Reply::Answer(a))) => Ok(a),
        Some(Ok(Reply::Truncated)) => Err("a truncated answer over TCP".into()),
        Some(Err(e)) => Err(e),
        None => Err("an answer to another query".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_and_resolv_conf_parse() {
        assert_eq!(
            parse_servers("1.1.1.1, 192.168.1.1:5353 [2606:4700::1111]").unwrap(),
            vec![
                "1.1.1.1:53".parse().unwrap(),
                "192.168.1.1:5353".parse().unwrap(),
                "[2606:4700::1111]:53".parse().unwrap()
            ]
        );
        assert!(parse_servers("dns.example")
            .unwrap_err()
            .contains("not a DNS server"));
        assert_eq!(
            nameservers_in("# comment\nnameserver 10.0.0.1\nsearch lan\nnameserver fe80::1%eth0\n"),
            vec![
                "10.0.0.1:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            in_hosts(
                "127.0.0.1 localhost\n10.1.2.3 central.lan central # ours\n",
                "CENTRAL"
            ),
            Some(vec!["10.1.2.3".parse().unwrap()])
        );
        assert_eq!(in_hosts("10.1.2.3 other\n", "central"), None);
    }

    #[test]
    fn queries_and_answers_follow_rfc_1035() {
        let q = encode_query(0xbeef, "central.example.org", A).unwrap();
        assert_eq!(&q[..12], &[0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            &q[12..],
            b"\x07central\x07example\x03org\x00\x00\x01\x00\x01"
        );
        assert!(encode_query(1, "a..b", A).is_err());
        assert!(encode_query(1, &"x".repeat(64), A).is_err());
        // An answer: the question, a CNAME (compressed names), then the A record.
        let mut r = vec![0xbe, 0xef, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        r.extend_from_slice(&q[12..]);
        r.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'c', 0xc0, 20]);
        r.extend_from_slice(&[0xc0, 49, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3]);
        assert_eq!(
            decode_reply(&r, 0xbeef),
            Some(Ok(Reply::Answer(Answer::Found(vec!["10.1.2.3"
                .parse()
                .unwrap()]))))
        );
        assert_eq!(decode_reply(&r, 0xbeee), None, "another query's answer");
        let mut nx = r[..12].to_vec();
        nx[3] = 0x83;
        assert_eq!(
            decode_reply(&nx, 0xbeef),
            Some(Ok(Reply::Answer(Answer::NoSuchName)))
        );
        let mut tc = r.clone();
        tc[2] |= 0x02;
        assert_eq!(decode_reply(&tc, 0xbeef), Some(Ok(Reply::Truncated)));
        // Cut anywhere, it is an error, never a panic.
        for n in 12..r.len() {
            if let Some(Ok(Reply::Answer(Answer::Found(ips)))) = decode_reply(&r[..n], 0xbeef) {
                assert!(ips.is_empty(), "cut at {n}");
            }
        }
    }

    #[test]
    fn literals_need_no_server() {
        let none = Dns::Servers(vec![]);
        assert_eq!(
            lookup("10.0.0.7", 443, &none, Duration::from_secs(1)).unwrap(),
            vec!["10.0.0.7:443".parse().unwrap()]
        );
        assert_eq!(
            lookup("[::1]", 8080, &none, Duration::from_secs(1)).unwrap(),
            vec!["[::1]:8080".parse().unwrap()]
        );
    }

    #[test]
    fn a_server_that_does_not_answer_is_named() {
        // A bound socket that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dns = Dns::Servers(vec![silent.local_addr().unwrap()]);
        let e = lookup("central.example", 443, &dns, Duration::from_millis(300)).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("cannot resolve central.example") && m.contains("asked 127.0.0.1"),
            "{m}"
        );
    }
}
