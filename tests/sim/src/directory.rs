//! Lookup tables built once from the configuration: tenants, apps and mailboxes by key.

use std::collections::HashMap;

use crate::config::{AppConfig, SimConfig, TenantConfig};

/// A mailbox as the SMTP server needs it.
#[derive(Debug, Clone)]
pub(crate) struct Mailbox {
    /// Lower case.
    pub address: String,
    /// Tenant id, lower case.
    pub tenant: String,
    pub password: Option<String>,
    /// Lower case; may contain "*".
    pub send_as: Vec<String>,
    pub smtp_auth_enabled: bool,
    /// Has an Exchange Online licence (Graph serves it).
    pub licensed: bool,
}

impl Mailbox {
    /// Whether this mailbox may use `from` as a sender (itself, or Send As rights).
    pub fn may_send_as(&self, from: &str) -> bool {
        from.eq_ignore_ascii_case(&self.address)
            || self
                .send_as
                .iter()
                .any(|s| s == "*" || s.eq_ignore_ascii_case(from))
    }
}

#[derive(Debug)]
pub(crate) struct Directory {
    /// By lower-case id.
    pub tenants: HashMap<String, TenantConfig>,
    /// Lower-case tenant id or domain -> lower-case tenant id.
    pub tenant_aliases: HashMap<String, String>,
    /// By client id (exact).
    pub apps: HashMap<String, AppConfig>,
    /// By lower-case address.
    pub mailboxes: HashMap<String, Mailbox>,
}

impl Directory {
    pub fn new(cfg: &SimConfig) -> Self {
        let mut tenant_aliases = HashMap::new();
        let mut tenants = HashMap::new();
        for t in &cfg.tenants {
            let id = t.id.to_ascii_lowercase();
            for d in &t.domains {
                tenant_aliases.insert(d.to_ascii_lowercase(), id.clone());
            }
            tenant_aliases.insert(id.clone(), id.clone());
            tenants.insert(id, t.clone());
        }
        let apps = cfg
            .apps
            .iter()
            .map(|a| (a.client_id.clone(), a.clone()))
            .collect();
        let mailboxes = cfg
            .mailboxes
            .iter()
            .map(|m| {
                let mb = Mailbox {
                    address: m.address.to_ascii_lowercase(),
                    tenant: m.tenant.to_ascii_lowercase(),
                    password: m.password.clone(),
                    send_as: m.send_as.iter().map(|s| s.to_ascii_lowercase()).collect(),
                    smtp_auth_enabled: m.smtp_auth_enabled,
                    licensed: m.licensed,
                };
                (mb.address.clone(), mb)
            })
            .collect();
        Self {
            tenants,
            tenant_aliases,
            apps,
            mailboxes,
        }
    }

    pub fn mailbox(&self, address: &str) -> Option<&Mailbox> {
        self.mailboxes.get(&address.to_ascii_lowercase())
    }

    /// Resolves a tenant given by id or by one of its domains.
    pub fn tenant(&self, id_or_domain: &str) -> Option<&TenantConfig> {
        let id = self
            .tenant_aliases
            .get(&id_or_domain.to_ascii_lowercase())?;
        self.tenants.get(id)
    }

    /// Whether `app` has been granted access to `mailbox` (same tenant, listed or "*").
    pub fn app_may_use(&self, app: &AppConfig, mailbox: &Mailbox) -> bool {
        app.tenant.eq_ignore_ascii_case(&mailbox.tenant)
            && app
                .mailboxes
                .iter()
                .any(|m| m == "*" || m.eq_ignore_ascii_case(&mailbox.address))
    }
}
