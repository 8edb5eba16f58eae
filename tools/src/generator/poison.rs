//! The poison corpus: bundles a worker must survive. Each case says what must come of it,
//! either the dead-letter queue with a reason, or an answer with named per-record errors.

use serde_json::{json, Value};

use ml_pipeline::bundle::compression::{compress, ContentEncoding};
use ml_pipeline::fixtures::{PoisonCase, PoisonExpect};

const COLUMNS: [&str; 6] = ["id", "note", "issuer", "scanner", "variance", "skewness"];

fn good_row(i: usize) -> Value {
    json!([
        format!("ok-{i}"),
        format!("SN-{:06}", i + 1),
        "Federal Reserve",
        "sc-01",
        1.25,
        -0.5
    ])
}

fn bundle(id: &str, rows: Vec<Value>) -> Value {
    json!({"bundle_id": id, "model": "banknote", "columns": COLUMNS, "rows": rows})
}

fn dead(name: &str, enc: Option<&str>, body: String, reason: &str) -> PoisonCase {
    PoisonCase {
        name: name.into(),
        content_encoding: enc.map(String::from),
        body,
        expect: PoisonExpect::DeadLetter {
            reason_contains: reason.into(),
        },
    }
}

/// A bundle whose first rows are good and whose last rows carry the bad values.
fn answered(name: &str, bad: &[(&str, Value, &str)]) -> PoisonCase {
    let mut rows: Vec<Value> = (0..3).map(good_row).collect();
    let mut errors = Vec::new();
    for (id, row, reason) in bad {
        let mut row = row.clone();
        row[0] = json!(id);
        rows.push(row);
        errors.push(((*id).to_owned(), (*reason).to_owned()));
    }
    PoisonCase {
        name: name.into(),
        content_encoding: None,
        body: bundle(&format!("poison-{name}"), rows).to_string(),
        expect: PoisonExpect::Answered { errors },
    }
}

fn with(i: usize, col: usize, value: Value) -> Value {
    let mut row = good_row(i);
    row[col] = value;
    row
}

/// Every poison case, in a fixed order.
pub fn poison_corpus() -> Vec<PoisonCase> {
    let good = bundle("poison-base", (0..3).map(good_row).collect()).to_string();
    let gz = compress(ContentEncoding::Gzip, good.as_bytes());
    let zs = compress(ContentEncoding::Zstd, good.as_bytes());
    let mut width = bundle("poison-width", (0..3).map(good_row).collect());
    width["rows"][1] = json!(["ok-1", "SN-000002", "FRB"]);
    let mut wide = bundle("poison-wide", (0..2).map(good_row).collect());
    wide["rows"][0]
        .as_array_mut()
        .expect("row")
        .push(json!("extra"));
    let huge_rows: Vec<Value> = (0..10_001).map(|i| good_row(i % 5)).collect();
    let huge = bundle("poison-huge", huge_rows).to_string();
    let nested = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let mut cases = vec![
        dead("not-json", None, "this is not json".into(), "not valid JSON"),
        dead("truncated-json", None, good[..good.len() / 2].into(), "not valid JSON"),
        dead("blank-body", None, " ".into(), "not valid JSON"),
        dead("json-array", None, "[1,2,3]".into(), "not a JSON object"),
        dead("json-null", None, "null".into(), "not a JSON object"),
        dead("no-format", None, r#"{"hello":"world"}"#.into(), "neither 'bundle_id'"),
        dead("missing-rows", None, json!({"bundle_id": "p-1", "columns": COLUMNS}).to_string(), "'rows' is missing"),
        dead("missing-columns", None, json!({"bundle_id": "p-2", "rows": []}).to_string(), "'columns' must be an array"),
        dead("bundle-id-number", None, json!({"bundle_id": 7, "columns": COLUMNS, "rows": []}).to_string(), "'bundle_id' must be a string"),
        dead("bundle-id-empty", None, bundle("", vec![]).to_string(), "1 to 128"),
        dead("bundle-id-10000-chars", None, bundle(&"x".repeat(10_000), vec![]).to_string(), "10000 characters"),
        dead("bundle-id-control-char", None, bundle("abc\u{1}def", vec![]).to_string(), "control characters"),
        dead("rows-not-array", None, json!({"bundle_id": "p-3", "columns": COLUMNS, "rows": "lots"}).to_string(), "'rows' must be an array"),
        dead("row-too-short", None, width.to_string(), "row 1 has 3 values for 6 columns"),
        dead("row-too-wide", None, wide.to_string(), "row 0 has 7 values for 6 columns"),
        dead("row-is-object", None, bundle("p-4", vec![json!({"id": "r"})]).to_string(), "row 0 is not an array"),
        dead("column-missing", None, json!({"bundle_id": "p-5", "columns": ["id", "note"], "rows": [["r", "SN-000001"]]}).to_string(), "column 'scanner' is missing"),
        dead("column-twice", None, json!({"bundle_id": "p-6", "columns": ["id", "id"], "rows": []}).to_string(), "appears twice"),
        dead("column-not-string", None, json!({"bundle_id": "p-7", "columns": ["id", 3], "rows": []}).to_string(), "only strings"),
        dead("id-10000-chars", None, bundle("p-8", vec![with(0, 0, json!("i".repeat(10_000)))]).to_string(), "longer than 1024"),
        dead("note-10000-chars", None, bundle("p-9", vec![with(0, 1, json!("n".repeat(10_000)))]).to_string(), "longer than 1024"),
        dead("id-missing", None, bundle("p-10", vec![with(0, 0, Value::Null)]).to_string(), "row 0 has no usable id"),
        dead("gzip-truncated", Some("gzip"), gz[..gz.len() - 12].into(), "does not decompress"),
        dead("gzip-label-plain-body", Some("gzip"), good.clone(), "not valid base64"),
        dead("zstd-label-gzip-body", Some("zstd"), gz.clone(), "does not decompress"),
        dead("plain-label-zstd-body", None, zs, "not valid JSON"),
        dead("unknown-encoding", Some("br"), good.clone(), "content-encoding 'br'"),
        dead("deeply-nested", None, format!(r#"{{"bundle_id":"p-11","columns":["id","x"],"rows":[["r",{nested}]]}}"#), "recursion limit"),
        dead("number-out-of-range", None, good.replace("1.25", "1e999"), "row 0, column 'variance' (value 4): number out of range"),
        dead("nan-literal", None, good.replace("1.25", "NaN"), "row 0, column 'variance' (value 4)"),
        dead("columns-over-limit", None, json!({"bundle_id": "p-14", "columns": (0..300).map(|c| format!("c{c}")).collect::<Vec<_>>(), "rows": []}).to_string(), "'columns' holds more than 256 values"),
        dead("cells-over-limit-gzip", Some("gzip"), compress(ContentEncoding::Gzip, json!({"bundle_id": "p-15", "columns": (0..256).map(|c| format!("c{c}")).collect::<Vec<_>>(), "rows": vec![vec![0; 256]; 2_000]}).to_string().as_bytes()), "the rows hold more than 500000 values"),
        dead("lone-surrogate-in-id", None, bundle("p-13-MARK", vec![good_row(0)]).to_string().replace("MARK", "\\udc00"), "not valid Unicode"),
        dead("huge-bundle-gzip", Some("gzip"), compress(ContentEncoding::Gzip, huge.as_bytes()), "10001 rows"),
        dead("gzip-bomb", Some("gzip"), compress(ContentEncoding::Gzip, &vec![b' '; 20 << 20]), "more than the limit"),
        dead("unknown-model", None, json!({"bundle_id": "p-12", "model": "giraffe", "columns": COLUMNS, "rows": [good_row(0)]}).to_string(), "model 'giraffe'"),
        dead("seed-ragged", None, json!({"batch_id": "s-1", "subjects": ["a", "b"], "features": [[1, 2, 3, 4], [1, 2, 3]]}).to_string(), "feature vector 1 has 3 values"),
        dead("seed-string-feature", None, json!({"batch_id": "s-2", "subjects": ["a"], "features": [["1", 2, 3, 4]]}).to_string(), "not a finite number"),
        dead("seed-wrong-width", None, json!({"batch_id": "s-3", "subjects": ["a"], "features": [[1, 2, 3]]}).to_string(), "have 3 values; model banknote takes 4 features"),
        dead("seed-subject-count", None, json!({"batch_id": "s-4", "subjects": ["a"], "features": [[1, 2, 3, 4], [1, 2, 3, 4]]}).to_string(), "1 subjects for 2"),
    ];
    // JSON text can carry a lone UTF-16 surrogate that no Rust string can: it is spliced in.
    let mut lone = answered(
        "lone-surrogate",
        &[(
            "surrogate",
            with(0, 2, json!("Federal MARK Reserve")),
            "issuer is not valid Unicode",
        )],
    );
    lone.body = lone.body.replace("MARK", "\\ud800");
    cases.push(lone);
    cases.extend([
        answered(
            "nan-and-inf-strings",
            &[
                (
                    "nan",
                    with(0, 4, json!("NaN")),
                    "variance must be a finite number",
                ),
                (
                    "inf",
                    with(0, 5, json!("Infinity")),
                    "skewness must be a finite number",
                ),
                (
                    "neg-inf",
                    with(0, 4, json!("-inf")),
                    "variance must be a finite number",
                ),
            ],
        ),
        answered(
            "strings-where-numbers-go",
            &[
                (
                    "str-num",
                    with(1, 4, json!("3.25")),
                    "variance must be a finite number, got the text \"3.25\"",
                ),
                (
                    "null-num",
                    with(1, 5, Value::Null),
                    "skewness must be a finite number, got null",
                ),
                ("bool-num", with(1, 4, json!(true)), "got the boolean true"),
            ],
        ),
        answered(
            "mongo-operators-as-keys",
            &[
                (
                    "op-ne",
                    with(2, 1, json!({"$ne": null})),
                    "note must be a text value, got an object",
                ),
                (
                    "op-gt",
                    with(2, 1, json!({"$gt": ""})),
                    "note must be a text value, got an object",
                ),
                (
                    "op-in",
                    with(2, 3, json!({"$in": ["sc-01"]})),
                    "scanner must be a text value",
                ),
                ("op-text", with(2, 1, json!("$gt")), "unknown note '$gt'"),
            ],
        ),
        answered(
            "sql-looking-text",
            &[
                (
                    "sql-issuer",
                    with(0, 2, json!("'; DROP TABLE scanners; --")),
                    "unknown issuer",
                ),
                (
                    "sql-note",
                    with(0, 1, json!("SN-1' OR '1'='1")),
                    "unknown note",
                ),
                (
                    "sql-scanner",
                    with(0, 3, json!("sc-01' OR 1=1 --")),
                    "unknown scanner",
                ),
            ],
        ),
        answered(
            "unicode-issuers",
            &[
                (
                    "zero-width",
                    with(1, 2, json!("Federal\u{200B}Reserve")),
                    "unknown issuer",
                ),
                (
                    "rtl-override",
                    with(1, 2, json!("\u{202E}evreseR laredeF")),
                    "unknown issuer",
                ),
                (
                    "emoji",
                    with(1, 2, json!("Federal Reserve 💵")),
                    "unknown issuer",
                ),
                ("empty-issuer", with(1, 2, json!("   ")), "issuer is empty"),
            ],
        ),
        answered(
            "unknown-references",
            &[
                ("no-note", with(2, 1, json!("SN-999999")), "unknown note"),
                ("no-scanner", with(2, 3, json!("sc-404")), "unknown scanner"),
                ("micro-unit", with(2, 3, json!("sc-13")), "unit 'micro'"),
            ],
        ),
        // A key ending in NUL, beside good records: PostgreSQL cannot even compare it, so it
        // must be the record's error at standardization, never a failed lookup for the batch.
        answered(
            "nul-in-key",
            &[(
                "nul-scanner",
                with(0, 3, json!("sc-01\u{0}")),
                "scanner contains the control character U+0000",
            )],
        ),
    ]);
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_has_at_least_thirty_distinct_kinds() {
        let cases = poison_corpus();
        assert!(cases.len() >= 30, "{}", cases.len());
        let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), cases.len());
    }

    #[test]
    fn every_body_fits_an_sqs_message() {
        for case in poison_corpus() {
            assert!(
                case.body.len() < ml_pipeline::queue::MAX_SQS_MESSAGE_BYTES,
                "{} is {} bytes",
                case.name,
                case.body.len()
            );
            assert!(!case.body.is_empty(), "{} is empty", case.name);
        }
    }
}
