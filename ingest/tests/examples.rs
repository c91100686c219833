//! The files under examples/jobs stay valid jobs.

#![allow(clippy::unwrap_used)]

use mailpipe_common::contract::JobLimits;
use mailpipe_ingest::batch_reader::{Format, read_jobs};
use mailpipe_ingest::validate::Validator;

#[test]
fn the_example_jobs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jobs");
    let v = Validator::new(JobLimits::default(), None, None);
    v.check(&std::fs::read(dir.join("invoice.json")).unwrap())
        .expect("invoice.json");
    for (file, format, expected) in [
        ("batch.jsonl", Format::Jsonl, 3),
        ("batch.csv", Format::Csv, 2),
    ] {
        let mut ok = 0;
        read_jobs(
            std::fs::File::open(dir.join(file)).unwrap(),
            format,
            &v,
            |line, r| match r {
                Ok(_) => ok += 1,
                Err(e) => panic!("{file} line {line}: {:?}", e.errors),
            },
        )
        .unwrap();
        assert_eq!(ok, expected, "{file}");
    }
}
