//! OData literals: a value put into `$filter` is quoted and its quotes doubled, so a
//! Message-ID (which the remote side chose) cannot end the literal and add clauses.

/// `'…'` with every `'` doubled (OData ABNF `SQUOTE-in-string`).
pub fn string_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(string_literal("<a'b@x>"), "'<a''b@x>'");
        assert_eq!(
            string_literal("<x' or subject eq 'y>"),
            "'<x'' or subject eq ''y>'"
        );
    }

    proptest! {
        /// Read back as OData does (a quote ends the literal unless doubled), the literal
        /// is the whole value and nothing follows it.
        #[test]
        fn a_literal_reads_back_as_the_value(v in ".{0,40}") {
            let lit = string_literal(&v);
            let inner = &lit[1..];
            let mut out = String::new();
            let mut chars = inner.chars().peekable();
            let mut rest = String::new();
            while let Some(c) = chars.next() {
                if c == '\'' {
                    if chars.peek() == Some(&'\'') { chars.next(); out.push('\''); } else { rest = chars.collect(); break; }
                } else { out.push(c); }
            }
            prop_assert_eq!(out, v);
            prop_assert_eq!(rest, "");
        }
    }
}
