//! The daemon's error type: what failed, on what, and what to try next.

use emis_policy::{compile::CompileError, spec::SpecError};

use crate::loader::LoadError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Slots(#[from] super::slots::SlotError),
    #[error(transparent)]
    Locked(#[from] super::lock::Locked),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{what}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{what}")]
    Link {
        what: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("{what}")]
    Pin {
        what: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{what}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A refusal that explains itself.
    #[error("{0}")]
    Refused(String),
}

/// Names what was being done when a lower-level call failed.
pub(crate) trait What<T> {
    fn what(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

macro_rules! what_for {
    ($source:ty, $variant:ident) => {
        impl<T> What<T> for Result<T, $source> {
            fn what(self, what: impl FnOnce() -> String) -> Result<T, Error> {
                self.map_err(|source| Error::$variant {
                    what: what(),
                    source,
                })
            }
        }
    };
}

what_for!(std::io::Error, Io);
what_for!(aya::maps::MapError, Map);
what_for!(aya::programs::ProgramError, Program);
what_for!(aya::programs::links::LinkError, Link);
what_for!(aya::pin::PinError, Pin);
what_for!(serde_json::Error, Json);

/// An error and its sources, one after the other: what `{:#}` shows with anyhow.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
