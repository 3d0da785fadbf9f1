//! `cargo xtask lab up|down`: the namespace lab (emis_lab) for manual experiments.

use anyhow::Result;
use emis_lab::Lab;

/// `cargo xtask lab up`: creates the lab and leaves it running, with hints for using it.
pub fn up(prefix: &str) -> Result<()> {
    emis_lab::require_root_and_tools()?;
    println!("==> create lab {prefix}");
    let lab = Lab::create(prefix)?;
    crate::demo::print_topology(&lab);
    let [site, gw, emis] = lab.namespaces();
    let [gw_site, gw_emis] = lab.gateway_ifaces();
    println!(
        "\nThe lab stays up. Try:\n  \
         ip netns exec {site} bash                   # a shell on the site LAN\n  \
         ip netns exec {emis} python3 -m http.server -b {primary} 443 &\n  \
         ip netns exec {site} curl -m 3 http://{primary}:443/\n  \
         target/release/emis run --netns {gw} --iface {gw_site} --iface {gw_emis} \
         --site-net lan={net}\n\
         Tear it down with: cargo xtask lab down --prefix {prefix}",
        primary = emis_lab::EMIS_PRIMARY,
        net = emis_lab::SITE_NET,
    );
    lab.keep();
    Ok(())
}

/// `cargo xtask lab down`: deletes the lab's namespaces.
pub fn down(prefix: &str) -> Result<()> {
    emis_lab::require_root_and_tools()?;
    println!("==> delete lab {prefix}");
    let removed = Lab::remove(prefix)?;
    if removed.is_empty() {
        println!("    no namespaces of lab {prefix} were present");
    } else {
        println!("    deleted {}", removed.join(", "));
    }
    Ok(())
}
