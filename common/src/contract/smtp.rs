//! `SmtpReply`: a server's answer with its enhanced status code pulled out of the text.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpReply {
    pub code: u16,
    /// RFC 3463 enhanced status code (`5.7.139`). Exchange puts it at the start of the text
    /// only, so it is parsed from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    pub text: String,
}

impl SmtpReply {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        let text = text.into();
        let enhanced = enhanced_code(&text).map(str::to_owned);
        Self {
            code,
            enhanced,
            text,
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl std::fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// Finds `x.y.z` where the text starts (after optional spaces), as RFC 3463 places it.
fn enhanced_code(text: &str) -> Option<&str> {
    let token = text.split_whitespace().next()?;
    let token = token.trim_end_matches([',', ';', ':']);
    let mut parts = token.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let ok = parts.next().is_none()
        && matches!(class, "2" | "4" | "5")
        && (1..=3).contains(&subject.len())
        && (1..=3).contains(&detail.len())
        && subject
            .chars()
            .chain(detail.chars())
            .all(|c| c.is_ascii_digit());
    ok.then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_come_from_the_text() {
        let r = SmtpReply::new(
            535,
            "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled",
        );
        assert_eq!(r.enhanced.as_deref(), Some("5.7.139"));
        let r = SmtpReply::new(
            554,
            "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
        );
        assert_eq!(r.enhanced.as_deref(), Some("5.2.0"));
        assert_eq!(SmtpReply::new(250, "OK queued").enhanced, None);
        assert_eq!(
            SmtpReply::new(451, "4.7.500 Server busy")
                .enhanced
                .as_deref(),
            Some("4.7.500")
        );
        assert_eq!(SmtpReply::new(550, "1.2.3 nope").enhanced, None);
    }
}
