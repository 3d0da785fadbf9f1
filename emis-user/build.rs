//! Builds the kernel program (emis-ebpf) with aya-build, as aya-template does,
//! so `cargo build -p emis-user` embeds a fresh object.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("emis-user has no parent directory"))?;
    let ebpf_dir = root.join("emis-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    // The kernel program also depends on the shared types.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("emis-common").display()
    );
    // A host-only build (AYA_BUILD_SKIP=1) still needs a file to embed; the loader
    // refuses an empty object with an error that says how to rebuild.
    if std::env::var_os("AYA_BUILD_SKIP")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    {
        let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
        let object = std::path::Path::new(&out_dir).join("emis");
        if !object.exists() {
            std::fs::write(&object, []).context("writing the empty placeholder object")?;
        }
    }
    let package = aya_build::Package {
        name: "emis-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
