//! The MongoDB document source: every provider document of a batch in one `$in` query.

use futures::TryStreamExt;
use std::collections::HashMap;
use std::sync::Arc;

use mongodb::bson::doc;
use mongodb::bson::raw::{RawBsonRef, RawDocument, RawDocumentBuf, RawElement};
use mongodb::Database;
use smallvec::SmallVec;

use super::source::{within, DocumentSource, FieldValue, LookupLimits, ProviderDoc, SourceError};
use crate::instruments;
use crate::spec::DocumentSpec;

/// Provider documents in a MongoDB database.
#[derive(Debug, Clone)]
pub struct MongoDocuments {
    db: Database,
    limits: LookupLimits,
}

impl MongoDocuments {
    /// A source over this database, within the default [`LookupLimits`].
    pub fn new(db: Database) -> Self {
        Self {
            db,
            limits: LookupLimits::default(),
        }
    }

    /// The same source within other limits (operation timeout, keys per statement).
    pub fn with_limits(self, limits: LookupLimits) -> Self {
        Self { limits, ..self }
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
        within("mongo", self.limits.timeout, async move {
            // Keys are plain strings, so an operator object in a request can never reach here.
            for keys in keys.chunks(self.limits.chunk_keys.max(1)) {
                let filter = doc! {
                    spec.key_field.as_str(): {"$in": keys},
                    spec.provider_field.as_str(): {"$in": &spec.providers},
                };
                let mut projection =
                    doc! {"_id": 0, spec.key_field.as_str(): 1, spec.provider_field.as_str(): 1};
                for p in paths {
                    projection.insert(p.as_str(), 1);
                }
                let batch_size = keys.len().clamp(1, 10_000);
                instruments::db_round_trips("mongo", 1);
                // Raw documents: fields are read straight from the BSON bytes, with no tree built.
                let mut cursor = self
                    .db
                    .collection::<RawDocumentBuf>(&spec.collection)
                    .find(filter)
                    .projection(projection)
                    .batch_size(batch_size as u32)
                    .await?;
                let reader = FieldReader::new(paths);
                // Read in an inner block so that the round trips are counted when the cursor
                // fails part-way too.
                let mut documents = 0;
                let counted = async {
                    while let Some(d) = cursor.try_next().await? {
                        documents += 1;
                        if let Some((key, doc)) = reader.read(spec, &d) {
                            found.entry(key.to_owned()).or_default().push(doc);
                        }
                    }
                    Ok::<_, mongodb::error::Error>(())
                }
                .await;
                instruments::db_round_trips("mongo", get_more_calls(documents, batch_size));
                counted?;
            }
            Ok(found)
        })
        .await
    }

    async fn ping(&self) -> Result<(), SourceError> {
        instruments::db_round_trips("mongo", 1);
        within("mongo", self.limits.timeout, async {
            self.db.run_command(doc! {"ping": 1}).await?;
            Ok(())
        })
        .await
    }
}

/// The getMore calls a cursor made to bring `documents` in batches of `batch_size`: the driver
/// asks for more whenever a batch came back full, the server closing the cursor only on a
/// batch it could not fill. (A slight overcount when a server closes the cursor on a full last
/// batch.)
pub fn get_more_calls(documents: usize, batch_size: usize) -> u64 {
    (documents / batch_size.max(1)) as u64
}

/// The fields a batch reads, arranged so that one pass over a document's BSON finds them all
/// (instead of one scan from the start per path).
#[derive(Debug, Clone)]
pub struct FieldReader {
    /// The dotted paths, shared by every document read.
    paths: Vec<Arc<str>>,
    /// Each path split at its dots.
    segments: Vec<Vec<String>>,
}

impl FieldReader {
    /// A reader of these dotted paths.
    pub fn new(paths: &[String]) -> Self {
        Self {
            paths: paths.iter().map(|p| Arc::from(p.as_str())).collect(),
            segments: paths
                .iter()
                .map(|p| p.split('.').map(str::to_owned).collect())
                .collect(),
        }
    }

    /// A provider document's key and the requested fields, or None when it has no key or
    /// provider (such a document cannot answer any request).
    pub fn read<'d>(
        &self,
        spec: &DocumentSpec,
        doc: &'d RawDocument,
    ) -> Option<(&'d str, ProviderDoc)> {
        let mut values: SmallVec<[Option<FieldValue>; 8]> = SmallVec::new();
        values.resize(self.paths.len(), None);
        let all: SmallVec<[usize; 8]> = (0..self.paths.len()).collect();
        let mut top = TopLevel {
            spec,
            key: None,
            provider: None,
        };
        self.visit(doc, 0, &all, &mut values, &mut top);
        let (key, provider) = (top.key?, top.provider?);
        let fields = self
            .paths
            .iter()
            .zip(values)
            .filter_map(|(p, v)| v.map(|v| (Arc::clone(p), v)))
            .collect();
        Some((
            key,
            ProviderDoc {
                provider: provider.to_owned(),
                fields,
            },
        ))
    }

    /// Fills `values` for the `candidates` paths whose first `depth` segments led to `doc`.
    /// The first occurrence of a key wins, as with `RawDocument::get`.
    fn visit<'d>(
        &self,
        doc: &'d RawDocument,
        depth: usize,
        candidates: &[usize],
        values: &mut [Option<FieldValue>],
        top: &mut TopLevel<'_, 'd>,
    ) {
        for element in doc.iter_elements() {
            let Ok(element) = element else {
                return;
            };
            let name = element.key();
            if depth == 0 {
                top.read(name, &element);
            }
            let mut deeper: SmallVec<[usize; 8]> = SmallVec::new();
            for &p in candidates {
                let segments = &self.segments[p];
                if segments[depth] != name {
                    continue;
                }
                if segments.len() > depth + 1 {
                    deeper.push(p);
                } else if values[p].is_none() {
                    values[p] = Some(match element.value() {
                        Ok(v) => field_value(v),
                        Err(e) => FieldValue::NotANumber(format!("unreadable BSON ({e})")),
                    });
                }
            }
            if !deeper.is_empty() {
                if let Ok(RawBsonRef::Document(inner)) = element.value() {
                    self.visit(inner, depth + 1, &deeper, values, top);
                }
            }
        }
    }
}

/// The document's key and provider, read during the same pass as the fields (first wins).
struct TopLevel<'s, 'd> {
    spec: &'s DocumentSpec,
    key: Option<&'d str>,
    provider: Option<&'d str>,
}

impl<'d> TopLevel<'_, 'd> {
    fn read(&mut self, name: &str, element: &RawElement<'d>) {
        let text = || element.value().ok().and_then(RawBsonRef::as_str);
        if name == self.spec.key_field && self.key.is_none() {
            self.key = text();
        } else if name == self.spec.provider_field && self.provider.is_none() {
            self.provider = text();
        }
    }
}

/// A BSON value as a number, or a description of what it is instead.
fn field_value(value: RawBsonRef<'_>) -> FieldValue {
    match value {
        RawBsonRef::Double(v) if v.is_finite() => FieldValue::Number(v),
        RawBsonRef::Int32(v) => FieldValue::Number(f64::from(v)),
        RawBsonRef::Int64(v) => FieldValue::Number(v as f64),
        RawBsonRef::Null => FieldValue::NotANumber("null".into()),
        RawBsonRef::String(s) => {
            FieldValue::NotANumber(format!("the text {:?}", crate::text::truncate_chars(s, 32)))
        }
        other => FieldValue::NotANumber(format!("a {:?} value", other.element_type())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value at one dotted path, looked up element by element: the reference that
    /// [`FieldReader`]'s single pass is checked against.
    fn field_at(doc: &RawDocument, path: &str) -> Option<FieldValue> {
        let mut parts = path.split('.');
        let mut current = doc.get(parts.next()?).ok()??;
        for part in parts {
            current = current.as_document()?.get(part).ok()??;
        }
        Some(field_value(current))
    }

    #[test]
    fn a_full_batch_means_one_more_round_trip() {
        assert_eq!(get_more_calls(0, 100), 0);
        assert_eq!(get_more_calls(99, 100), 0);
        assert_eq!(get_more_calls(100, 100), 1);
        assert_eq!(get_more_calls(250, 100), 2);
        assert_eq!(get_more_calls(5, 0), 5, "a zero batch size is read as 1");
    }

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
        let spec = crate::spec::PipelineSpec::banknote().documents.unwrap();
        let paths = [
            "scan.kurtosis",
            "scan.n",
            "scan.s",
            "scan.missing",
            "scan.kurtosis.deeper",
        ]
        .map(String::from);
        let mut with_key = d.clone();
        with_key.append("note_id", "SN-1");
        with_key.append("provider", "aurum");
        let (key, read) = FieldReader::new(&paths).read(&spec, &with_key).unwrap();
        assert_eq!((key, read.provider.as_str()), ("SN-1", "aurum"));
        for p in &paths {
            assert_eq!(read.field(p), field_at(&d, p).as_ref(), "{p}");
        }
        assert!(
            FieldReader::new(&paths).read(&spec, &d).is_none(),
            "no key, no document"
        );
        assert_eq!(field_at(&d, "scan.kurtosis.deeper"), None);
    }
}
