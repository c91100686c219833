//! Reading a batch upload (JSONL or CSV) one line at a time into checked jobs, each
//! with its line number. Synchronous on purpose: it runs on a blocking thread, fed
//! either by a file or by the HTTP body stream, so nothing holds the whole upload.
//!
//! CSV columns (header row required, any order, unknown columns refused):
//! `id,to,to_name,cc,bcc,template,from,reply_to,group,batch,attachment_path,attachment_name,data.*`.
//! `to`, `cc` and `bcc` hold one address or several separated by `;`; `to_name` is the
//! display name of the first `to`. Every `data.KEY` column becomes `data["KEY"]` as a
//! string (an empty cell is an empty string), except `data.items`, which holds JSON (an
//! array of line items, say). Other empty cells mean "absent".

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use mailpipe_common::contract::FieldError;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::validate::{Invalid, Validator};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

impl Format {
    /// From a `Content-Type` (parameters ignored).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "application/x-ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/jsonlines" => Some(Self::Jsonl),
            "text/csv" => Some(Self::Csv),
            _ => None,
        }
    }

    /// From a file extension: `.jsonl`/`.ndjson` or `.csv`.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }
}

/// One refused line, as reported to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    pub line: u64,
    pub field: String,
    pub reason: String,
}

impl LineError {
    pub fn new(line: u64, e: FieldError) -> Self {
        Self {
            line,
            field: e.field,
            reason: e.reason,
        }
    }
}

/// Problems that stop reading altogether (as opposed to one bad line).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("CSV header: column {column:?}: {reason}")]
    Header { column: String, reason: String },
    #[error(
        "CSV record starting at line {line} exceeds {limit} bytes (limits.max_job_bytes): an unterminated quote?"
    )]
    RecordTooLong { line: u64, limit: usize },
    #[error("reading the upload: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads `input` and calls `each(line, result)` for every non-blank line.
pub fn read_jobs(
    input: impl Read,
    format: Format,
    validator: &Validator,
    mut each: impl FnMut(u64, Result<mailpipe_common::contract::Job, Invalid>),
) -> Result<(), ReadError> {
    match format {
        Format::Jsonl => read_jsonl(input, validator, &mut each),
        Format::Csv => read_csv(input, validator, &mut each),
    }
}

fn read_jsonl(
    input: impl Read,
    validator: &Validator,
    each: &mut dyn FnMut(u64, Result<mailpipe_common::contract::Job, Invalid>),
) -> Result<(), ReadError> {
    let max = validator.limits().max_job_bytes;
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        line += 1;
        let n = (&mut reader)
            .take(max as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf.len() > max && !buf.ends_with(b"\n") {
            // Too long: drop the rest of the line without buffering it.
            let mut rest = 0usize;
            loop {
                let chunk = reader.fill_buf()?;
                if chunk.is_empty() {
                    break;
                }
                match chunk.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        reader.consume(i + 1);
                        break;
                    }
                    None => {
                        rest += chunk.len();
                        let len = chunk.len();
                        reader.consume(len);
                    }
                }
            }
            let reason = format!(
                "line of more than {} bytes exceeds the limit of {max} per job",
                buf.len() + rest
            );
            each(
                line,
                Err(Invalid {
                    malformed: false,
                    errors: vec![FieldError::new("job", reason)],
                }),
            );
            continue;
        }
        let text = buf.trim_ascii();
        if text.is_empty() {
            continue;
        }
        each(line, validator.check(text));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Column {
    Plain(&'static str),
    ToName,
    AttachmentPath,
    AttachmentName,
    List(&'static str),
    Data(DataColumn),
}

/// `data.customer.name`, `data.items.0.quantity:number`: where in `data` the cell goes,
/// and how it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DataColumn {
    /// As written in the header, for error messages.
    header: String,
    path: Vec<Segment>,
    kind: CellKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CellKind {
    /// The cell as a string (`12.50` stays `"12.50"`).
    Text,
    /// `:number`: a JSON number.
    Number,
    /// `:json`: any JSON value (an array, an object, `true`...).
    Json,
}

/// Array indexes in column names go up to this (a header cannot make a row allocate more).
pub const MAX_CSV_INDEX: usize = 999;

fn data_column(name: &str) -> Result<DataColumn, String> {
    let rest = name.strip_prefix("data.").unwrap_or_default();
    let (dotted, kind) = match rest.rsplit_once(':') {
        Some((d, "number")) => (d, CellKind::Number),
        Some((d, "json")) => (d, CellKind::Json),
        Some((_, other)) => {
            return Err(format!(
                "unknown type suffix :{other} (use :number or :json, or none for text)"
            ));
        }
        None => (rest, CellKind::Text),
    };
    let mut path = Vec::new();
    for (i, seg) in dotted.split('.').enumerate() {
        if seg.is_empty() {
            return Err("empty key between dots".into());
        }
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            if i == 0 {
                return Err("data is an object: its first key cannot be an array index".into());
            }
            match seg.parse::<usize>() {
                Ok(n) if n <= MAX_CSV_INDEX => path.push(Segment::Index(n)),
                _ => return Err(format!("array index {seg} is over {MAX_CSV_INDEX}")),
            }
        } else {
            path.push(Segment::Key(seg.to_owned()));
        }
    }
    Ok(DataColumn {
        header: name.to_owned(),
        path,
        kind,
    })
}

/// Two data columns clash when one is inside the other (`data.customer` and
/// `data.customer.name`) or one says key where the other says index.
fn clash(a: &DataColumn, b: &DataColumn) -> Option<&'static str> {
    for (x, y) in a.path.iter().zip(&b.path) {
        match (x, y) {
            (Segment::Key(k), Segment::Key(l)) if k != l => return None,
            (Segment::Index(i), Segment::Index(j)) if i != j => return None,
            (Segment::Key(_), Segment::Index(_)) | (Segment::Index(_), Segment::Key(_)) => {
                return Some("is used both as an object and as an array");
            }
            _ => {}
        }
    }
    Some(if a.path.len() == b.path.len() {
        "appears twice"
    } else {
        "holds a value and nested columns at once"
    })
}

fn plan(headers: &csv::StringRecord) -> Result<Vec<Column>, ReadError> {
    let mut cols = Vec::new();
    for h in headers {
        let name = h.trim();
        let bad = |reason: String| ReadError::Header {
            column: name.to_owned(),
            reason,
        };
        let col = match name {
            "id" => Column::Plain("id"),
            "template" => Column::Plain("template"),
            "from" => Column::Plain("from"),
            "reply_to" => Column::Plain("reply_to"),
            "group" => Column::Plain("group"),
            "lane" => Column::Plain("lane"),
            "batch" => Column::Plain("batch"),
            "to" => Column::List("to"),
            "cc" => Column::List("cc"),
            "bcc" => Column::List("bcc"),
            "to_name" => Column::ToName,
            "attachment_path" => Column::AttachmentPath,
            "attachment_name" => Column::AttachmentName,
            _ if name.starts_with("data.") => Column::Data(data_column(name).map_err(bad)?),
            _ => {
                return Err(bad(
                    "unknown column (see the CSV convention in docs/ingest.md)".into(),
                ));
            }
        };
        for other in &cols {
            let problem = match (&col, other) {
                (Column::Data(a), Column::Data(b)) => {
                    clash(a, b).map(|why| format!("{why} (with column {:?})", b.header))
                }
                _ => (col == *other).then(|| "appears twice".to_owned()),
            };
            if let Some(reason) = problem {
                return Err(bad(reason));
            }
        }
        cols.push(col);
    }
    Ok(cols)
}

/// What a CSV reader consumed from its input, so a record that grows past the limit is
/// stopped while it is read (an unterminated quote would otherwise swallow the rest).
#[derive(Debug, Default)]
struct Consumed {
    read: std::cell::Cell<u64>,
    record_start: std::cell::Cell<u64>,
}

/// The error `Metered` stops a record with.
#[derive(Debug)]
struct RecordTooLong;

impl std::fmt::Display for RecordTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CSV record too long")
    }
}

impl std::error::Error for RecordTooLong {}

struct Metered<R> {
    inner: R,
    consumed: std::rc::Rc<Consumed>,
    /// Bytes a record may span (the job limit plus the reader's buffer).
    max: u64,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let c = &self.consumed;
        if c.read.get() - c.record_start.get() > self.max {
            return Err(std::io::Error::other(RecordTooLong));
        }
        let n = self.inner.read(buf)?;
        c.read.set(c.read.get() + n as u64);
        Ok(n)
    }
}

/// The csv reader's own buffer: what it may have read ahead of the record it parses.
const CSV_BUFFER: usize = 64 * 1024;

fn read_csv(
    input: impl Read,
    validator: &Validator,
    each: &mut dyn FnMut(u64, Result<mailpipe_common::contract::Job, Invalid>),
) -> Result<(), ReadError> {
    let max_job = validator.limits().max_job_bytes;
    let consumed = std::rc::Rc::new(Consumed::default());
    let metered = Metered {
        inner: input,
        consumed: consumed.clone(),
        max: (max_job + CSV_BUFFER) as u64,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .buffer_capacity(CSV_BUFFER)
        .from_reader(metered);
    let too_long = |line: u64| ReadError::RecordTooLong {
        line,
        limit: max_job,
    };
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) if is_too_long(&e) => return Err(too_long(1)),
        Err(e) => {
            return Err(csv_fatal(e).unwrap_or_else(|e| ReadError::Header {
                column: String::new(),
                reason: e.reason,
            }));
        }
    };
    let columns = plan(&headers)?;
    let mut record = csv::StringRecord::new();
    loop {
        let position = reader.position().clone();
        consumed.record_start.set(position.byte());
        // The line the next record starts on (past a header that spans several lines).
        let line = position.line().max(2);
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let line = record.position().map(|p| p.line()).unwrap_or(line);
                if record.iter().all(|c| c.trim().is_empty()) {
                    continue;
                }
                let result = row_to_json(&columns, &record).and_then(|json| validator.check(&json));
                each(line, result);
            }
            Err(e) if is_too_long(&e) => return Err(too_long(line)),
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(line);
                match csv_fatal(e) {
                    Err(bad) => each(
                        line,
                        Err(Invalid {
                            malformed: true,
                            errors: vec![bad],
                        }),
                    ),
                    Ok(fatal) => return Err(fatal),
                }
            }
        }
    }
}

fn is_too_long(e: &csv::Error) -> bool {
    matches!(e.kind(), csv::ErrorKind::Io(io) if io.get_ref().is_some_and(|e| e.is::<RecordTooLong>()))
}

/// I/O errors stop the read; anything else is one bad row.
fn csv_fatal(e: csv::Error) -> Result<ReadError, FieldError> {
    if e.is_io_error() {
        return match e.into_kind() {
            csv::ErrorKind::Io(io) => Ok(ReadError::Io(io)),
            other => Err(FieldError::new("csv", format!("{other:?}"))),
        };
    }
    Err(FieldError::new("csv", e.to_string()))
}

/// `data` while a row is read: arrays are sparse until the row is done.
enum Node {
    Leaf(Value),
    Object(std::collections::BTreeMap<String, Node>),
    Array(std::collections::BTreeMap<usize, Node>),
}

impl Node {
    fn insert(&mut self, path: &[Segment], value: Value) {
        let Some((first, rest)) = path.split_first() else {
            *self = Node::Leaf(value);
            return;
        };
        let fresh = || match rest.first() {
            Some(Segment::Index(_)) => Node::Array(Default::default()),
            _ => Node::Object(Default::default()),
        };
        // `plan` refused clashing columns, so the shapes always agree.
        let child = match (self, first) {
            (Node::Object(map), Segment::Key(k)) => map.entry(k.clone()).or_insert_with(fresh),
            (Node::Array(map), Segment::Index(i)) => map.entry(*i).or_insert_with(fresh),
            _ => return,
        };
        child.insert(rest, value);
    }

    /// Arrays keep their elements in index order, without the gaps.
    fn into_value(self) -> Value {
        match self {
            Node::Leaf(v) => v,
            Node::Object(map) => {
                Value::Object(map.into_iter().map(|(k, n)| (k, n.into_value())).collect())
            }
            Node::Array(map) => Value::Array(map.into_values().map(Node::into_value).collect()),
        }
    }
}

fn cell_value(col: &DataColumn, cell: &str) -> Result<Option<Value>, Invalid> {
    let in_array = col.path.iter().any(|s| matches!(s, Segment::Index(_)));
    let bad = |reason: String| Invalid {
        malformed: false,
        errors: vec![FieldError::new(
            col.header.split(':').next().unwrap_or_default(),
            reason,
        )],
    };
    let trimmed = cell.trim();
    match col.kind {
        // An empty cell in an array element is absent: rows with fewer items leave the
        // columns of the others empty.
        CellKind::Text if in_array && trimmed.is_empty() => Ok(None),
        CellKind::Text => Ok(Some(Value::String(cell.to_owned()))),
        _ if trimmed.is_empty() => Ok(None),
        CellKind::Number => trimmed
            .parse::<serde_json::Number>()
            .map(|n| Some(Value::Number(n)))
            .map_err(|_| bad(format!("{trimmed:?} is not a number"))),
        CellKind::Json => serde_json::from_str(trimmed)
            .map(Some)
            .map_err(|e| bad(format!("is not valid JSON: {e}"))),
    }
}

fn row_to_json(columns: &[Column], record: &csv::StringRecord) -> Result<Vec<u8>, Invalid> {
    let mut job = Map::new();
    let mut data = Node::Object(Default::default());
    let mut has_data = false;
    let (mut to_name, mut path, mut filename) = (None, None, None);
    for (col, cell) in columns.iter().zip(record.iter()) {
        let trimmed = cell.trim();
        match col {
            Column::Data(col) => {
                if let Some(value) = cell_value(col, cell)? {
                    data.insert(&col.path, value);
                    has_data = true;
                }
            }
            _ if trimmed.is_empty() => {}
            Column::Plain(name) => {
                job.insert((*name).to_owned(), Value::String(trimmed.to_owned()));
            }
            Column::List(name) => {
                let list = trimmed
                    .split(';')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect();
                job.insert((*name).to_owned(), Value::Array(list));
            }
            Column::ToName => to_name = Some(trimmed.to_owned()),
            Column::AttachmentPath => path = Some(trimmed.to_owned()),
            Column::AttachmentName => filename = Some(trimmed.to_owned()),
        }
    }
    if let Some(name) = to_name {
        match job
            .get_mut("to")
            .and_then(Value::as_array_mut)
            .and_then(|l| l.first_mut())
        {
            Some(first) => {
                let address = first.take();
                *first = serde_json::json!({ "name": name, "address": address });
            }
            None => {
                return Err(Invalid {
                    malformed: false,
                    errors: vec![FieldError::new("to_name", "is set but `to` is empty")],
                });
            }
        }
    }
    match (path, filename) {
        (Some(path), filename) => {
            let filename =
                filename.unwrap_or_else(|| path.rsplit('/').next().unwrap_or(&path).to_owned());
            job.insert(
                "attachments".into(),
                serde_json::json!([{ "filename": filename, "path": path }]),
            );
        }
        (None, Some(_)) => {
            return Err(Invalid {
                malformed: false,
                errors: vec![FieldError::new(
                    "attachment_name",
                    "is set but attachment_path is empty",
                )],
            });
        }
        (None, None) => {}
    }
    if has_data {
        job.insert("data".into(), data.into_value());
    }
    Ok(serde_json::to_vec(&Value::Object(job)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailpipe_common::contract::{AttachmentSource, Job, JobLimits};

    fn read(format: Format, input: &str, limits: JobLimits) -> (Vec<(u64, Job)>, Vec<LineError>) {
        let v = Validator::new(limits, None, None);
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        read_jobs(input.as_bytes(), format, &v, |line, r| match r {
            Ok(j) => ok.push((line, j)),
            Err(e) => bad.extend(e.errors.into_iter().map(|e| LineError::new(line, e))),
        })
        .unwrap();
        (ok, bad)
    }

    #[test]
    fn jsonl_lines_are_numbered_blank_lines_skipped_and_bad_lines_named() {
        let input = "{\"id\":\"a\",\"template\":\"t\",\"to\":[\"a@x.com\"]}\n\n{\"id\":\"b\",\"template\":\"t\",\"to\":[\"bad\"]}\r\n{\"id\":\"c\",\"template\":\"t\",\"to\":[\"c@x.com\"]}";
        let (ok, bad) = read(Format::Jsonl, input, JobLimits::default());
        assert_eq!(
            ok.iter()
                .map(|(l, j)| (*l, j.id.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "a"), (4, "c")]
        );
        assert_eq!(bad.len(), 1);
        assert_eq!((bad[0].line, bad[0].field.as_str()), (3, "to[0]"));
    }

    #[test]
    fn an_overlong_jsonl_line_is_one_bad_line_and_reading_goes_on() {
        let long = format!(
            "{{\"id\":\"a\",\"template\":\"t\",\"to\":[\"a@x.com\"],\"data\":{{\"x\":\"{}\"}}}}",
            "y".repeat(500)
        );
        let input = format!("{long}\n{{\"id\":\"b\",\"template\":\"t\",\"to\":[\"b@x.com\"]}}\n");
        let (ok, bad) = read(
            Format::Jsonl,
            &input,
            JobLimits {
                max_job_bytes: 100,
                ..Default::default()
            },
        );
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].0, 2);
        assert_eq!((bad[0].line, bad[0].field.as_str()), (1, "job"));
    }

    #[test]
    fn csv_rows_follow_the_column_convention() {
        let input = "id,to,to_name,cc,template,attachment_path,data.amount,data.items:json\n\
                     inv-1,ann@x.com;bob@x.com,Ann A,carl@x.com,invoice,2026/inv-1.pdf,12.50,\"[{\"\"sku\"\":\"\"A\"\"}]\"\n\
                     inv-2,nope,,,invoice,,1,\n\
                     inv-3,c@x.com,,,invoice,,,\"[oops\"\n";
        let (ok, bad) = read(Format::Csv, input, JobLimits::default());
        assert_eq!(ok.len(), 1, "{bad:?}");
        let (line, j) = &ok[0];
        assert_eq!(*line, 2);
        assert_eq!(j.to[0].name.as_deref(), Some("Ann A"));
        assert_eq!(j.to[1].address.as_str(), "bob@x.com");
        assert_eq!(j.cc.len(), 1);
        assert_eq!(j.data["amount"], "12.50");
        assert_eq!(j.data["items"][0]["sku"], "A");
        assert!(
            matches!(&j.attachments[0].source, AttachmentSource::Path(p) if p.as_str() == "2026/inv-1.pdf")
        );
        assert_eq!(j.attachments[0].filename, "inv-1.pdf");
        assert_eq!(
            bad.iter()
                .map(|e| (e.line, e.field.as_str()))
                .collect::<Vec<_>>(),
            vec![(3, "to[0]"), (4, "data.items")]
        );
    }

    #[test]
    fn csv_header_problems_stop_the_read_and_ragged_rows_are_bad_lines() {
        let v = Validator::new(JobLimits::default(), None, None);
        let err =
            read_jobs("id,colour\n1,red\n".as_bytes(), Format::Csv, &v, |_, _| {}).unwrap_err();
        assert!(
            matches!(err, ReadError::Header { ref column, .. } if column == "colour"),
            "{err}"
        );
        let (ok, bad) = read(
            Format::Csv,
            "id,to,template\na,a@x.com,t\nb,b@x.com\nc,c@x.com,t\n",
            JobLimits::default(),
        );
        assert_eq!(ok.len(), 2);
        assert_eq!((bad[0].line, bad[0].field.as_str()), (3, "csv"));
    }

    #[test]
    fn dotted_columns_build_nested_objects_and_arrays() {
        let input = "id,to,template,data.customer.name,data.customer.vat,data.items.0.description,data.items.0.quantity:number,data.items.1.description,data.items.1.quantity:number,data.flags:json\n\
                     a,a@x.com,t,Ann,,Tea,2,Cake,1,\"{\"\"vip\"\":true}\"\n\
                     b,b@x.com,t,Bob,DE1,Tea,1.5,,,\n\
                     c,c@x.com,t,Carl,,,,Cake,3,\n\
                     d,d@x.com,t,Dora,,Tea,two,,,\n";
        let (ok, bad) = read(Format::Csv, input, JobLimits::default());
        let data = |i: usize| Value::Object(ok[i].1.data.clone());
        assert_eq!(
            data(0),
            serde_json::json!({"customer": {"name": "Ann", "vat": ""},
                "items": [{"description": "Tea", "quantity": 2}, {"description": "Cake", "quantity": 1}],
                "flags": {"vip": true}})
        );
        // Empty cells of an element are absent; an element with none filled is left out.
        assert_eq!(
            data(1)["items"],
            serde_json::json!([{"description": "Tea", "quantity": 1.5}])
        );
        assert_eq!(
            data(2)["items"],
            serde_json::json!([{"description": "Cake", "quantity": 3}])
        );
        assert_eq!(ok.len(), 3);
        assert_eq!(
            (bad[0].line, bad[0].field.as_str()),
            (5, "data.items.0.quantity")
        );
        assert!(bad[0].reason.contains("\"two\" is not a number"), "{bad:?}");
    }

    #[test]
    fn clashing_or_malformed_dotted_columns_refuse_the_header() {
        let v = Validator::new(JobLimits::default(), None, None);
        for (header, column, why) in [
            (
                "id,data.customer,data.customer.name",
                "data.customer.name",
                "nested",
            ),
            (
                "id,data.items.0.x,data.items.a",
                "data.items.a",
                "both as an object and as an array",
            ),
            ("id,data.a.b,data.a.b:number", "data.a.b:number", "twice"),
            ("id,data.0", "data.0", "first key"),
            ("id,data.items.1000.x", "data.items.1000.x", "over 999"),
            ("id,data.a..b", "data.a..b", "empty key"),
            ("id,data.a:date", "data.a:date", ":number or :json"),
        ] {
            let err = read_jobs(format!("{header}\n").as_bytes(), Format::Csv, &v, |_, _| {})
                .unwrap_err();
            match err {
                ReadError::Header { column: c, reason } => {
                    assert_eq!(c, column, "{header}");
                    assert!(reason.contains(why), "{header}: {reason}");
                }
                other => panic!("{header}: {other}"),
            }
        }
    }

    #[test]
    fn an_unterminated_quote_stops_at_the_record_limit_with_its_line() {
        let v = Validator::new(
            JobLimits {
                max_job_bytes: 1000,
                ..Default::default()
            },
            None,
            None,
        );
        // Endless input after an opening quote on line 3: only a bound ends this read.
        let head = "id,to,template\na,a@x.com,t\nb,\"b@x.com";
        let input = head.as_bytes().chain(std::io::repeat(b'x'));
        let mut seen = 0;
        let err = read_jobs(input, Format::Csv, &v, |_, r| {
            assert!(r.is_ok());
            seen += 1;
        })
        .unwrap_err();
        assert_eq!(seen, 1);
        assert!(
            matches!(
                err,
                ReadError::RecordTooLong {
                    line: 3,
                    limit: 1000
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn a_crlf_in_a_display_name_is_refused() {
        let (ok, bad) = read(
            Format::Csv,
            "id,to,to_name,template\na,a@x.com,\"Eve\r\nBcc: x@y.com\",t\n",
            JobLimits::default(),
        );
        assert!(ok.is_empty());
        assert_eq!(bad[0].field, "to[0]");
    }
}
