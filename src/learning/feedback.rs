//! Feedback: corrections of earlier predictions, turned into labelled training examples.
//!
//! Two formats (docs/contract.md section 9):
//! - the predecessor's `{"batch_id": ..., "subjects": [...], "ratings": [1, 0, ...]}`: 1 says
//!   the prediction was right, 0 that it was wrong (on a binary model, the other class is
//!   right);
//! - this project's `{"bundle_id": ..., "labels": [["r-1", "real"], ...]}`: the true class.
//!
//! [`parse`] refuses malformed feedback with a reason (the consumer dead-letters it);
//! [`apply`] joins the items with the prediction log in one query and writes the examples in
//! one statement, each with its provenance. An item that matches no logged prediction (sampled
//! out, past the retention, never predicted) or more than one is counted, never guessed.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sqlx::PgPool;

/// The most items one feedback message may carry.
pub const MAX_ITEMS: usize = 10_000;
/// The longest bundle or record id, in characters.
const MAX_ID_CHARS: usize = 128;
/// How many unmatched record ids a feedback message's row keeps.
const UNMATCHED_KEPT: usize = 100;

/// What a feedback item says about a prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The predecessor's rating: right (1) or wrong (0).
    Rating(bool),
    /// The true class, by name.
    Label(String),
}

/// One parsed feedback message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    /// The bundle (or predecessor batch) the feedback is about.
    pub bundle_id: String,
    /// Per record id (a seed bundle's subject), what it says; each id once.
    pub items: BTreeMap<String, Verdict>,
}

impl Feedback {
    /// `ratings` or `labels`, as in `feedback_messages.format`.
    pub fn format(&self) -> &'static str {
        match self.items.values().next() {
            Some(Verdict::Label(_)) => "labels",
            _ => "ratings",
        }
    }
}

/// Reads a feedback message body (JSON, already decompressed). The error is the reason a
/// person reads on the dead-lettered copy.
pub fn parse(body: &[u8]) -> Result<Feedback, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("feedback is not JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("feedback must be a JSON object with batch_id, subjects and ratings, or bundle_id and labels".into());
    };
    match (obj.contains_key("ratings"), obj.contains_key("labels")) {
        (true, false) => ratings(&obj),
        (false, true) => labels(&obj),
        (true, true) => Err("feedback has both ratings and labels; send one per message".into()),
        (false, false) => Err(format!(
            "feedback has neither ratings (with batch_id and subjects) nor labels (with bundle_id); its keys are: {}",
            obj.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn id_field(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => checked_id(s, key),
        Some(other) => Err(format!("feedback {key} must be a string, got {other}")),
        None => Err(format!("feedback has no {key}")),
    }
}

fn checked_id(s: &str, what: &str) -> Result<String, String> {
    let n = s.chars().count();
    if n == 0 || n > MAX_ID_CHARS || s.chars().any(char::is_control) {
        return Err(format!(
            "feedback {what} {:?} must be 1 to {MAX_ID_CHARS} printable characters",
            crate::text::truncate_chars(s, 140)
        ));
    }
    Ok(s.to_owned())
}

fn array<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a Vec<Value>, String> {
    match obj.get(key) {
        Some(Value::Array(a)) if a.len() <= MAX_ITEMS => Ok(a),
        Some(Value::Array(a)) => Err(format!(
            "feedback has {} {key}; at most {MAX_ITEMS} per message: split it",
            a.len()
        )),
        Some(other) => Err(format!(
            "feedback {key} must be an array, got {}",
            kind(other)
        )),
        None => Err(format!("feedback has no {key}")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Adds an item; the same record twice must say the same thing.
fn insert(
    items: &mut BTreeMap<String, Verdict>,
    id: String,
    verdict: Verdict,
) -> Result<(), String> {
    match items.get(&id) {
        Some(v) if *v != verdict => Err(format!(
            "feedback says two different things about record {id:?}: {v:?} and {verdict:?}"
        )),
        _ => {
            items.insert(id, verdict);
            Ok(())
        }
    }
}

fn ratings(obj: &Map<String, Value>) -> Result<Feedback, String> {
    let bundle_id = id_field(obj, "batch_id")?;
    let subjects = array(obj, "subjects")?;
    let ratings = array(obj, "ratings")?;
    if subjects.len() != ratings.len() {
        return Err(format!(
            "feedback has {} subjects but {} ratings; they go in pairs",
            subjects.len(),
            ratings.len()
        ));
    }
    let mut items = BTreeMap::new();
    for (i, (subject, rating)) in subjects.iter().zip(ratings).enumerate() {
        // The id a seed bundle's subject got when it was predicted (`bundle::validate`).
        let id = match subject {
            Value::String(s) => checked_id(s, "subject")?,
            Value::Number(n) => n.to_string(),
            other => {
                return Err(format!(
                    "feedback subject {i} must be a string or a number, got {}",
                    kind(other)
                ))
            }
        };
        let right = match rating.as_u64() {
            Some(1) => true,
            Some(0) => false,
            _ => {
                return Err(format!(
                    "feedback rating {i} (subject {id:?}) must be 1 (the prediction was right) or 0 (it was wrong), got {rating}"
                ))
            }
        };
        insert(&mut items, id, Verdict::Rating(right))?;
    }
    Ok(Feedback { bundle_id, items })
}

fn labels(obj: &Map<String, Value>) -> Result<Feedback, String> {
    let bundle_id = id_field(obj, "bundle_id")?;
    let mut items = BTreeMap::new();
    for (i, pair) in array(obj, "labels")?.iter().enumerate() {
        let (id, label) = match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(id), Value::String(label)]) => (id, label),
            _ => {
                return Err(format!(
                    "feedback label {i} must be a pair [record id, class name], got {pair}"
                ))
            }
        };
        let id = checked_id(id, "record id")?;
        insert(&mut items, id, Verdict::Label(label.clone()))?;
    }
    Ok(Feedback { bundle_id, items })
}

/// What became of one feedback message's items.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// Items in the message.
    pub items: usize,
    /// New training examples.
    pub added: usize,
    /// Examples whose label changed.
    pub changed: usize,
    /// Examples that already said so (repeated feedback).
    pub unchanged: usize,
    /// Items with no logged prediction: sampled out, past the retention, or never predicted.
    pub not_logged: usize,
    /// Items with more than one logged prediction (a subject repeated in its batch).
    pub ambiguous: usize,
    /// The first unmatched record ids.
    pub unmatched: Vec<String>,
}

/// Why feedback could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The feedback is wrong: dead-letter it with this reason.
    #[error("{0}")]
    Refused(String),
    /// PostgreSQL failed: try again later.
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
}

/// Where a feedback message came from, for the provenance.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// The SQS message id (the row in `feedback_messages`).
    pub message_id: &'a str,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
}

/// One logged prediction, as the join reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Logged {
    record_id: String,
    position: i32,
    predicted_at: DateTime<Utc>,
    model_name: String,
    model_version: i64,
    class: i16,
    score: f64,
    features: Vec<f64>,
    feature_names: Vec<String>,
    classes: Vec<String>,
}

/// The training example id of a bundle's record: `fb/<bundle>/<record>`, with `%` and `/` of
/// the bundle id percent-encoded so that no two records share one.
pub fn example_id(bundle_id: &str, record_id: &str) -> String {
    let bundle = bundle_id.replace('%', "%25").replace('/', "%2F");
    format!("fb/{bundle}/{record_id}")
}

/// Joins `feedback` with the prediction log and writes its examples into `dataset`: one query,
/// one statement, one row in `feedback_messages`, in one transaction. Applying the same
/// message again changes nothing.
pub async fn apply(
    pool: &PgPool,
    dataset: &str,
    feedback: &Feedback,
    origin: &Origin<'_>,
) -> Result<Applied, ApplyError> {
    let ids: Vec<&str> = feedback.items.keys().map(String::as_str).collect();
    let logged: Vec<Logged> = sqlx::query_as(
        "SELECT l.record_id, l.position, l.predicted_at, l.model_name, l.model_version, l.class, \
                l.score, l.features, m.features AS feature_names, m.classes \
         FROM prediction_log l JOIN prediction_log_models m USING (model_name, model_version) \
         WHERE l.bundle_id = $1 AND l.record_id = ANY($2) \
         ORDER BY l.record_id, l.position, l.predicted_at DESC",
    )
    .bind(&feedback.bundle_id)
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut by_record: HashMap<&str, Vec<&Logged>> = HashMap::new();
    for row in &logged {
        by_record
            .entry(row.record_id.as_str())
            .or_default()
            .push(row);
    }
    let mut applied = Applied {
        items: feedback.items.len(),
        ..Applied::default()
    };
    let mut examples = Examples::default();
    for (id, verdict) in &feedback.items {
        let Some(rows) = by_record.get(id.as_str()) else {
            applied.not_logged += 1;
            keep_unmatched(&mut applied, id);
            continue;
        };
        // Redelivered bundles log the same position again; only another position is ambiguous.
        if rows.iter().any(|r| r.position != rows[0].position) {
            applied.ambiguous += 1;
            keep_unmatched(&mut applied, id);
            continue;
        }
        let latest = rows[0];
        let label = true_class(latest, verdict).map_err(ApplyError::Refused)?;
        examples.push(&feedback.bundle_id, latest, label, verdict, origin);
    }
    let mut tx = pool.begin().await?;
    let (added, changed): (i64, i64) = sqlx::query_as(
        "WITH upserted AS ( \
           INSERT INTO training_examples (dataset, example_id, label, features, provenance, labelled_at) \
           SELECT $1, * , now() FROM UNNEST($2::text[], $3::int2[], $4::jsonb[], $5::jsonb[]) \
           ON CONFLICT (dataset, example_id) DO UPDATE SET label = EXCLUDED.label, \
             features = EXCLUDED.features, provenance = EXCLUDED.provenance, labelled_at = now() \
           WHERE training_examples.label IS DISTINCT FROM EXCLUDED.label \
           RETURNING (xmax = 0) AS inserted) \
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted",
    )
    .bind(dataset)
    .bind(&examples.ids)
    .bind(&examples.labels)
    .bind(&examples.features)
    .bind(&examples.provenance)
    .fetch_one(&mut *tx)
    .await?;
    applied.added = added as usize;
    applied.changed = changed as usize;
    applied.unchanged = examples.ids.len() - applied.added - applied.changed;
    sqlx::query(
        "INSERT INTO feedback_messages (message_id, format, bundle_id, dataset, items, added, changed, \
           unchanged, not_logged, ambiguous, unmatched) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(origin.message_id)
    .bind(feedback.format())
    .bind(&feedback.bundle_id)
    .bind(dataset)
    .bind(applied.items as i32)
    .bind(applied.added as i32)
    .bind(applied.changed as i32)
    .bind(applied.unchanged as i32)
    .bind(applied.not_logged as i32)
    .bind(applied.ambiguous as i32)
    .bind(&applied.unmatched)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(applied)
}

/// Feedback applied since a time, summed over `feedback_messages`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Totals {
    /// Messages applied.
    pub messages: i64,
    /// Their items.
    pub items: i64,
    /// Examples added.
    pub added: i64,
    /// Examples whose label changed.
    pub changed: i64,
    /// Items that changed nothing.
    pub unchanged: i64,
    /// Items with no logged prediction.
    pub not_logged: i64,
    /// Items with more than one.
    pub ambiguous: i64,
}

/// What the feedback messages received since `since` did.
pub async fn totals(pool: &PgPool, since: DateTime<Utc>) -> Result<Totals, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) AS messages, COALESCE(sum(items), 0)::int8 AS items,            COALESCE(sum(added), 0)::int8 AS added, COALESCE(sum(changed), 0)::int8 AS changed,            COALESCE(sum(unchanged), 0)::int8 AS unchanged,            COALESCE(sum(not_logged), 0)::int8 AS not_logged,            COALESCE(sum(ambiguous), 0)::int8 AS ambiguous          FROM feedback_messages WHERE received_at >= $1",
    )
    .bind(since)
    .fetch_one(pool)
    .await
}

fn keep_unmatched(applied: &mut Applied, id: &str) {
    if applied.unmatched.len() < UNMATCHED_KEPT {
        applied.unmatched.push(id.to_owned());
    }
}

/// The true class a verdict gives a logged prediction.
fn true_class(logged: &Logged, verdict: &Verdict) -> Result<i16, String> {
    let classes = &logged.classes;
    match verdict {
        Verdict::Rating(true) => Ok(logged.class),
        Verdict::Rating(false) if classes.len() == 2 => Ok(1 - logged.class),
        Verdict::Rating(false) => Err(format!(
            "a rating of 0 says only that record {:?} is not {}; model {} version {} has {} classes, so the true one is unknown: send its label instead",
            logged.record_id,
            classes.get(logged.class as usize).map_or("?", String::as_str),
            logged.model_name,
            logged.model_version,
            classes.len()
        )),
        Verdict::Label(name) => classes
            .iter()
            .position(|c| c == name)
            .map(|i| i as i16)
            .ok_or_else(|| {
                format!(
                    "label {name:?} of record {:?} is not a class of model {} version {} (its classes: {})",
                    logged.record_id,
                    logged.model_name,
                    logged.model_version,
                    classes.join(", ")
                )
            }),
    }
}

/// Training example columns, for one UNNEST.
#[derive(Default)]
struct Examples {
    ids: Vec<String>,
    labels: Vec<i16>,
    features: Vec<Value>,
    provenance: Vec<Value>,
}

impl Examples {
    fn push(
        &mut self,
        bundle_id: &str,
        logged: &Logged,
        label: i16,
        verdict: &Verdict,
        origin: &Origin<'_>,
    ) {
        let features: Map<String, Value> = logged
            .feature_names
            .iter()
            .zip(&logged.features)
            .map(|(name, v)| (name.clone(), Value::from(*v)))
            .collect();
        let (kind, said) = match verdict {
            Verdict::Rating(right) => ("rating", json!(u8::from(*right))),
            Verdict::Label(name) => ("label", json!(name)),
        };
        self.ids.push(example_id(bundle_id, &logged.record_id));
        self.labels.push(label);
        self.features.push(Value::Object(features));
        self.provenance.push(json!({
            "bundle_id": bundle_id,
            "record_id": logged.record_id,
            "model_name": logged.model_name,
            "model_version": logged.model_version,
            "predicted_class": logged.class,
            "score": logged.score,
            "predicted_at": logged.predicted_at,
            "feedback": kind,
            kind: said,
            "feedback_message_id": origin.message_id,
            "feedback_at": origin.sent_at,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_predecessors_ratings_parse() {
        let f = parse(
            br#"{"batch_id": "f38b", "subjects": ["dollar", "yen", 7], "ratings": [1, 0, 1]}"#,
        )
        .unwrap();
        assert_eq!(f.bundle_id, "f38b");
        assert_eq!(f.format(), "ratings");
        assert_eq!(
            f.items,
            BTreeMap::from([
                ("dollar".into(), Verdict::Rating(true)),
                ("yen".into(), Verdict::Rating(false)),
                ("7".into(), Verdict::Rating(true)),
            ])
        );
    }

    #[test]
    fn labels_parse() {
        let f = parse(br#"{"bundle_id": "b-1", "labels": [["r-1", "real"], ["r-2", "fake"], ["r-1", "real"]]}"#).unwrap();
        assert_eq!(f.format(), "labels");
        assert_eq!(f.items.len(), 2, "a repeated item counts once");
        assert_eq!(f.items["r-2"], Verdict::Label("fake".into()));
    }

    #[test]
    fn malformed_feedback_is_refused_with_a_reason() {
        for (body, says) in [
            (&b"not json"[..], "not JSON"),
            (b"[1, 2]", "JSON object"),
            (br#"{"batch_id": "b"}"#, "neither ratings"),
            (
                br#"{"batch_id": "b", "subjects": ["a"], "ratings": [1, 0]}"#,
                "1 subjects but 2 ratings",
            ),
            (
                br#"{"batch_id": "b", "subjects": ["a"], "ratings": [2]}"#,
                "must be 1 (the prediction was right) or 0",
            ),
            (
                br#"{"batch_id": "b", "subjects": ["a", "a"], "ratings": [1, 0]}"#,
                "two different things",
            ),
            (br#"{"subjects": ["a"], "ratings": [1]}"#, "no batch_id"),
            (
                br#"{"batch_id": "", "subjects": [], "ratings": []}"#,
                "1 to 128 printable",
            ),
            (
                br#"{"bundle_id": "b", "labels": [["r-1"]]}"#,
                "pair [record id, class name]",
            ),
            (
                br#"{"bundle_id": "b", "labels": [], "ratings": []}"#,
                "both ratings and labels",
            ),
            (br#"{"bundle_id": 3, "labels": []}"#, "must be a string"),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.contains(says), "{}: {e}", String::from_utf8_lossy(body));
        }
        let many = format!(
            r#"{{"bundle_id": "b", "labels": [{}]}}"#,
            vec![r#"["r", "real"]"#; MAX_ITEMS + 1].join(",")
        );
        assert!(parse(many.as_bytes())
            .unwrap_err()
            .contains("at most 10000"));
    }

    fn logged(class: i16) -> Logged {
        Logged {
            record_id: "r-1".into(),
            position: 0,
            predicted_at: Utc::now(),
            model_name: "banknote".into(),
            model_version: 2,
            class,
            score: 0.3,
            features: vec![1.0],
            feature_names: vec!["variance".into()],
            classes: vec!["fake".into(), "real".into()],
        }
    }

    #[test]
    fn a_rating_of_zero_gives_the_other_class_and_labels_name_theirs() {
        assert_eq!(true_class(&logged(1), &Verdict::Rating(true)), Ok(1));
        assert_eq!(true_class(&logged(1), &Verdict::Rating(false)), Ok(0));
        assert_eq!(true_class(&logged(0), &Verdict::Rating(false)), Ok(1));
        assert_eq!(
            true_class(&logged(1), &Verdict::Label("fake".into())),
            Ok(0)
        );
        let e = true_class(&logged(1), &Verdict::Label("counterfeit".into())).unwrap_err();
        assert!(e.contains("its classes: fake, real"), "{e}");
    }

    #[test]
    fn example_ids_never_collide() {
        assert_ne!(example_id("a/b", "c"), example_id("a", "b/c"));
        assert_eq!(example_id("b-1", "r-1"), "fb/b-1/r-1");
        assert_ne!(example_id("a%2Fb", "c"), example_id("a/b", "c"));
    }
}
