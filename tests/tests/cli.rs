//! The `emis` binary as a user meets it: `check`, `explain --json`, and the errors for bad
//! input and missing privileges.

use std::{path::PathBuf, process::Command};

use emis_tests::emis_bin;

fn emis(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(emis_bin())
        .args(args)
        .output()
        .expect("running emis");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("emis-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_summarises_the_embedded_spec_and_names_unset_roles() {
    let (ok, out, err) = emis(&["check", "--site-net", "lan=192.168.10.0/24"]);
    assert!(ok, "{err}");
    for needle in [
        "emis-n3",
        "10.207.112.0/22",
        "client-spine-messaging",
        "support-rdp",
        "local-udp-forwarder",
        "rules (35)",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
    assert!(out.contains("lan              192.168.10.0/24"), "{out}");
    assert!(
        out.contains("surgery          unset: any address outside the enforce-scope networks"),
        "{out}"
    );
    assert!(out.contains("shared counters"), "{out}");
}

#[test]
fn check_names_file_line_column_and_field_of_a_bad_spec_and_fails() {
    let spec = temp_file(
        "bad.toml",
        "[[network]]\nname = \"n\"\nscope = \"enforce\"\ndescription = \"d\"\nprefixes = [\"10.0.0.0/33\"]\n",
    );
    let (ok, _, err) = emis(&["check", "--spec", spec.to_str().unwrap()]);
    assert!(!ok);
    let expected = format!("{}:5:13:", spec.display());
    assert!(
        err.contains(&expected) && err.contains("prefixes[0]"),
        "{err}"
    );
    let (ok, _, err) = emis(&["check", "--site-net", "lan=10.0.0.0/99"]);
    assert!(!ok && err.contains("--site-net"), "{err}");
}

#[test]
fn explain_json_gives_verdict_rule_path_and_reason() {
    let (ok, out, err) = emis(&[
        "explain",
        "--src",
        "192.168.10.2",
        "--dst",
        "10.207.116.10",
        "--proto",
        "tcp",
        "--dport",
        "443",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            v["verdict"].as_str(),
            v["rule"].as_str(),
            v["path"].as_str()
        ),
        (
            Some("allow"),
            Some("client-spine-messaging"),
            Some("forward")
        )
    );
    let (_, out, _) = emis(&[
        "explain",
        "--src",
        "192.168.10.2",
        "--dst",
        "10.207.116.10",
        "--proto",
        "tcp",
        "--dport",
        "444",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            v["verdict"].as_str(),
            v["reason"].as_str(),
            v["network"].as_str()
        ),
        (Some("deny"), Some("no_rule"), Some("emis-n3"))
    );
    assert!(v["rule"].is_null());
    let (_, out, _) = emis(&[
        "explain",
        "--src",
        "10.207.116.10",
        "--dst",
        "192.168.10.2",
        "--proto",
        "icmp",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["reason"].as_str(), Some("icmp"));
}

#[test]
fn run_without_root_says_what_it_needs() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(emis_bin())
        .args([
            "run",
            "--iface",
            "lo",
            "--state-dir",
            "/tmp/emis-cli-nonroot",
        ])
        .output()
        .expect("setpriv (util-linux) runs emis as nobody");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root"), "{err}");
}
