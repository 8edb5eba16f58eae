//! The MongoDB document source: every provider document of a batch in `$in` queries of at most
//! `chunk_keys` keys each, each read in one round trip when its documents fit one reply.

use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;

use mongodb::bson::doc;
use mongodb::bson::raw::{RawDocument, RawDocumentBuf};
use mongodb::bson::spec::ElementType;
use mongodb::Database;
use smallvec::SmallVec;

use super::raw_bson::{Element, Elements, Value};
use super::source::{
    same_name, within, DocumentSource, DocumentsByKey, FieldValue, LookupGate, LookupLimits,
    ProviderDoc, SourceError,
};
use crate::instruments;
use crate::spec::DocumentSpec;

/// Provider documents in a MongoDB database.
#[derive(Debug, Clone)]
pub struct MongoDocuments {
    db: Database,
    limits: LookupLimits,
    /// Shared by the clones, so `limits.concurrency` holds over every batch in flight.
    gate: LookupGate,
}

impl MongoDocuments {
    /// A source over this database, within the default [`LookupLimits`].
    pub fn new(db: Database) -> Self {
        let limits = LookupLimits::default();
        Self {
            db,
            limits,
            gate: LookupGate::new(limits.concurrency),
        }
    }

    /// The same source within other limits (operation timeout, keys per `$in`, concurrent
    /// `find`s).
    pub fn with_limits(self, limits: LookupLimits) -> Self {
        Self {
            limits,
            gate: LookupGate::new(limits.concurrency),
            ..self
        }
    }

    /// One `find` over one chunk of keys, read to its end: each document's fields, with the
    /// place of its key in the list `places` indexes.
    async fn find_chunk(
        &self,
        spec: &DocumentSpec,
        paths: &[String],
        reader: &FieldReader,
        keys: &[String],
        places: &KeyPlaces<'_>,
    ) -> Result<Vec<(u32, ProviderDoc)>, SourceError> {
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
        let batch_size = first_batch_size(keys.len(), spec.providers.len());
        let _turn = self.gate.turn().await;
        instruments::db_round_trips("mongo", 1);
        // Raw batches: each reply's documents are read where they lie in the reply, straight
        // from their BSON bytes, with no tree built and no copy of each document made.
        let mut replies = self
            .db
            .collection::<RawDocumentBuf>(&spec.collection)
            .find(filter)
            .projection(projection)
            .batch_size(batch_size as u32)
            .batch()
            .await?;
        // Read in an inner block so that the round trips are counted when the cursor fails
        // part-way too.
        let mut replies_read: u64 = 0;
        let mut found = Vec::new();
        let counted = async {
            while let Some(reply) = replies.try_next().await? {
                replies_read += 1;
                for element in reply.doc_slices()? {
                    // A batch holds documents only; anything else could answer nothing.
                    let Some(document) = element?.as_document() else {
                        continue;
                    };
                    // A document of a key not asked cannot answer a request.
                    if let Some((key, doc)) = reader.read(document) {
                        found.extend(places.get(key).map(|place| (place, doc)));
                    }
                }
            }
            Ok::<_, mongodb::error::Error>(())
        }
        .await;
        // Every reply after the first came by a getMore.
        instruments::db_round_trips("mongo", replies_read.saturating_sub(1));
        counted?;
        Ok(found)
    }
}

impl DocumentSource for MongoDocuments {
    async fn fetch(
        &self,
        spec: &DocumentSpec,
        paths: &[String],
        keys: &[String],
    ) -> Result<DocumentsByKey, SourceError> {
        if keys.is_empty() {
            return Ok(DocumentsByKey::default());
        }
        let reader = FieldReader::new(spec, paths);
        let places = KeyPlaces::new(keys);
        let places = &places;
        within("mongo", self.limits.timeout, async move {
            // The finds are made before they are streamed: a closure in the stream would not
            // be `Send` for every lifetime the trait's future asks of it.
            let finds: Vec<_> = keys
                .chunks(self.limits.chunk_keys.max(1))
                .map(|keys| self.find_chunk(spec, paths, &reader, keys, places))
                .collect();
            let mut chunks =
                futures::stream::iter(finds).buffer_unordered(self.limits.concurrency.max(1));
            let mut found = Vec::with_capacity(keys.len() * spec.providers.len());
            while let Some(part) = chunks.try_next().await? {
                found.extend(part);
            }
            // A key is in one chunk only, so its documents keep the order its find read them in.
            Ok(DocumentsByKey::group(keys.len(), found))
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

/// The place of each key in the list a fetch was asked, found from a key read out of a
/// document's bytes ([`crate::standardize::FastMap`]: the keys are one batch's, and the map
/// lives only as long as the fetch).
#[derive(Debug)]
pub struct KeyPlaces<'k> {
    places: crate::standardize::FastMap<&'k str, u32>,
}

impl<'k> KeyPlaces<'k> {
    /// The places of `keys` (the first, for a key listed twice).
    pub fn new(keys: &'k [String]) -> Self {
        let mut places = crate::standardize::FastMap::default();
        places.reserve(keys.len());
        for (key, place) in keys.iter().zip(0..) {
            places.entry(key.as_str()).or_insert(place);
        }
        Self { places }
    }

    /// The place of `key`, if it was asked.
    pub fn get(&self, key: &str) -> Option<u32> {
        self.places.get(key).copied()
    }
}

/// The most documents asked for in one reply. A reply stops at 16 MiB whatever is asked; a
/// batch's projected documents (a key, a provider and a few numbers, under 200 bytes) reach
/// that only past about 80 000 documents.
pub const MAX_FIRST_BATCH: usize = 100_000;

/// The cursor batch size of a `find` over `keys` notes and `providers` providers: every
/// document the find can match (at most one per key and provider), plus one so that a reply
/// holding all of them is not full and the server closes the cursor at once (a full first
/// batch costs a `getMore` round trip that brings nothing). One round trip whenever the
/// documents fit one reply.
pub fn first_batch_size(keys: usize, providers: usize) -> usize {
    keys.saturating_mul(providers.max(1))
        .saturating_add(1)
        .min(MAX_FIRST_BATCH)
}

/// The fields a batch reads, arranged so that one pass over a document's BSON finds them all
/// (instead of one scan from the start per path).
#[derive(Debug, Clone)]
pub struct FieldReader {
    /// The dotted paths, shared by every document read.
    paths: Vec<Arc<str>>,
    /// Each path split at its dots.
    segments: Vec<Vec<String>>,
    /// The spec's key and provider fields.
    key_field: String,
    provider_field: String,
    /// The spec's providers, shared by every document read.
    providers: Vec<Arc<str>>,
    /// Every path's index: the candidates at a document's top level.
    all: Vec<usize>,
}

impl FieldReader {
    /// A reader of these dotted paths in the documents `spec` describes.
    pub fn new(spec: &DocumentSpec, paths: &[String]) -> Self {
        Self {
            paths: paths.iter().map(|p| Arc::from(p.as_str())).collect(),
            segments: paths
                .iter()
                .map(|p| p.split('.').map(str::to_owned).collect())
                .collect(),
            key_field: spec.key_field.clone(),
            provider_field: spec.provider_field.clone(),
            providers: spec
                .providers
                .iter()
                .map(|p| Arc::from(p.as_str()))
                .collect(),
            all: (0..paths.len()).collect(),
        }
    }

    /// A provider document's key and the requested fields, or None when it has no key or
    /// provider (such a document cannot answer any request).
    pub fn read<'d>(&self, doc: &'d RawDocument) -> Option<(&'d str, ProviderDoc)> {
        let mut fields = SmallVec::new();
        let mut top = TopLevel {
            key_field: self.key_field.as_bytes(),
            provider_field: self.provider_field.as_bytes(),
            key: None,
            provider: None,
        };
        self.visit(
            Elements::of(doc.as_bytes()),
            0,
            &self.all,
            &mut fields,
            &mut top,
        );
        let (key, provider) = (top.key?, top.provider?);
        let provider = match self
            .providers
            .iter()
            .find(|p| same_name(p.as_bytes(), provider.as_bytes()))
        {
            Some(known) => Arc::clone(known),
            // The query asks for the spec's providers only; any other is read all the same.
            None => Arc::from(provider),
        };
        Some((key, ProviderDoc { provider, fields }))
    }

    /// Adds to `fields`, in the document's order, the `candidates` paths whose first `depth`
    /// segments led to the document of `elements`. The first element of a name is the one
    /// read, at every depth, as with `RawDocument::get`.
    fn visit<'d>(
        &self,
        elements: Elements<'d>,
        depth: usize,
        candidates: &[usize],
        fields: &mut SmallVec<[(Arc<str>, FieldValue); 2]>,
        top: &mut TopLevel<'_, 'd>,
    ) {
        // Per candidate: whether its name at this depth was met already. Only the first element
        // of a name counts, even when it is not a document and a later one of the same name is.
        let mut met: SmallVec<[bool; 8]> = SmallVec::from_elem(false, candidates.len());
        for element in elements {
            let name = element.name;
            if depth == 0 {
                top.read(&element);
            }
            let mut deeper: SmallVec<[usize; 8]> = SmallVec::new();
            for (&p, met) in candidates.iter().zip(met.iter_mut()) {
                let segments = &self.segments[p];
                if *met || !same_name(segments[depth].as_bytes(), name) {
                    continue;
                }
                *met = true;
                if segments.len() > depth + 1 {
                    deeper.push(p);
                } else {
                    fields.push((Arc::clone(&self.paths[p]), field_value(element.value())));
                }
            }
            if !deeper.is_empty() {
                if let Value::Document(inner) = element.value() {
                    self.visit(inner, depth + 1, &deeper, fields, top);
                }
            }
        }
    }
}

/// The document's key and provider, read during the same pass as the fields (first wins).
struct TopLevel<'s, 'd> {
    key_field: &'s [u8],
    provider_field: &'s [u8],
    key: Option<&'d str>,
    provider: Option<&'d str>,
}

impl<'d> TopLevel<'_, 'd> {
    fn read(&mut self, element: &Element<'d>) {
        if same_name(element.name, self.key_field) && self.key.is_none() {
            self.key = element.text();
        } else if same_name(element.name, self.provider_field) && self.provider.is_none() {
            self.provider = element.text();
        }
    }
}

/// A BSON value as a number, or a description of what it is instead.
fn field_value(value: Value<'_>) -> FieldValue {
    match value {
        Value::Double(v) if v.is_finite() => FieldValue::Number(v),
        Value::Int32(v) => FieldValue::Number(f64::from(v)),
        Value::Int64(v) => FieldValue::Number(v as f64),
        Value::Null => FieldValue::NotANumber("null".into()),
        Value::String(s) => FieldValue::NotANumber(format!(
            "the text {:?}",
            crate::text::truncate_chars(&String::from_utf8_lossy(s), 32)
        )),
        Value::Double(_) => a_value_of(ElementType::Double),
        Value::Document(_) => a_value_of(ElementType::EmbeddedDocument),
        Value::Other(Some(kind)) => a_value_of(kind),
        Value::Other(None) => FieldValue::NotANumber("unreadable BSON".into()),
    }
}

fn a_value_of(kind: ElementType) -> FieldValue {
    FieldValue::NotANumber(format!("a {kind:?} value"))
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{RawBson, RawBsonRef};

    use super::*;

    /// The value at one dotted path, looked up element by element: the reference that
    /// [`FieldReader`]'s single pass is checked against.
    fn field_at(doc: &RawDocument, path: &str) -> Option<FieldValue> {
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
            RawBsonRef::String(s) => {
                FieldValue::NotANumber(format!("the text {:?}", crate::text::truncate_chars(s, 32)))
            }
            other => FieldValue::NotANumber(format!("a {:?} value", other.element_type())),
        })
    }

    /// A random value for a field: mostly numbers, and every kind a reader must describe.
    fn random_value(rng: &mut impl rand::Rng, depth: usize) -> RawBson {
        match rng.random_range(0..if depth < 2 { 9 } else { 8 }) {
            0 | 1 => RawBson::Double(rng.random_range(-1e3..1e3)),
            2 => RawBson::Int32(rng.random()),
            3 => RawBson::Int64(rng.random()),
            4 => RawBson::Null,
            5 => RawBson::String("é".repeat(rng.random_range(0..40))),
            6 => RawBson::Double([f64::NAN, f64::INFINITY][rng.random_range(0..2)]),
            7 => RawBson::Boolean(true),
            _ => RawBson::Document(random_document(rng, depth + 1)),
        }
    }

    const NAMES: [&str; 5] = ["scan", "kurtosis", "entropy", "k", "scan2"];

    /// A random document, built element by element so that a name can come twice (BSON allows
    /// it; the first occurrence is the one read).
    fn random_document(rng: &mut impl rand::Rng, depth: usize) -> RawDocumentBuf {
        let mut d = RawDocumentBuf::new();
        for _ in 0..rng.random_range(0..6) {
            let name = NAMES[rng.random_range(0..NAMES.len())];
            d.append(name, random_value(rng, depth));
        }
        d
    }

    #[test]
    fn the_single_pass_reads_what_bson_reads_path_by_path_in_random_documents() {
        use rand::SeedableRng;
        let spec = crate::spec::PipelineSpec::banknote().documents.unwrap();
        let paths: Vec<String> = NAMES
            .iter()
            .flat_map(|a| {
                std::iter::once(a.to_string())
                    .chain(NAMES.iter().map(move |b| format!("{a}.{b}")))
                    .chain(NAMES.iter().map(move |b| format!("{a}.{b}.k")))
            })
            .collect();
        let reader = FieldReader::new(&spec, &paths);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
        let (mut numbers, mut described) = (0, 0);
        let mut repeated = 0;
        for i in 0..2_000 {
            let mut raw = random_document(&mut rng, 0);
            raw.append("note_id", format!("SN-{i}"));
            raw.append("provider", "aurum");
            let names: Vec<&str> = raw.iter().map(|e| e.unwrap().0).collect();
            repeated += (1..names.len())
                .filter(|&j| names[..j].contains(&names[j]))
                .count();
            let (key, read) = reader.read(&raw).unwrap();
            assert_eq!(key, format!("SN-{i}"));
            for p in &paths {
                assert_eq!(read.field(p), field_at(&raw, p).as_ref(), "{p} in {raw:?}");
            }
            for (_, value) in &read.fields {
                match value {
                    FieldValue::Number(_) => numbers += 1,
                    FieldValue::NotANumber(_) => described += 1,
                }
            }
        }
        assert!(
            numbers > 2_000 && described > 2_000 && repeated > 500,
            "the documents reach many paths: {numbers} numbers, {described} other values, \
             {repeated} names repeated"
        );
    }

    #[test]
    fn a_find_asks_for_every_document_its_keys_can_match_in_its_first_reply() {
        // 1 000 notes of two providers: up to 2 000 documents, all in the first reply, which
        // is then not full, so no getMore follows.
        assert_eq!(first_batch_size(1_000, 2), 2_001);
        assert_eq!(
            first_batch_size(1, 0),
            2,
            "no providers listed is read as one"
        );
        assert_eq!(first_batch_size(0, 2), 1);
        assert_eq!(first_batch_size(80_000, 3), MAX_FIRST_BATCH);
        assert_eq!(first_batch_size(usize::MAX, 2), MAX_FIRST_BATCH);
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
        let (key, read) = FieldReader::new(&spec, &paths).read(&with_key).unwrap();
        assert_eq!((key, &*read.provider), ("SN-1", "aurum"));
        for p in &paths {
            assert_eq!(read.field(p), field_at(&d, p).as_ref(), "{p}");
        }
        assert!(
            FieldReader::new(&spec, &paths).read(&d).is_none(),
            "no key, no document"
        );
        assert_eq!(field_at(&d, "scan.kurtosis.deeper"), None);
    }
}
