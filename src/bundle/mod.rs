//! Bundles: the messages on the queues (docs/contract.md sections 1, 2 and 4).
//!
//! [`decode`] turns a message body and its `content-encoding` attribute into an
//! [`InputBundle`], or a [`DecodeError`] that sends it to the dead-letter queue; [`validate`]
//! checks a readable bundle against the served model's spec (columns, ids, vector widths).
//! [`encode`] builds one [`Answer`] per bundle from the model's scores and writes it as a body.
//! The wire types are in [`message`], the compact row storage in [`table`], compression in
//! [`compression`].

pub mod compression;
pub mod decode;
pub mod encode;
pub mod message;
pub mod table;
pub mod validate;

pub use compression::ContentEncoding;
pub use decode::{decode, DecodeError, Limits};
pub use encode::{answers, Answer};
pub use message::{InputBundle, OutputBundle, OutputRow, RequestBundle, SeedAnswer, SeedBundle};
pub use table::{CellRef, Row, Table};
pub use validate::{validate, ColumnIndex, Validated};
