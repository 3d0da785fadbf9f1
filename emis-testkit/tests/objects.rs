//! The object the `emis` binary embeds holds the enforcer and nothing else; the test and
//! benchmark programs are in an object of their own. Reads the objects without loading
//! them (no root needed).

use std::collections::BTreeSet;

use emis_testkit::programs::{ALL, TC_ALL, TEST_OBJECT};

fn programs(object: &[u8], what: &str) -> BTreeSet<String> {
    assert!(
        !object.is_empty(),
        "the {what} object is empty: this build used AYA_BUILD_SKIP=1; rebuild without it"
    );
    let parsed =
        aya_obj::Object::parse(object).unwrap_or_else(|e| panic!("parsing the {what} object: {e}"));
    parsed.programs.into_keys().collect()
}

#[test]
fn the_emis_binary_embeds_exactly_the_enforcer() {
    let found = programs(emis::loader::PROGRAM_OBJECT, "emis");
    assert_eq!(
        found,
        BTreeSet::from([
            emis_common::PROGRAM_NAME.to_string(),
            emis_common::PROGRAM_NAME_L3.to_string(),
            emis_common::PROGRAM_NAME_EGRESS.to_string(),
            emis_common::PROGRAM_NAME_EGRESS_L3.to_string(),
        ]),
        "the object the emis binary embeds must hold the enforcer's XDP entries (Ethernet, IP) \
         and its TC egress entries (Ethernet, IP)"
    );
}

#[test]
fn the_test_object_holds_the_benchmark_programs() {
    let found = programs(TEST_OBJECT, "test-program");
    let expected: BTreeSet<String> = ALL.iter().chain(&TC_ALL).map(|s| s.to_string()).collect();
    assert_eq!(found, expected);
}

/// The kernel refuses BTF with `<` in a type name, and aya then loads the program
/// without BTF (the trace's global function becomes static: see emis-user/build.rs).
#[test]
fn the_emis_object_has_btf_the_kernel_accepts() {
    let object = emis::loader::PROGRAM_OBJECT;
    let parsed = aya_obj::Object::parse(object).expect("parsing the emis object");
    assert!(parsed.btf.is_some(), "the emis object carries BTF");
    assert!(
        !object.windows(12).any(|w| w == b"MaybeUninit<"),
        "a BTF type name with `<` is left in the object"
    );
}

/// The compiler's memory routines are functions in the object that move one byte per
/// loop turn; LLVM calls them where it merges stores (16 zero bytes or more). One such
/// call per packet doubled the drop path's cost once (see emis-ebpf/src/zero.rs), so
/// no program in the shipped object may call them.
#[test]
fn the_emis_object_calls_no_byte_loop_memory_routine() {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};
    const ROUTINES: [&str; 5] = ["memset", "memcpy", "memmove", "memcmp", "bcmp"];
    let file = object::File::parse(emis::loader::PROGRAM_OBJECT).expect("parsing the emis object");
    let mut calls = Vec::new();
    for section in file.sections() {
        for (offset, relocation) in section.relocations() {
            let RelocationTarget::Symbol(index) = relocation.target() else {
                continue;
            };
            let Ok(symbol) = file.symbol_by_index(index) else {
                continue;
            };
            let name = symbol.name().unwrap_or_default();
            if !ROUTINES.contains(&name) {
                continue;
            }
            // The function whose code holds the call.
            let caller = file
                .symbols()
                .filter(|s| s.section_index() == Some(section.index()) && s.size() > 0)
                .find(|s| (s.address()..s.address() + s.size()).contains(&offset))
                .and_then(|s| s.name().ok().map(str::to_string))
                .unwrap_or_else(|| format!("{}+{offset:#x}", section.name().unwrap_or("?")));
            calls.push(format!("{caller} calls {name}"));
        }
    }
    assert!(
        calls.is_empty(),
        "the emis object calls byte-loop memory routines (zero such values with \
         emis-ebpf's `zero`, or build them word by word):\n{}",
        calls.join("\n")
    );
}

/// aya's `#[xdp]` wraps the program's function in the section's entry; left out of line,
/// the entry was a call and an exit (16 bytes), and every packet paid a BPF-to-BPF call
/// (7 to 8 ns) before its first instruction. Each XDP entry must hold the program itself.
#[test]
fn the_xdp_entries_hold_the_program_not_a_call_to_it() {
    use object::{Object as _, ObjectSymbol as _};
    let file = object::File::parse(emis::loader::PROGRAM_OBJECT).expect("parsing the emis object");
    for name in [emis_common::PROGRAM_NAME, emis_common::PROGRAM_NAME_L3] {
        let entry = file
            .symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("no symbol {name} in the emis object"));
        assert!(
            entry.size() > 1024,
            "the {name} entry is {} bytes: its body was not inlined into it (keep \
             #[inline(always)] on the function under #[xdp])",
            entry.size()
        );
    }
}
