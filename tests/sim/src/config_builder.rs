//! Typed building blocks of a simulator configuration. Test harnesses describe their
//! tenants, apps and mailboxes in code (checked by the compiler, each key's default taken
//! from the one place serde keeps it) instead of each formatting TOML of its own; the
//! simulator's own configuration tests still write TOML, because TOML is what they test.

use serde::de::DeserializeOwned;

use crate::config::{
    AppConfig, FaultsConfig, LimitsConfig, MailboxConfig, SimConfig, TenantConfig,
};

/// `T` with `fields` set and every other key at its serde default, as if a TOML table held
/// only `fields`.
fn with_defaults<T: DeserializeOwned>(fields: toml::Table) -> T {
    T::deserialize(fields).unwrap_or_else(|e| panic!("a built configuration table: {e}"))
}

fn strings(values: &[&str]) -> toml::Value {
    toml::Value::Array(values.iter().map(|s| toml::Value::from(*s)).collect())
}

impl TenantConfig {
    /// A tenant whose accepted domains are `domains` (recipients elsewhere are external).
    pub fn new(id: &str, domains: &[&str]) -> Self {
        let mut t = toml::Table::new();
        t.insert("id".into(), id.into());
        t.insert("domains".into(), strings(domains));
        with_defaults(t)
    }

    /// The tenant external recipient limit (TERRL): `recipients` per `window_ms`.
    pub fn with_external_limit(mut self, recipients: u64, window_ms: u64) -> Self {
        self.external_recipient_limit = Some(recipients);
        self.external_window_ms = window_ms;
        self
    }
}

impl AppConfig {
    /// An app registration of `tenant` with a client secret, granted every mailbox of its
    /// tenant.
    pub fn with_secret(tenant: &str, client_id: &str, secret: &str) -> Self {
        let mut t = toml::Table::new();
        t.insert("tenant".into(), tenant.into());
        t.insert("client_id".into(), client_id.into());
        t.insert("client_secret".into(), secret.into());
        t.insert("mailboxes".into(), strings(&["*"]));
        with_defaults(t)
    }
}

impl MailboxConfig {
    /// A licensed mailbox of `tenant`, with Exchange's default limits and no password.
    pub fn new(address: &str, tenant: &str) -> Self {
        let mut t = toml::Table::new();
        t.insert("address".into(), address.into());
        t.insert("tenant".into(), tenant.into());
        with_defaults(t)
    }
}

impl LimitsConfig {
    /// Both sending windows: `messages` per `message_window_ms` and `recipients` per
    /// `recipient_window_ms`; the other limits stay at their defaults.
    pub fn windows(
        messages: u64,
        message_window_ms: u64,
        recipients: u64,
        recipient_window_ms: u64,
    ) -> Self {
        Self {
            messages_per_window: Some(messages),
            message_window_ms: Some(message_window_ms),
            recipients_per_window: Some(recipients),
            recipient_window_ms: Some(recipient_window_ms),
            ..Self::default()
        }
    }
}

impl FaultsConfig {
    /// Faults written as the body of a `[faults]` table (`"reply_451_rate = 0.2"`), for
    /// harnesses whose tests name their faults that way.
    pub fn from_toml_fragment(fragment: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(fragment)
    }
}

impl SimConfig {
    /// Adds a tenant, its app and nothing else.
    pub fn with_tenant(mut self, tenant: TenantConfig, app: AppConfig) -> Self {
        self.tenants.push(tenant);
        self.apps.push(app);
        self
    }

    /// Adds a mailbox.
    pub fn with_mailbox(mut self, mailbox: MailboxConfig) -> Self {
        self.mailboxes.push(mailbox);
        self
    }

    /// The configuration as TOML, for a simulator started as a separate process.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| panic!("the configuration serialises: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_parts_equal_their_toml_and_validate() {
        let built = SimConfig::default()
            .with_tenant(
                TenantConfig::new("t0", &["contoso.example"]).with_external_limit(50, 60_000),
                AppConfig::with_secret("t0", "app-0", "s3cret"),
            )
            .with_mailbox(MailboxConfig {
                limits: LimitsConfig::windows(30, 60_000, 10_000, 86_400_000),
                ..MailboxConfig::new("mbx0@contoso.example", "t0")
            });
        let written = SimConfig::from_toml_str(
            "[[tenants]]\nid = \"t0\"\ndomains = [\"contoso.example\"]\nexternal_recipient_limit = 50\nexternal_window_ms = 60000\n\
             [[apps]]\ntenant = \"t0\"\nclient_id = \"app-0\"\nclient_secret = \"s3cret\"\nmailboxes = [\"*\"]\n\
             [[mailboxes]]\naddress = \"mbx0@contoso.example\"\ntenant = \"t0\"\n\
             [mailboxes.limits]\nmessages_per_window = 30\nmessage_window_ms = 60000\nrecipients_per_window = 10000\nrecipient_window_ms = 86400000\n",
        )
        .expect("written config");
        built.validate().expect("built config validates");
        assert_eq!(built.to_toml(), written.to_toml());
        // And the TOML of a built configuration reads back as the same configuration.
        let again = SimConfig::from_toml_str(&built.to_toml()).expect("round trip");
        assert_eq!(again.to_toml(), built.to_toml());
    }

    #[test]
    fn a_fault_fragment_names_an_unknown_key() {
        let e =
            FaultsConfig::from_toml_fragment("reply_452_rate = 0.5").expect_err("an unknown key");
        assert!(e.to_string().contains("reply_452_rate"), "{e}");
    }
}
