//! `ml-pipeline-tools`: what developers run around the worker, not what ships in its image.
//!
//! - [`bench`]: the end-to-end load generator and the chaos runner, against the `ml-pipeline`
//!   binary started as a child process on queues of their own.
//! - [`demo`]: the whole job end to end on the local services, with a summary to check.
//! - [`generator`]: the deterministic banknote fixture domain and the poison corpus.
//! - [`lookup_curve`]: the databases' cost per key of the enrichment lookups against keys per
//!   query and queries in flight, which sets the lookup defaults.
//! - [`train_bench`]: the training benchmark (time and peak RSS of a fit per size) and our
//!   side of the scikit-learn comparison (`tools/compare/`).
//!
//! Everything here uses only the `ml_pipeline` library's public API.

pub mod bench;
pub mod demo;
pub mod generator;
pub mod lookup_curve;
pub mod train_bench;

use ml_pipeline::bundle::ContentEncoding;

/// A body encoding on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EncodingArg {
    /// Plain JSON.
    Identity,
    /// gzip + base64.
    Gzip,
    /// zstd + base64.
    Zstd,
}

impl From<EncodingArg> for ContentEncoding {
    fn from(e: EncodingArg) -> Self {
        match e {
            EncodingArg::Identity => Self::Identity,
            EncodingArg::Gzip => Self::Gzip,
            EncodingArg::Zstd => Self::Zstd,
        }
    }
}
