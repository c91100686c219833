//! A small authoritative DNS server for tests, serving one fixed zone over UDP and TCP on
//! one loopback port (hickory's wire format): TXT and CNAME records by name, NODATA for a
//! known name without the asked type, NXDOMAIN for the rest, and silence for names told to
//! stay silent (a resolver's timeout). Its tasks end when it is dropped.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{CNAME, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// One record of the zone.
#[derive(Debug, Clone)]
pub enum Rec {
    Txt(&'static str, String),
    Cname(&'static str, &'static str),
}

#[derive(Debug, Default)]
struct Zone {
    records: Vec<(String, RData)>,
    silent: HashSet<String>,
    /// Every question asked: (name, type).
    asked: Mutex<Vec<(String, RecordType)>>,
}

#[derive(Debug)]
pub struct DnsZone {
    pub addr: SocketAddr,
    zone: Arc<Zone>,
    tasks: Vec<JoinHandle<()>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsZone {
    /// Serves `records`; questions about `silent` names are never answered.
    pub async fn start(records: Vec<Rec>, silent: &[&str]) -> Self {
        let records = records
            .into_iter()
            .map(|r| match r {
                Rec::Txt(name, text) => {
                    // A TXT string holds at most 255 bytes: longer text is several.
                    let chunks: Vec<String> = text
                        .as_bytes()
                        .chunks(255)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect();
                    (key(name), RData::TXT(TXT::new(chunks)))
                }
                Rec::Cname(name, target) => (
                    key(name),
                    RData::CNAME(CNAME(Name::from_ascii(format!("{target}.")).unwrap())),
                ),
            })
            .collect();
        let zone = Arc::new(Zone {
            records,
            silent: silent.iter().map(|s| key(s)).collect(),
            asked: Mutex::default(),
        });
        // One port for both: UDP first, then TCP on the same port (retried if taken).
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let z = Arc::clone(&zone);
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                if let Some(reply) = answer(&z, &buf[..n]) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        let z = Arc::clone(&zone);
        let tcp_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let z = Arc::clone(&z);
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    while stream.read_exact(&mut len).await.is_ok() {
                        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if stream.read_exact(&mut q).await.is_err() {
                            return;
                        }
                        let Some(reply) = answer(&z, &q) else { return };
                        let Ok(n) = u16::try_from(reply.len()) else {
                            return;
                        };
                        if stream.write_all(&n.to_be_bytes()).await.is_err()
                            || stream.write_all(&reply).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            zone,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// The questions asked so far.
    pub fn asked(&self) -> Vec<(String, RecordType)> {
        self.zone.asked.lock().unwrap().clone()
    }
}

impl Drop for DnsZone {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The reply to one query message, or `None` to stay silent.
fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let name = key(&question.name().to_ascii());
    zone.asked
        .lock()
        .unwrap()
        .push((name.clone(), question.query_type()));
    if zone.silent.contains(&name) {
        return None;
    }
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.edns = request.edns.clone();
    reply.add_query(question.clone());
    let known = zone.records.iter().any(|(n, _)| *n == name);
    let answers: Vec<Record> = zone
        .records
        .iter()
        .filter(|(n, data)| *n == name && data.record_type() == question.query_type())
        .map(|(_, data)| Record::from_rdata(question.name().clone(), 60, data.clone()))
        .collect();
    if !known {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply.add_answers(answers);
    reply.to_vec().ok()
}
