//! `cargo xtask build`: setup, then the release build of the `emis` binary (which
//! builds and embeds the eBPF program).

use anyhow::Result;

use crate::setup;
use crate::util::{cargo, run};

/// `cargo xtask build`.
pub fn build() -> Result<()> {
    setup::setup()?;
    run(cargo().args(["build", "--release", "-p", "emis-user"]))
}
