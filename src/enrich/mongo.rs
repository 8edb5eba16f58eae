//! The MongoDB document source: every provider document of a batch in one `$in` query.

use std::collections::HashMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
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
        let mut cursor = self
            .db
            .collection::<Document>(&spec.collection)
            .find(filter)
            .projection(projection)
            .batch_size(keys.len().clamp(1, 10_000) as u32)
            .await?;
        while let Some(d) = cursor.try_next().await? {
            let (Ok(key), Ok(provider)) =
                (d.get_str(&spec.key_field), d.get_str(&spec.provider_field))
            else {
                continue;
            };
            let fields = paths
                .iter()
                .filter_map(|p| field_at(&d, p).map(|v| (p.clone(), v)))
                .collect();
            found.entry(key.to_owned()).or_default().push(ProviderDoc {
                provider: provider.to_owned(),
                fields,
            });
        }
        Ok(found)
    }

    async fn ping(&self) -> Result<(), SourceError> {
        self.db.run_command(doc! {"ping": 1}).await?;
        Ok(())
    }
}

/// The value at a dotted path, as a number or a description of what is there instead.
pub fn field_at(doc: &Document, path: &str) -> Option<FieldValue> {
    let mut parts = path.split('.');
    let mut current = doc.get(parts.next()?)?;
    for part in parts {
        current = current.as_document()?.get(part)?;
    }
    Some(match current {
        Bson::Double(v) if v.is_finite() => FieldValue::Number(*v),
        Bson::Int32(v) => FieldValue::Number(f64::from(*v)),
        Bson::Int64(v) => FieldValue::Number(*v as f64),
        Bson::Null => FieldValue::NotANumber("null".into()),
        Bson::String(s) => FieldValue::NotANumber(format!(
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
        let d = doc! {"scan": {"kurtosis": 1.5, "n": 3, "s": "x", "nan": f64::NAN}};
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
