//! A tiny DNS server for tests: answers A queries for the names it is given
//! (NXDOMAIN for any other) on a UDP port of 127.0.0.1, so a test reaches the
//! central *by name* through the agent's own DNS client, without `/etc/hosts` or
//! the system's resolver. It counts the queries it answered.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use simple_dns::rdata::{RData, A};
use simple_dns::{Packet, PacketFlag, ResourceRecord, CLASS, QTYPE, RCODE, TYPE};

pub struct DnsServer {
    pub addr: SocketAddr,
    pub answered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    /// Serves `names` (lower case, without the trailing dot) until dropped.
    pub fn start(names: &[(&str, Ipv4Addr)]) -> std::io::Result<DnsServer> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
        let addr = sock.local_addr()?;
        let names: Vec<(String, Ipv4Addr)> = names
            .iter()
            .map(|(n, ip)| (n.to_ascii_lowercase(), *ip))
            .collect();
        let answered = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (answered.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !halt.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Some(reply) = answer(&buf[..n], &names) else {
                    continue;
                };
                if sock.send_to(&reply, from).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(DnsServer {
            addr,
            answered,
            stop,
        })
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(query: &[u8], names: &[(String, Ipv4Addr)]) -> Option<Vec<u8>> {
    let q = Packet::parse(query).ok()?;
    let question = q.questions.first()?.clone();
    let mut reply = Packet::new_reply(q.id());
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    let asked = question
        .qname
        .to_string()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let known = names.iter().find(|(n, _)| *n == asked).map(|(_, ip)| *ip);
    match known {
        None => *reply.rcode_mut() = RCODE::NameError,
        Some(ip) if question.qtype == QTYPE::TYPE(TYPE::A) => {
            reply.answers.push(ResourceRecord::new(
                question.qname.clone(),
                CLASS::IN,
                60,
                RData::A(A {
                    address: u32::from(ip),
                }),
            ));
        }
        Some(_) => {} // the name exists, without records of that type
    }
    reply.questions.push(question);
    reply.build_bytes_vec().ok()
}
