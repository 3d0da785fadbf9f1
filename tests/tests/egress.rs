//! The egress program (`emis_egress`) through BPF_PROG_TEST_RUN beside the XDP program it
//! serves, against the reference model's egress step; and what the verifier spends on
//! every program of the object. Needs root.

use aya::programs::{SchedClassifier, Xdp};
use emis_lab::site::TEST_SITE;
use emis_policy::compile::compile;
use emis_tests::default_policy;

/// Prints the instructions the verifier processed for each program of the emis object,
/// so a change's cost shows in the test log (docs/DEVELOPMENT.md gives the budget).
#[test]
fn every_program_verifies_and_prints_its_cost() {
    let policy = default_policy(TEST_SITE, true);
    let compiled = compile(&policy).unwrap();
    let mut ebpf = emis::loader::load(&compiled, Default::default()).expect("loading (as root)");
    let names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_string()).collect();
    for name in names {
        let program = ebpf.program_mut(&name).unwrap();
        let info = match program {
            aya::programs::Program::Xdp(p) => {
                let p: &mut Xdp = p;
                if p.fd().is_err() {
                    p.load()
                        .unwrap_or_else(|e| panic!("verifying {name}: {e:?}"));
                }
                p.info().unwrap()
            }
            aya::programs::Program::SchedClassifier(p) => {
                let p: &mut SchedClassifier = p;
                if p.fd().is_err() {
                    p.load()
                        .unwrap_or_else(|e| panic!("verifying {name}: {e:?}"));
                }
                p.info().unwrap()
            }
            other => panic!("unexpected program type {:?} for {name}", other.prog_type()),
        };
        println!(
            "verifier: {name}: {} instructions processed, {} translated",
            info.verified_instruction_count().unwrap_or(0),
            info.size_translated().unwrap_or(0)
        );
    }
}
