//! A valid one-page PDF of about `size` bytes (the padding is a comment-only content
//! stream), for tests and the benchmark.

pub fn sample_pdf(size: usize) -> Vec<u8> {
    let text = b"BT /F1 24 Tf 72 720 Td (Invoice) Tj ET\n";
    let mut stream = text.to_vec();
    // Binary-ish filler in a PDF comment, so base64 sees all byte values.
    let mut x: u32 = 0x2545_5044;
    while stream.len() + 600 < size {
        stream.push(b'%');
        for _ in 0..71 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let b = (x >> 16) as u8;
            stream.push(if b == b'\n' || b == b'\r' { b' ' } else { b });
        }
        stream.push(b'\n');
    }
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    let mut obj = |out: &mut Vec<u8>, body: &[u8]| {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", offsets.len()).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    };
    obj(&mut out, b"<< /Type /Catalog /Pages 2 0 R >>");
    obj(&mut out, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>");
    obj(&mut out, b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>");
    let mut content = format!("<< /Length {} >>\nstream\n", stream.len()).into_bytes();
    content.extend_from_slice(&stream);
    content.extend_from_slice(b"\nendstream");
    obj(&mut out, &content);
    obj(
        &mut out,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    );
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", offsets.len() + 1).as_bytes(),
    );
    for o in &offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            offsets.len() + 1
        )
        .as_bytes(),
    );
    out
}
