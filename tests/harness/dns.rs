//! A stub DNS server for SRV questions (UDP, on 127.0.0.1): it answers the names it is given
//! with their records and every other name with NXDOMAIN, and counts the questions per name,
//! so the etcd discovery of `etcd3.srv` can be tested without touching the machine's resolver
//! (the daemon is pointed at it with `SPILO_DNS_SERVERS`).

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// One SRV record: priority, weight, port, target.
pub type Record = (u16, u16, u16, String);

/// The stub; stops on drop.
pub struct DnsStub {
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// Questions asked, in order.
    pub asked: Arc<Mutex<Vec<String>>>,
    zone: Arc<Mutex<BTreeMap<String, Vec<Record>>>>,
    stop: Arc<AtomicBool>,
}

fn read_qname(msg: &[u8]) -> Option<(String, usize)> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(pos)? as usize;
        if len == 0 {
            return Some((labels.join("."), pos + 1));
        }
        labels.push(String::from_utf8_lossy(msg.get(pos + 1..pos + 1 + len)?).into_owned());
        pos += 1 + len;
    }
}

fn answer(q: &[u8], end_of_question: usize, records: Option<&Vec<Record>>) -> Vec<u8> {
    let mut a = q[..end_of_question + 4].to_vec();
    a[2] = 0x81;
    let n = records.map(Vec::len).unwrap_or(0) as u16;
    a[3] = if records.is_some() { 0x80 } else { 0x83 };
    a[4..6].copy_from_slice(&1u16.to_be_bytes());
    a[6..8].copy_from_slice(&n.to_be_bytes());
    a[8..12].copy_from_slice(&[0, 0, 0, 0]);
    for (prio, weight, port, target) in records.into_iter().flatten() {
        a.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 30]);
        let mut rdata = Vec::new();
        rdata.extend_from_slice(&prio.to_be_bytes());
        rdata.extend_from_slice(&weight.to_be_bytes());
        rdata.extend_from_slice(&port.to_be_bytes());
        for l in target.trim_end_matches('.').split('.') {
            rdata.push(l.len() as u8);
            rdata.extend_from_slice(l.as_bytes());
        }
        rdata.push(0);
        a.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        a.extend_from_slice(&rdata);
    }
    a
}

impl DnsStub {
    /// Serves `zone`: name (no final dot) → its SRV records.
    pub fn start(zone: BTreeMap<String, Vec<Record>>) -> DnsStub {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the DNS stub");
        let addr = sock.local_addr().expect("addr");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let zone = Arc::new(Mutex::new(zone));
        let (s, log, names) = (stop.clone(), asked.clone(), zone.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let q = &buf[..n];
                let Some((name, end)) = read_qname(q) else {
                    continue;
                };
                if q.len() < end + 4 {
                    continue;
                }
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(name.clone());
                let records = names
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&name)
                    .cloned();
                let _ = sock.send_to(&answer(q, end, records.as_ref()), from);
            }
        });
        DnsStub {
            addr,
            asked,
            zone,
            stop,
        }
    }

    /// How often `name` was asked.
    pub fn asked(&self, name: &str) -> u32 {
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|n| *n == name)
            .count() as u32
    }

    /// The questions asked so far, in order.
    pub fn questions(&self) -> Vec<String> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes `records` for `name`.
    pub fn set(&self, name: &str, records: Vec<Record>) {
        self.zone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), records);
    }
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
