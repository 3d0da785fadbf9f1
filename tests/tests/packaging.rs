//! emis installed like any Linux daemon: the systemd unit passes `systemd-analyze
//! verify` and its capabilities are enough (and needed) for `emis run`, the example
//! config is valid and names only the daemon's keys, and `cargo xtask deb` builds a
//! package whose contents are all there and whose binary runs.
//!
//! Needs root, dpkg-deb, systemd-analyze, man, ip, setpriv and curl (`cargo xtask setup`
//! installs them) and cargo-deb; a missing tool fails the test. The package test runs `cargo xtask deb`,
//! which reuses the release build when it is current (`cargo xtask test` builds it first).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use emis_tests::emis_bin;

/// The keys `emis run --config FILE` reads, exactly.
const CONFIG_KEYS: [&str; emis::daemon::config::KEYS.len()] = emis::daemon::config::KEYS;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
        .to_path_buf()
}

fn packaging(file: &str) -> PathBuf {
    workspace_root().join("packaging").join(file)
}

/// A fresh directory under cargo's per-target temp dir, named for the test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("packaging-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `cmd`, failing the test with what to install when the program is missing.
fn output(cmd: &mut Command, install_hint: &str) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}): {install_hint}"))
}

fn stdout_of(cmd: &mut Command, install_hint: &str) -> String {
    let out = output(cmd, install_hint);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `Key=` lines in a unit file (every occurrence, in order).
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn unit_states_the_service_contract() {
    let unit = fs::read_to_string(packaging("emis.service")).unwrap();
    for (key, value) in [
        ("Type", "notify"),
        (
            "ExecStart",
            "/usr/bin/emis run --config /etc/emis/emis.toml",
        ),
        ("ExecReload", "/usr/bin/emis reload"),
        ("Restart", "on-failure"),
        ("RuntimeDirectory", "emis"),
        ("RuntimeDirectoryPreserve", "yes"),
        ("CapabilityBoundingSet", "CAP_BPF CAP_NET_ADMIN CAP_PERFMON"),
        ("AmbientCapabilities", "CAP_BPF CAP_NET_ADMIN CAP_PERFMON"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/sys/fs/bpf"),
        ("NoNewPrivileges", "yes"),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        ),
        ("SystemCallArchitectures", "native"),
        ("AssertPathIsMountPoint", "/sys/fs/bpf"),
    ] {
        assert_eq!(unit_values(&unit, key), [value], "{key}= in emis.service");
    }
    // Fail-static: nothing in the unit detaches on stop; the drop-in that does is documented.
    assert!(unit_values(&unit, "ExecStop").is_empty());
    assert!(unit_values(&unit, "ExecStopPost").is_empty());
    assert!(unit.contains("#     ExecStopPost=/usr/bin/emis detach"));
}

/// `systemd-analyze verify` checks that ExecStart's binary exists, and /usr/bin/emis
/// exists only once the package is installed. So a copy of the unit whose commands point
/// at the binary this build made is verified instead; everything else is the unit as
/// shipped. MANPATH points at freshly generated pages so `Documentation=man:` is checked
/// for real.
#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = temp_dir("verify");
    let emis = emis_bin();
    let unit = fs::read_to_string(packaging("emis.service")).unwrap();
    assert!(
        unit.contains("/usr/bin/emis "),
        "the unit runs /usr/bin/emis"
    );
    let local = unit.replace("/usr/bin/emis ", &format!("{} ", emis.display()));
    let unit_path = dir.join("emis.service");
    fs::write(&unit_path, local).unwrap();

    let man = dir.join("man");
    stdout_of(
        Command::new(&emis)
            .arg("generate")
            .arg("man")
            .arg(man.join("man1")),
        "the emis binary is built by `cargo build -p emis-user`",
    );

    let out = output(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit_path)
            .env("MANPATH", &man)
            .env("SYSTEMD_LOG_COLOR", "0"),
        "install systemd (`cargo xtask setup`)",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Warnings (an unknown key, a misspelled value) do not change the exit status, so
    // any message about our unit fails the test too.
    assert!(
        out.status.success() && !stderr.contains("emis.service"),
        "systemd-analyze verify rejected the unit ({}):\n{stderr}",
        out.status
    );

    // And verify does catch a broken unit here: the check above is not vacuous.
    let broken = dir.join("broken").join("emis.service");
    fs::create_dir_all(broken.parent().unwrap()).unwrap();
    fs::write(
        &broken,
        fs::read_to_string(&unit_path)
            .unwrap()
            .replace("Type=notify", "Type=notfy"),
    )
    .unwrap();
    let out = output(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&broken)
            .env("MANPATH", &man),
        "install systemd",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("emis.service") && stderr.contains("notfy"),
        "systemd-analyze verify said nothing about Type=notfy:\n{stderr}"
    );
}

/// Every `key = value` line of `text`, with the value parsed: the active ones, and with
/// `commented` also the documented defaults (`# key = value`).
fn config_entries(text: &str, commented: bool) -> Vec<(String, toml_edit::Item)> {
    let mut lines = String::new();
    for line in text.lines() {
        let line = match line.strip_prefix("# ") {
            Some(rest) if commented && is_assignment(rest) => rest,
            _ => line,
        };
        lines.push_str(line);
        lines.push('\n');
    }
    let doc: toml_edit::DocumentMut = lines
        .parse()
        .unwrap_or_else(|e| panic!("packaging/emis.toml (commented={commented}) is not TOML: {e}"));
    doc.iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// `name = ...` with a bare lower-case key: a commented default, not prose.
fn is_assignment(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(key, _)| {
        !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    })
}

#[test]
fn example_config_is_toml_with_only_the_daemon_keys() {
    let text = fs::read_to_string(packaging("emis.toml")).unwrap();

    let active = config_entries(&text, false);
    let keys: Vec<&str> = active.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["interfaces"],
        "only interfaces is set; the rest are defaults"
    );
    let interfaces = active[0].1.as_array().expect("interfaces is an array");
    assert!(interfaces.iter().all(|v| v.is_str()) && !interfaces.is_empty());

    let all = config_entries(&text, true);
    let keys: BTreeSet<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, CONFIG_KEYS.into_iter().collect(), "documented keys");
    assert_eq!(all.len(), CONFIG_KEYS.len(), "each key documented once");

    let value = |key: &str| {
        all.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_value().expect("a value").clone())
            .unwrap()
    };
    // The documented defaults are the binary's defaults.
    assert_eq!(value("mode").as_str(), Some("enforce"));
    assert_eq!(value("replies").as_str(), Some("stateful"));
    assert_eq!(value("xdp_mode").as_str(), Some("auto"));
    assert_eq!(
        value("flow_table_size").as_integer(),
        Some(emis_common::DEFAULT_FLOW_TABLE_SIZE.into())
    );
    assert_eq!(value("pin_dir").as_str(), Some("/sys/fs/bpf/emis"));
    assert_eq!(value("state_dir").as_str(), Some("/run/emis"));
    assert_eq!(
        value("event_rate").as_integer(),
        Some(emis_common::DEFAULT_EVENT_RATE.into())
    );
    assert_eq!(value("bpf_stats").as_bool(), Some(false));
    let help = stdout_of(
        Command::new(emis_bin()).args(["run", "--help"]),
        "build emis",
    );
    for (key, flag_default) in [
        (
            "metrics_addr",
            value("metrics_addr").as_str().unwrap().to_string(),
        ),
        ("pin_dir", "/sys/fs/bpf/emis".into()),
        ("state_dir", "/run/emis".into()),
    ] {
        assert!(
            help.contains(&format!("[default: {flag_default}]")),
            "{key}'s documented default {flag_default} is not the default of `emis run`:\n{help}"
        );
    }
    let site_nets = value("site_nets");
    let site_nets = site_nets.as_array().expect("site_nets is an array");
    assert!(site_nets
        .iter()
        .all(|v| v.as_str().is_some_and(|s| s.contains('='))));
}

/// The `.deb` path `cargo xtask deb` printed.
fn build_package() -> PathBuf {
    let out = output(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["xtask", "deb"])
            .current_dir(workspace_root()),
        "cargo is on PATH when tests run under cargo",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "`cargo xtask deb` failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let path = stdout
        .lines()
        .find_map(|l| l.strip_prefix("==> package: "))
        .unwrap_or_else(|| panic!("`cargo xtask deb` printed no package path:\n{stdout}"));
    PathBuf::from(path)
}

/// The subcommands `emis --help` lists, but `help`.
fn subcommands(emis: &Path) -> Vec<String> {
    let help = stdout_of(
        Command::new(emis).arg("--help"),
        "the extracted binary runs",
    );
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn package_has_binary_unit_conffile_pages_and_completions() {
    let deb = build_package();
    let dpkg = "install dpkg (`cargo xtask setup`)";

    let listing = stdout_of(Command::new("dpkg-deb").arg("-c").arg(&deb), dpkg);
    let files: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect();
    let has = |path: &str| files.contains(path);
    for path in [
        "/usr/bin/emis",
        "/etc/emis/emis.toml",
        "/usr/share/bash-completion/completions/emis",
        "/usr/share/zsh/vendor-completions/_emis",
        "/usr/share/fish/vendor_completions.d/emis.fish",
        "/usr/share/doc/emis/README.md",
        "/usr/share/doc/emis/DECISIONS.md",
        "/usr/share/man/man1/emis.1.gz",
    ] {
        assert!(has(path), "{path} missing from the package:\n{listing}");
    }
    let unit = [
        "/usr/lib/systemd/system/emis.service",
        "/lib/systemd/system/emis.service",
    ]
    .into_iter()
    .find(|p| has(p))
    .unwrap_or_else(|| panic!("no emis.service in the package:\n{listing}"));
    assert!(
        !files.iter().any(|f| f.contains("generate")),
        "the hidden generate command got a page or file:\n{listing}"
    );

    let conffiles = stdout_of(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles"),
        dpkg,
    );
    assert_eq!(conffiles.trim(), "/etc/emis/emis.toml");
    let prerm = stdout_of(
        Command::new("dpkg-deb").arg("-I").arg(&deb).arg("prerm"),
        dpkg,
    );
    assert!(prerm.contains("/usr/bin/emis detach"), "{prerm}");
    assert!(prerm.contains("deb-systemd-invoke stop"), "{prerm}");
    let postinst = stdout_of(
        Command::new("dpkg-deb").arg("-I").arg(&deb).arg("postinst"),
        dpkg,
    );
    // Not started, and enabled only if the administrator had enabled it (cargo-deb's
    // `enable = false` script); a running service is restarted on upgrade.
    assert!(
        !postinst.contains("deb-systemd-invoke start")
            && postinst.contains("deb-systemd-helper debian-installed emis.service")
            && postinst.contains("deb-systemd-invoke try-restart emis.service"),
        "the service must not start or be enabled before its config is edited:\n{postinst}"
    );

    let root = temp_dir("extract");
    stdout_of(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        dpkg,
    );
    let emis = root.join("usr/bin/emis");
    let version = stdout_of(
        Command::new(&emis).arg("--version"),
        "the packaged binary runs",
    );
    assert_eq!(
        version.trim(),
        format!("emis {}", env!("CARGO_PKG_VERSION"))
    );

    assert_eq!(
        fs::read_to_string(root.join(unit.trim_start_matches('/'))).unwrap(),
        fs::read_to_string(packaging("emis.service")).unwrap()
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/emis/emis.toml")).unwrap(),
        fs::read_to_string(packaging("emis.toml")).unwrap()
    );

    // One page per visible command, each of which man renders.
    let man1 = root.join("usr/share/man/man1");
    let commands = subcommands(&emis);
    assert!(commands.iter().any(|c| c == "run"), "{commands:?}");
    let mut pages = vec!["emis".to_string()];
    pages.extend(commands.iter().map(|c| format!("emis-{c}")));
    for page in &pages {
        let path = man1.join(format!("{page}.1.gz"));
        assert!(path.exists(), "{} missing from the package", path.display());
        let text = stdout_of(
            Command::new("man")
                .arg("-l")
                .arg(&path)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "100"),
            "install man-db (`cargo xtask setup`)",
        );
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS") && text.contains(page.as_str()),
            "man -l {} rendered:\n{text}",
            path.display()
        );
    }
    let run_page = stdout_of(
        Command::new("man")
            .arg("-l")
            .arg(man1.join("emis-run.1.gz"))
            .env("MANPAGER", "cat"),
        "install man-db",
    );
    assert!(run_page.contains("--pin-dir"), "{run_page}");

    let completions = root.join("usr/share");
    let read = |p: &str| fs::read_to_string(completions.join(p)).unwrap();
    assert!(read("bash-completion/completions/emis").contains("complete -F _emis"));
    assert!(read("zsh/vendor-completions/_emis").starts_with("#compdef emis"));
    assert!(read("fish/vendor_completions.d/emis.fish").contains("complete -c emis"));
    for c in &commands {
        assert!(
            read("bash-completion/completions/emis").contains(c.as_str()),
            "bash completion lacks {c}"
        );
    }
}

/// `-all,+bpf,+net_admin,...` for `setpriv --bounding-set` from the unit's
/// `CapabilityBoundingSet=`.
fn bounding_set(unit: &str) -> String {
    let caps = unit_values(unit, "CapabilityBoundingSet");
    assert_eq!(caps.len(), 1, "one CapabilityBoundingSet= line");
    let mut set = String::from("-all");
    for cap in caps[0].split_whitespace() {
        let name = cap.strip_prefix("CAP_").expect("CAP_ names");
        set.push_str(&format!(",+{}", name.to_lowercase()));
    }
    set
}

/// Runs `emis run` on a veth pair in a namespace of its own, with only the capabilities
/// in `bounding_set` (root keeps just those after exec, as under the unit), and reports
/// whether it attached and served /metrics. The namespace's bpffs mount and the veths
/// go away with the shell and the namespace, which detaches whatever is left.
fn run_with_capabilities(name: &str, bounding_set: &str) -> (bool, String) {
    let netns = format!("emispkg-{}-{name}", std::process::id());
    let state = temp_dir(&format!("caps-{name}"));
    let ip = |args: &[&str]| {
        let out = output(
            Command::new("ip").args(args),
            "install iproute2 (`cargo xtask setup`)",
        );
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let _ = Command::new("ip").args(["netns", "del", &netns]).output();
    ip(&["netns", "add", &netns]);
    ip(&[
        "-n", &netns, "link", "add", "pa", "type", "veth", "peer", "name", "pb",
    ]);
    for dev in ["lo", "pa", "pb"] {
        ip(&["-n", &netns, "link", "set", dev, "up"]);
    }
    let script = format!(
        r#"mount -t bpf bpf /sys/fs/bpf || exit 3
setpriv --no-new-privs --bounding-set={bounding_set} --inh-caps=-all -- \
  {emis} run --iface pa --iface pb --site-net lan=10.0.0.0/24 \
  --metrics-addr 127.0.0.1:19470 --state-dir {state} &
pid=$!
for i in $(seq 100); do
  if curl -sf http://127.0.0.1:19470/metrics >/dev/null; then
    ip -d link show pa | grep -q 'xdp' && echo ATTACHED
    break
  fi
  kill -0 $pid 2>/dev/null || break
  sleep 0.2
done
kill -TERM $pid 2>/dev/null
wait $pid
"#,
        emis = emis_bin().display(),
        state = state.display(),
    );
    let out = output(
        Command::new("ip").args(["netns", "exec", &netns, "sh", "-c", &script]),
        "install iproute2 and util-linux (setpriv)",
    );
    let _ = Command::new("ip").args(["netns", "del", &netns]).output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    (stdout.contains("ATTACHED"), format!("{stdout}{stderr}"))
}

/// The unit keeps CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON only: with exactly those the
/// daemon loads, attaches and serves metrics; without CAP_PERFMON the verifier refuses
/// the program, which is why the unit keeps it. Needs root.
#[test]
fn the_units_capabilities_are_enough_and_perfmon_is_needed() {
    let unit = fs::read_to_string(packaging("emis.service")).unwrap();
    let set = bounding_set(&unit);
    assert_eq!(set, "-all,+bpf,+net_admin,+perfmon");

    let (attached, log) = run_with_capabilities("unit", &set);
    assert!(
        attached,
        "emis run with the unit's capabilities ({set}) did not attach:\n{log}"
    );

    let without_perfmon = set.replace(",+perfmon", "");
    let (attached, log) = run_with_capabilities("noperfmon", &without_perfmon);
    assert!(
        !attached,
        "attached without CAP_PERFMON: the unit could drop it\n{log}"
    );
    // Refused for what only CAP_PERFMON allows: pointer arithmetic, or reading a stack
    // slot LLVM left unwritten on the path (the kernel's allow_uninit_stack). Which one
    // the verifier meets first depends on how LLVM laid the program out.
    assert!(
        log.contains("pointer -= pointer prohibited")
            || log.contains("pointer arithmetic with it prohibited for !root")
            || log.contains("invalid read from stack"),
        "{log}"
    );
}
