//! The OData query options the simulated Graph understands: `$filter` with one
//! `property eq 'literal'` clause (quotes doubled inside the literal, as OData escapes them),
//! `$orderby` on `receivedDateTime`, `$top`, `$skip`, `$select`; anything else is a `400`.

use std::collections::HashMap;

/// A parsed `$filter`: one equality on a string property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EqFilter {
    pub property: String,
    pub value: String,
}

/// Parses `property eq 'literal'`. The literal ends at the first single quote not
/// doubled, and nothing may follow it, so an escaped value cannot break out of the clause.
pub(crate) fn parse_eq_filter(text: &str) -> Result<EqFilter, String> {
    let text = text.trim();
    let (property, rest) = text
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("Invalid filter clause: {text}"))?;
    let rest = rest.trim_start();
    let rest = rest
        .strip_prefix("eq ")
        .ok_or_else(|| format!("Invalid filter clause: only 'eq' is supported in {text}"))?
        .trim_start();
    let body = rest
        .strip_prefix('\'')
        .ok_or_else(|| format!("Invalid filter clause: a quoted string is expected in {text}"))?;
    let mut value = String::new();
    let mut chars = body.chars().peekable();
    loop {
        match chars.next() {
            None => {
                return Err(format!(
                    "Invalid filter clause: unterminated string in {text}"
                ));
            }
            Some('\'') if chars.peek() == Some(&'\'') => {
                chars.next();
                value.push('\'');
            }
            Some('\'') => break,
            Some(c) => value.push(c),
        }
    }
    let trailing: String = chars.collect();
    if !trailing.trim().is_empty() {
        return Err(format!(
            "Invalid filter clause: unexpected '{}' after the string",
            trailing.trim()
        ));
    }
    Ok(EqFilter {
        property: property.to_owned(),
        value,
    })
}

/// The query options of a list request.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListQuery {
    pub filter: Option<EqFilter>,
    pub filter_text: Option<String>,
    pub ascending: bool,
    pub orderby_text: Option<String>,
    pub top: usize,
    pub skip: usize,
    pub select: Option<Vec<String>>,
    pub select_text: Option<String>,
}

impl ListQuery {
    pub fn parse(
        q: &HashMap<String, String>,
        default_top: usize,
        max_top: usize,
    ) -> Result<Self, String> {
        let mut out = ListQuery {
            top: default_top,
            ..Default::default()
        };
        for key in q.keys() {
            if !matches!(
                key.as_str(),
                "$filter" | "$orderby" | "$top" | "$skip" | "$select"
            ) {
                return Err(format!("Query option '{key}' is not supported."));
            }
        }
        if let Some(f) = q.get("$filter") {
            out.filter = Some(parse_eq_filter(f)?);
            out.filter_text = Some(f.clone());
        }
        if let Some(o) = q.get("$orderby") {
            let mut words = o.split_whitespace();
            let property = words.next().unwrap_or_default();
            if !property.eq_ignore_ascii_case("receivedDateTime") {
                return Err(format!("Ordering by '{o}' is not supported."));
            }
            out.ascending = match words.next().map(str::to_ascii_lowercase).as_deref() {
                None | Some("asc") => true,
                Some("desc") => false,
                Some(other) => return Err(format!("Invalid $orderby direction '{other}'.")),
            };
            out.orderby_text = Some(o.clone());
        }
        if let Some(t) = q.get("$top") {
            let top: usize = t
                .parse()
                .map_err(|_| format!("Invalid $top value '{t}'."))?;
            if top == 0 || top > max_top {
                return Err(format!("$top must be between 1 and {max_top}."));
            }
            out.top = top;
        }
        if let Some(s) = q.get("$skip") {
            out.skip = s
                .parse()
                .map_err(|_| format!("Invalid $skip value '{s}'."))?;
        }
        if let Some(s) = q.get("$select") {
            out.select = Some(s.split(',').map(|p| p.trim().to_owned()).collect());
            out.select_text = Some(s.clone());
        }
        Ok(out)
    }

    /// The query string of the page after this one (`@odata.nextLink`).
    pub fn next_page_query(&self) -> String {
        let mut parts = vec![
            format!("%24top={}", self.top),
            format!("%24skip={}", self.skip + self.top),
        ];
        for (k, v) in [
            ("%24filter", &self.filter_text),
            ("%24orderby", &self.orderby_text),
            ("%24select", &self.select_text),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", percent_encode(v)));
            }
        }
        parts.join("&")
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq_filter_unescapes_doubled_quotes_and_refuses_trailing_clauses() {
        let f = parse_eq_filter("internetMessageId eq '<a''b@x>'").expect("parses");
        assert_eq!(f.property, "internetMessageId");
        assert_eq!(f.value, "<a'b@x>");
        assert!(parse_eq_filter("internetMessageId eq '<a>' or true").is_err());
        assert!(parse_eq_filter("internetMessageId eq '<a").is_err());
        assert!(parse_eq_filter("internetMessageId ne '<a>'").is_err());
    }
}
