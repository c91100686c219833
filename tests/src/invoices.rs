//! A sample month-end invoice batch: JSONL jobs for the `invoice` template, each with
//! its invoice as a small but valid PDF under the attachments root.

use std::path::Path;

use serde_json::json;

/// A one-page PDF naming the invoice (valid: xref offsets computed, so readers open it).
pub fn invoice_pdf(number: &str, customer: &str, total: f64) -> Vec<u8> {
    let text = format!("Invoice {number} for {customer}: total {total:.2} EUR");
    let text = text
        .replace('\\', "\\\\")
        .replace('(', "\\(")
        .replace(')', "\\)");
    let stream = format!("BT /F1 14 Tf 72 720 Td ({text}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_owned(),
        format!("<< /Length {} >>\nstream\n{stream}\nendstream", stream.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
    ];
    let mut pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
    }
    let xref = pdf.len();
    pdf.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for o in offsets {
        pdf.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    pdf
}

const CUSTOMERS: [(&str, &str); 8] = [
    ("Zoë Müller", "Müller & Söhne GmbH"),
    ("Ada Lovelace", "Analytical Engines Ltd"),
    ("José Álvarez", "Álvarez Importaciones"),
    ("Chloé Dubois", "Dubois et Fils"),
    ("Mika Häkkinen", "Häkkinen Oy"),
    ("Grace Hopper", "Compiler Works Inc"),
    ("Søren Kierkegaard", "Kierkegaard ApS"),
    ("Ngozi Okonjo", "Okonjo Trading"),
];

/// Writes `count` invoice PDFs under `attachments_root/invoices/` and returns the JSONL
/// batch. Job `i` goes to `recipients(i)` addresses (To, and Cc beyond the first).
pub fn write_batch(
    attachments_root: &Path,
    batch: &str,
    count: usize,
    recipients: impl Fn(usize) -> usize,
) -> std::io::Result<String> {
    std::fs::create_dir_all(attachments_root.join("invoices"))?;
    let mut jsonl = String::new();
    for i in 0..count {
        let (name, company) = CUSTOMERS[i % CUSTOMERS.len()];
        let number = format!("INV-2026-11-{i:05}");
        let items = vec![
            json!({"description": "Monthly subscription", "quantity": 1, "unit_price": 49.0}),
            json!({"description": "Extra seats", "quantity": 1 + i % 7, "unit_price": 9.5}),
        ];
        let total = 49.0 + (1 + i % 7) as f64 * 9.5;
        let pdf_path = format!("invoices/{number}.pdf");
        std::fs::write(
            attachments_root.join(&pdf_path),
            invoice_pdf(&number, company, total),
        )?;
        let n = recipients(i).max(1);
        let to = json!([{ "name": name, "address": format!("customer{i}@fabrikam.example") }]);
        let cc: Vec<_> = (1..n)
            .map(|r| json!(format!("ap{i}-{r}@fabrikam.example")))
            .collect();
        let job = json!({
            "id": format!("{batch}-{i:05}"),
            "batch": batch,
            "template": "invoice",
            "to": to,
            "cc": cc,
            "data": {
                "invoice_number": number,
                "due_date": "2026-12-15",
                "currency": "EUR",
                "customer": { "name": name, "company": company },
                "items": items,
            },
            "attachments": [{ "filename": format!("{number}.pdf"), "path": pdf_path, "content_type": "application/pdf" }],
        });
        jsonl.push_str(&job.to_string());
        jsonl.push('\n');
    }
    Ok(jsonl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pdf_has_a_consistent_cross_reference_table() {
        let pdf = invoice_pdf("INV-1", "ACME (Europe)", 12.5);
        assert!(pdf.starts_with(b"%PDF-1.4"));
        // Offsets are byte offsets: search the bytes, never a lossy string.
        let at = |needle: &[u8], from: usize| {
            pdf[from..]
                .windows(needle.len())
                .position(|w| w == needle)
                .map(|p| p + from)
        };
        let tail = at(b"startxref\n", 0).expect("startxref") + b"startxref\n".len();
        let end = at(b"\n", tail).expect("line end");
        let xref: usize = std::str::from_utf8(&pdf[tail..end])
            .unwrap()
            .parse()
            .unwrap();
        assert!(pdf[xref..].starts_with(b"xref"));
        let table = std::str::from_utf8(&pdf[xref..]).unwrap();
        for (i, line) in table.lines().skip(3).take(5).enumerate() {
            let offset: usize = line[..10].parse().unwrap();
            assert!(
                pdf[offset..].starts_with(format!("{} 0 obj", i + 1).as_bytes()),
                "object {} at {offset}",
                i + 1
            );
        }
    }
}
