//! `ctl`, the Starling operator's client: argument parsing, the client store, the API client and
//! rendering. `main.rs` only parses, calls [`run`] and prints the [`Output`] or the error.

pub mod balance;
pub mod charm;
pub mod client;
pub mod commands;
pub mod format;
pub mod migration_view;
pub mod model_views;
pub mod render;
pub mod store;
pub mod target;

pub use commands::{run, Cli};

/// What a command wants printed. Commands return text; only `main` prints.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    /// Text for stdout (or the `-o FILE`).
    pub stdout: String,
    /// Informational text for stderr (Juju prints e.g. switch's `a -> b` there).
    pub stderr: String,
}

impl Output {
    /// Output with only stdout text.
    pub fn stdout(text: impl Into<String>) -> Self {
        Self {
            stdout: text.into(),
            stderr: String::new(),
        }
    }

    /// Output with only stderr text.
    pub fn stderr(text: impl Into<String>) -> Self {
        Self {
            stdout: String::new(),
            stderr: text.into(),
        }
    }
}

/// A usage error found after parsing (e.g. mixed argument forms): `main` reports it the way
/// clap reports its own, exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// An error with a list of details (e.g. every failed migration precheck): `main` prints
/// `ERROR <message>` and then one `  - <detail>` line per detail, exit status 1. Shown any other
/// way it is one line, the details separated by `; `.
#[derive(Debug, thiserror::Error)]
#[error("{message} {}", details.join("; "))]
pub struct DetailedError {
    /// The first line, after `ERROR `.
    pub message: String,
    /// One line each.
    pub details: Vec<String>,
}
