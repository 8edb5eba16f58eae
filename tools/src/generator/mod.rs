//! The fixture generator: the banknote domain drawn deterministically from a seed
//! (docs/contract.md section 5), with its reference data and the poison corpus.

pub mod generate;
pub mod poison;
pub mod reference;
