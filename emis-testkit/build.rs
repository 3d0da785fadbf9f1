//! Builds the test and benchmark programs (emis-test-ebpf) with aya-build, as
//! emis-user/build.rs builds the enforcer, so `cargo build -p emis-testkit` embeds a
//! fresh object of its own.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("emis-testkit has no parent directory"))?;
    let ebpf_dir = root.join("emis-test-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    // The programs also depend on the shared types and on the enforcer's parser, which
    // emis-test-ebpf includes from emis-ebpf by path (aya-build watches only ebpf_dir).
    for input in ["emis-common", "emis-ebpf/src/parse.rs"] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    // A host-only build (AYA_BUILD_SKIP=1) still needs a file to embed; loading the
    // programs then fails with an error that says how to rebuild.
    if std::env::var_os("AYA_BUILD_SKIP")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    {
        let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
        let object = std::path::Path::new(&out_dir).join("emis-test");
        if !object.exists() {
            std::fs::write(&object, []).context("writing the empty placeholder object")?;
        }
    }
    let package = aya_build::Package {
        name: "emis-test-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
