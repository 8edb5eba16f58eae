//! The copy of a refused message that goes to a dead-letter queue (docs/contract.md section
//! 10): the body as received, with the stage and the reason as attributes, cut to fit the
//! message size limit when it must be. The step uses it for bundles, the feedback consumer for
//! feedback.

use crate::bundle::compression::CONTENT_ENCODING_ATTRIBUTE;
use crate::bundle::DecodeError;
use crate::queue::dead_letter::{
    BODY_TRUNCATED_ATTRIBUTE, ERROR_REASON_ATTRIBUTE, ERROR_STAGE_ATTRIBUTE,
    ORIGINAL_SHA256_ATTRIBUTE, ORIGINAL_SIZE_ATTRIBUTE, RECEIVE_COUNT_ATTRIBUTE,
    SOURCE_MESSAGE_ID_ATTRIBUTE,
};
use crate::queue::{Message, Outgoing, BUNDLE_ID_ATTRIBUTE};
use crate::text::truncate_chars;

/// The dead-letter copy of a refused message: its body as received, with the reason, within
/// `max_bytes`.
pub fn dead_letter_copy(m: &Message, e: &DecodeError, stage: &str, max_bytes: usize) -> Outgoing {
    let mut attributes = vec![
        (ERROR_STAGE_ATTRIBUTE.to_owned(), stage.to_owned()),
        (
            ERROR_REASON_ATTRIBUTE.to_owned(),
            truncate_chars(&e.reason, 1000),
        ),
        (SOURCE_MESSAGE_ID_ATTRIBUTE.to_owned(), m.message_id.clone()),
        (
            RECEIVE_COUNT_ATTRIBUTE.to_owned(),
            m.receive_count.to_string(),
        ),
    ];
    if let Some(id) = &e.bundle_id {
        attributes.push((BUNDLE_ID_ATTRIBUTE.to_owned(), id.clone()));
    }
    if let Some(enc) = &m.content_encoding {
        attributes.push((
            CONTENT_ENCODING_ATTRIBUTE.to_owned(),
            truncate_chars(enc, 64),
        ));
    }
    let mut copy = Outgoing {
        body: m.body.clone(),
        attributes,
        // An Extended Client pointer stays one: body and `ExtendedPayloadSize` as received.
        number_attributes: m.number_attributes.clone(),
        dedup_id: Some(m.message_id.clone()),
        group_id: Some(
            m.group_id
                .clone()
                .unwrap_or_else(|| "dead-letter".to_owned()),
        ),
    };
    fit_dead_letter(&mut copy, max_bytes);
    copy
}

/// A body near the message size limit (`max_bytes`) leaves no room for the reason's attributes:
/// the copy's body is then cut to fit, and the original's size and SHA-256 are added, so the
/// reason is never lost and the producer can still find the message it sent.
fn fit_dead_letter(copy: &mut Outgoing, max_bytes: usize) {
    if copy.size() <= max_bytes {
        return;
    }
    use sha2::Digest;
    let original = copy.body.len();
    let hash = format!("{:x}", sha2::Sha256::digest(copy.body.as_bytes()));
    copy.attributes.extend([
        (ORIGINAL_SIZE_ATTRIBUTE.to_owned(), original.to_string()),
        (ORIGINAL_SHA256_ATTRIBUTE.to_owned(), hash),
        (BODY_TRUNCATED_ATTRIBUTE.to_owned(), "true".to_owned()),
    ]);
    let room = max_bytes.saturating_sub(copy.size() - original);
    let mut cut = room.min(original);
    while !copy.body.is_char_boundary(cut) {
        cut -= 1;
    }
    copy.body.truncate(cut);
}
