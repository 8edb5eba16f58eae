//! The MongoDB document source: every provider document of a batch in one `$in` query.

use std::collections::HashMap;

use futures::TryStreamExt;
use std::sync::Arc;

use mongodb::bson::doc;
use mongodb::bson::raw::{RawBsonRef, RawDocument, RawDocumentBuf};
use mongodb::Database;

use super::{DocumentSource, FieldValue, ProviderDoc, SourceError};
use crate::spec::DocumentSpec;

/// Provider documents in a MongoDB database.
#[derive(Debug, Clone)]
pub struct MongoDocuments {
    db: Database,
}

impl MongoDocuments {
    /// A source over this database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

impl DocumentSource for MongoDocuments {
    async fn fetch(
        &self,
        spec: &DocumentSpec,
        paths: &[String],
        keys: &[String],
    ) -> Result<HashMap<String, Vec<ProviderDoc>>, SourceError> {
        let mut found: HashMap<String, Vec<ProviderDoc>> = HashMap::new();
        if keys.is_empty() {
            return Ok(found);
        }
        // Keys are plain strings, so an operator object in a request can never reach here.
        let filter = doc! {
            spec.key_field.as_str(): {"$in": keys},
            spec.provider_field.as_str(): {"$in": &spec.providers},
        };
        let mut projection =
            doc! {"_id": 0, spec.key_field.as_str(): 1, spec.provider_field.as_str(): 1};
        for p in paths {
            projection.insert(p.as_str(), 1);
        }
        // Raw documents: fields are read straight from the BSON bytes, with no tree built.
        let mut cursor = self
            .db
            .collection::<RawDocumentBuf>(&spec.collection)
            .find(filter)
            .projection(projection)
            .batch_size(keys.len().clamp(1, 10_000) as u32)
            .await?;
        let paths: Vec<Arc<str>> = paths.iter().map(|p| Arc::from(p.as_str())).collect();
        while let Some(d) = cursor.try_next().await? {
            if let Some((key, doc)) = read_document(spec, &paths, &d) {
                found.entry(key.to_owned()).or_default().push(doc);
            }
        }
        Ok(found)
    }

    async fn ping(&self) -> Result<(), SourceError> {
        self.db.run_command(doc! {"ping": 1}).await?;
        Ok(())
    }
}

/// A provider document's key and the requested fields, or None when it has no key or
/// provider (such a document cannot answer any request).
pub fn read_document<'d>(
    spec: &DocumentSpec,
    paths: &[Arc<str>],
    doc: &'d RawDocument,
) -> Option<(&'d str, ProviderDoc)> {
    let key = doc.get_str(&spec.key_field).ok()?;
    let provider = doc.get_str(&spec.provider_field).ok()?;
    let fields = paths
        .iter()
        .filter_map(|p| field_at(doc, p).map(|v| (Arc::clone(p), v)))
        .collect();
    Some((
        key,
        ProviderDoc {
            provider: provider.to_owned(),
            fields,
        },
    ))
}

/// The value at a dotted path, as a number or a description of what is there instead.
pub fn field_at(doc: &RawDocument, path: &str) -> Option<FieldValue> {
    let mut parts = path.split('.');
    let mut current = doc.get(parts.next()?).ok()??;
    for part in parts {
        current = current.as_document()?.get(part).ok()??;
    }
    Some(match current {
        RawBsonRef::Double(v) if v.is_finite() => FieldValue::Number(v),
        RawBsonRef::Int32(v) => FieldValue::Number(f64::from(v)),
        RawBsonRef::Int64(v) => FieldValue::Number(v as f64),
        RawBsonRef::Null => FieldValue::NotANumber("null".into()),
        RawBsonRef::String(s) => FieldValue::NotANumber(format!(
            "the text {:?}",
            crate::standardize::truncate_chars(s, 32)
        )),
        other => FieldValue::NotANumber(format!("a {:?} value", other.element_type())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths_reach_nested_numbers() {
        let d = RawDocumentBuf::from_document(
            &doc! {"scan": {"kurtosis": 1.5, "n": 3, "s": "x", "nan": f64::NAN}},
        )
        .unwrap();
        assert_eq!(field_at(&d, "scan.kurtosis"), Some(FieldValue::Number(1.5)));
        assert_eq!(field_at(&d, "scan.n"), Some(FieldValue::Number(3.0)));
        assert!(matches!(
            field_at(&d, "scan.s"),
            Some(FieldValue::NotANumber(_))
        ));
        assert!(matches!(
            field_at(&d, "scan.nan"),
            Some(FieldValue::NotANumber(_))
        ));
        assert_eq!(field_at(&d, "scan.missing"), None);
        assert_eq!(field_at(&d, "scan.kurtosis.deeper"), None);
    }
}
