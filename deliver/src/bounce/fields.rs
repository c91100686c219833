//! RFC 822-style field blocks as a delivery-status part and a `text/rfc822-headers` part
//! carry them: `Name: value` lines, folded with leading white space, blocks separated by
//! blank lines. Bounded: at most `MAX_BLOCKS` blocks of `MAX_FIELDS` fields are read.

/// Blocks read from one part (the per-message block and one per recipient).
pub const MAX_BLOCKS: usize = 1001;
/// Fields read per block.
const MAX_FIELDS: usize = 64;
/// Longest unfolded field value kept (bytes).
const MAX_VALUE: usize = 4096;

/// One block: (lower-cased name, unfolded value) in order.
pub type Block = Vec<(String, String)>;

/// Splits `text` into blocks of fields.
pub fn blocks(text: &str) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    let mut current: Block = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
                if out.len() >= MAX_BLOCKS {
                    return out;
                }
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut()
                && value.len() < MAX_VALUE
            {
                value.push(' ');
                value.push_str(line.trim());
                truncate(value);
            }
            continue;
        }
        if current.len() >= MAX_FIELDS {
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && !name.contains(' ') {
                let mut value = value.trim().to_owned();
                truncate(&mut value);
                current.push((name.to_ascii_lowercase(), value));
            }
        }
    }
    if !current.is_empty() && out.len() < MAX_BLOCKS {
        out.push(current);
    }
    out
}

fn truncate(value: &mut String) {
    if value.len() > MAX_VALUE {
        let mut end = MAX_VALUE;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
}

/// The first value of `name` (lower-case) in `block`.
pub fn get<'b>(block: &'b Block, name: &str) -> Option<&'b str> {
    block
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfolds_and_splits_blocks() {
        let b = blocks(
            "Reporting-MTA: dns; a\r\n\r\nFinal-Recipient: rfc822; x@y\r\nDiagnostic-Code: smtp; 550\r\n  no such\r\n\r\n",
        );
        assert_eq!(b.len(), 2);
        assert_eq!(get(&b[0], "reporting-mta"), Some("dns; a"));
        assert_eq!(get(&b[1], "diagnostic-code"), Some("smtp; 550 no such"));
    }
}
