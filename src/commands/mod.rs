//! The operator's commands, one module each: what `ml-pipeline <command>` does once the command
//! line is parsed. Each returns the text to print; `cli` maps subcommands here, `startup` builds
//! the clients they use.

pub mod compare;
pub mod dlq;
pub mod fixtures;
pub mod healthcheck;
pub mod learning;
pub mod migrate;
pub mod models;
pub mod providers;
pub mod send;
pub mod train;
