//! DNS for the sender-domain checks: TXT and CNAME lookups through hickory-resolver, each
//! with its own time limit, one attempt per name server, and a cap on what a TXT answer may
//! hold, so a slow or hostile server cannot stall or bloat `check-pool`.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

/// Records kept from one TXT answer (a domain has a handful: SPF, verification tokens).
pub const MAX_TXT_RECORDS: usize = 32;
/// Bytes of one TXT record (its strings joined): SPF and DMARC records are far shorter.
pub const MAX_TXT_BYTES: usize = 4096;

/// What a lookup found out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The name does not exist or has no record of that type (NXDOMAIN, NODATA).
    #[error("no {kind} record at {name}")]
    NotFound { name: String, kind: &'static str },
    /// No answer we can use: timeout, SERVFAIL, refused, an oversized record.
    #[error("DNS lookup of {kind} {name} failed: {reason}")]
    Failed {
        name: String,
        kind: &'static str,
        reason: String,
    },
}

/// A resolver with the checks' bounds.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    timeout: Duration,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Dns {
    /// The system's resolvers (`/etc/resolv.conf`), or the one at `server` (UDP, and TCP
    /// for truncated answers). `timeout` bounds each lookup.
    pub fn new(server: Option<SocketAddr>, timeout: Duration) -> Result<Self, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    provider,
                )
            }
            None => TokioResolver::builder(provider)
                .map_err(|e| format!("the system's DNS configuration: {e}"))?,
        };
        let options = builder.options_mut();
        options.timeout = timeout;
        options.attempts = 1;
        options.cache_size = 256;
        let resolver = builder
            .build()
            .map_err(|e| format!("the DNS resolver: {e}"))?;
        Ok(Self { resolver, timeout })
    }

    /// The TXT records at `name`, each record's strings joined.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, LookupError> {
        let records = self.lookup(name, RecordType::TXT, "TXT").await?;
        let mut out = Vec::new();
        for data in records.into_iter().take(MAX_TXT_RECORDS) {
            let RData::TXT(txt) = data else { continue };
            let len: usize = txt.txt_data.iter().map(|s| s.len()).sum();
            if len > MAX_TXT_BYTES {
                return Err(LookupError::Failed {
                    name: name.to_owned(),
                    kind: "TXT",
                    reason: format!("a record of {len} bytes (more than {MAX_TXT_BYTES})"),
                });
            }
            let joined: Vec<u8> = txt
                .txt_data
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            out.push(String::from_utf8_lossy(&joined).into_owned());
        }
        Ok(out)
    }

    /// The target of the CNAME at `name` (lower case, without the final dot).
    pub async fn cname(&self, name: &str) -> Result<String, LookupError> {
        let records = self.lookup(name, RecordType::CNAME, "CNAME").await?;
        records
            .into_iter()
            .find_map(|data| match data {
                RData::CNAME(c) => Some(c.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
                _ => None,
            })
            .ok_or_else(|| LookupError::NotFound {
                name: name.to_owned(),
                kind: "CNAME",
            })
    }

    async fn lookup(
        &self,
        name: &str,
        kind: RecordType,
        label: &'static str,
    ) -> Result<Vec<RData>, LookupError> {
        let failed = |reason: String| LookupError::Failed {
            name: name.to_owned(),
            kind: label,
            reason,
        };
        // Fully qualified: no search domains appended.
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let answer = tokio::time::timeout(self.timeout, self.resolver.lookup(fqdn, kind))
            .await
            .map_err(|_| failed(format!("no answer within {:?}", self.timeout)))?;
        match answer {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == kind)
                .map(|r| r.data.clone())
                .collect()),
            Err(e) if e.is_no_records_found() => Err(LookupError::NotFound {
                name: name.to_owned(),
                kind: label,
            }),
            Err(e) => Err(failed(e.to_string())),
        }
    }
}
