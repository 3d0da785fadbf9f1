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
    aya_build::build_ebpf([package], aya_build::Toolchain::default())?;
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
    sanitize_btf_names(&std::path::Path::new(&out_dir).join("emis"))
}

/// aya-log-ebpf's `AYA_LOG_LEVEL` (a `Global<u8>`) brings the union `MaybeUninit<u8>`
/// into the object's BTF, and bpf-linker 0.10 leaves that name as it is. The kernel
/// refuses BTF with `<` in a type name, and aya then loads the program without BTF,
/// which turns the trace's global function into a static one the verifier walks on
/// every path. Renamed in place (`MaybeUninit_u8_`, same length, so no offset moves).
fn sanitize_btf_names(object: &std::path::Path) -> anyhow::Result<()> {
    const PREFIX: &[u8] = b"MaybeUninit<";
    let mut bytes =
        std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    let mut i = 0;
    let mut changed = false;
    while let Some(at) = bytes[i..].windows(PREFIX.len()).position(|w| w == PREFIX) {
        let start = i + at;
        let end = start + bytes[start..].iter().position(|b| *b == 0).unwrap_or(0);
        for b in &mut bytes[start..end] {
            if matches!(*b, b'<' | b'>' | b',' | b' ') {
                *b = b'_';
                changed = true;
            }
        }
        i = end.max(start + 1);
    }
    if changed {
        std::fs::write(object, bytes).with_context(|| format!("writing {}", object.display()))?;
    }
    Ok(())
}
