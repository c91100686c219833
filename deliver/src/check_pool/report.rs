//! The outcome of `check-pool`: one row per mailbox and one block per sender domain,
//! printed as a table or as JSON.

use serde::Serialize;

use crate::sender_domain::check::{DomainCheck, Outcome};

/// One mailbox's check.
#[derive(Debug, Clone, Serialize)]
pub struct MailboxCheck {
    pub mailbox: String,
    /// Our tenant id (`[[deliver.tenants]] id`).
    pub tenant: String,
    /// `oauth2 (secret)`, `oauth2 (certificate)` or `password`.
    pub auth: &'static str,
    /// `host:port`.
    pub endpoint: String,
    pub ok: bool,
    /// Where it stopped: `token`, `connect`, `starttls`, `auth`, `test_message`, `graph`, or
    /// `done`.
    pub stage: String,
    /// Exchange's (or Entra's) answer at that stage.
    pub reply: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The reply to the test message (`--send-test`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_message: Option<String>,
    /// Reading the Inbox through Microsoft Graph (`[deliver.graph]` enabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph: Option<String>,
    /// What may fail later without failing the check (a permission the token does not
    /// show, which RBAC for Applications may grant), each with its fix.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolReport {
    pub ok: bool,
    pub mailboxes: Vec<MailboxCheck>,
    /// The From domains' SPF, DKIM and DMARC (`[deliver.check_pool] sender_domains`).
    pub domains: Vec<DomainCheck>,
}

impl PoolReport {
    pub fn new(mailboxes: Vec<MailboxCheck>, domains: Vec<DomainCheck>) -> Self {
        Self {
            ok: mailboxes.iter().all(|m| m.ok) && domains.iter().all(|d| d.ok),
            mailboxes,
            domains,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Columns MAILBOX, TENANT, AUTH, RESULT, REPLY; a failure's hint on the line below.
    pub fn to_table(&self) -> String {
        let head = ["MAILBOX", "TENANT", "AUTH", "RESULT", "REPLY"];
        let rows: Vec<[String; 5]> = self
            .mailboxes
            .iter()
            .map(|m| {
                let result = if m.ok {
                    "ok".to_owned()
                } else {
                    format!("FAILED at {}", m.stage)
                };
                let mut reply = match &m.test_message {
                    Some(t) => format!("{} | test message: {t}", m.reply),
                    None => m.reply.clone(),
                };
                if let Some(g) = &m.graph {
                    reply.push_str(&format!(" | graph: {g}"));
                }
                [
                    m.mailbox.clone(),
                    m.tenant.clone(),
                    m.auth.to_owned(),
                    result,
                    reply,
                ]
            })
            .collect();
        let mut width = head.map(str::len);
        for r in &rows {
            for (w, cell) in width.iter_mut().zip(r.iter()).take(4) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 5]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i < 4 {
                    s.push_str(&format!("{c:<w$}  ", w = width[i]));
                } else {
                    s.push_str(c);
                }
            }
            s.trim_end().to_owned() + "\n"
        };
        let mut out = line(head);
        for (r, m) in rows.iter().zip(&self.mailboxes) {
            out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
            if let Some(h) = &m.hint {
                out.push_str(&format!("    -> {h}\n"));
            }
            for w in &m.warnings {
                out.push_str(&format!("    warning: {w}\n"));
            }
        }
        let failed = self.mailboxes.iter().filter(|m| !m.ok).count();
        out.push_str(&if failed == 0 {
            format!("all {} mailboxes passed\n", self.mailboxes.len())
        } else {
            format!("{failed} of {} mailboxes failed\n", self.mailboxes.len())
        });
        out.push_str(&self.domains_table());
        out
    }

    /// One line per check of each sender domain, its fix below a warning or failure.
    fn domains_table(&self) -> String {
        if self.domains.is_empty() {
            return String::new();
        }
        let width = self
            .domains
            .iter()
            .map(|d| d.domain.len())
            .max()
            .unwrap_or(0)
            .max("SENDER DOMAIN".len());
        let mut out = format!("\n{:<width$}  CHECK  RESULT   DETAIL\n", "SENDER DOMAIN");
        for d in &self.domains {
            for f in &d.findings {
                out.push_str(&format!(
                    "{:<width$}  {:<5}  {:<7}  {}\n",
                    d.domain,
                    f.check,
                    f.result.as_str(),
                    f.detail
                ));
                if let Some(fix) = &f.fix {
                    out.push_str(&format!("    -> {fix}\n"));
                }
            }
        }
        let count = |o: Outcome| {
            self.domains
                .iter()
                .flat_map(|d| &d.findings)
                .filter(|f| f.result == o)
                .count()
        };
        let failed = self.domains.iter().filter(|d| !d.ok).count();
        out.push_str(&format!(
            "{} sender domains: {failed} failed, {} warnings\n",
            self.domains.len(),
            count(Outcome::Warning)
        ));
        out
    }
}
