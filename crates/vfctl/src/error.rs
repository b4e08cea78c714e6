//! Why a command failed: said in one line on stderr (`vfctl: …`), exit status 1.

use std::path::{Path, PathBuf};
use vibefollow_users::app::ports::PortError;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// What the caller must change first: an argument, the environment, the stack.
    #[error("{0}")]
    Setup(String),
    /// A file the command reads or writes.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The import's input cannot be read on (not one refused user: those are listed).
    #[error("{0}")]
    Input(String),
    /// A resource of the stack did not answer (a kind or an AWS code, never its text).
    #[error("{what}: {source}")]
    Aws {
        what: &'static str,
        #[source]
        source: PortError,
    },
    /// The API answered what the import cannot go on from.
    #[error("{0}")]
    Api(String),
}

/// What to change, in words: the common case of [`CommandError::Setup`].
impl From<String> for CommandError {
    fn from(message: String) -> Self {
        CommandError::Setup(message)
    }
}

impl From<&str> for CommandError {
    fn from(message: &str) -> Self {
        CommandError::Setup(message.to_owned())
    }
}

impl CommandError {
    /// A failure of the file at `path`.
    pub fn file(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| CommandError::File {
            path: path.to_owned(),
            source,
        }
    }

    /// A failure of the stack's `what` (the keys table, a queue…).
    pub fn aws(what: &'static str) -> impl FnOnce(PortError) -> Self {
        move |source| CommandError::Aws { what, source }
    }
}
