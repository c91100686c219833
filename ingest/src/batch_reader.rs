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
    Data(String),
    DataJson(String),
}

fn plan(headers: &csv::StringRecord) -> Result<Vec<Column>, ReadError> {
    let mut cols = Vec::new();
    for h in headers {
        let name = h.trim();
        let col = match name {
            "id" => Column::Plain("id"),
            "template" => Column::Plain("template"),
            "from" => Column::Plain("from"),
            "reply_to" => Column::Plain("reply_to"),
            "group" => Column::Plain("group"),
            "batch" => Column::Plain("batch"),
            "to" => Column::List("to"),
            "cc" => Column::List("cc"),
            "bcc" => Column::List("bcc"),
            "to_name" => Column::ToName,
            "attachment_path" => Column::AttachmentPath,
            "attachment_name" => Column::AttachmentName,
            "data.items" => Column::DataJson("items".into()),
            _ => match name.strip_prefix("data.") {
                Some(key) if !key.is_empty() => Column::Data(key.to_owned()),
                _ => {
                    return Err(ReadError::Header {
                        column: name.to_owned(),
                        reason: "unknown column (see the CSV convention in docs/ingest.md)".into(),
                    });
                }
            },
        };
        if cols.contains(&col) {
            return Err(ReadError::Header {
                column: name.to_owned(),
                reason: "appears twice".into(),
            });
        }
        cols.push(col);
    }
    Ok(cols)
}

fn read_csv(
    input: impl Read,
    validator: &Validator,
    each: &mut dyn FnMut(u64, Result<mailpipe_common::contract::Job, Invalid>),
) -> Result<(), ReadError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
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
        let line = reader.position().line() + u64::from(reader.position().line() == 0);
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

fn row_to_json(columns: &[Column], record: &csv::StringRecord) -> Result<Vec<u8>, Invalid> {
    let mut job = Map::new();
    let mut data = Map::new();
    let (mut to_name, mut path, mut filename) = (None, None, None);
    for (col, cell) in columns.iter().zip(record.iter()) {
        let trimmed = cell.trim();
        match col {
            Column::Data(key) => {
                data.insert(key.clone(), Value::String(cell.to_owned()));
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
            Column::DataJson(key) => {
                let v: Value = serde_json::from_str(trimmed).map_err(|e| Invalid {
                    malformed: false,
                    errors: vec![FieldError::new(
                        format!("data.{key}"),
                        format!("is not valid JSON: {e}"),
                    )],
                })?;
                data.insert(key.clone(), v);
            }
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
    if !data.is_empty() {
        job.insert("data".into(), Value::Object(data));
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
        let input = "id,to,to_name,cc,template,attachment_path,data.amount,data.items\n\
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
