//! Throughput on veth. The namespace lab (`emis_lab`, prefix `emisbench`) gives a site, a
//! gateway and an EMIS side. A generator thread in the site namespace sends with
//! BPF_PROG_TEST_RUN in live-frames mode: the `emis_tx` program returns XDP_TX for a frame
//! "received" on `site0`, so the kernel transmits it out of `site0` to `gw-site`, the
//! gateway's veth, where the contender runs. Packets the contender passes are routed by
//! the gateway to the EMIS side, whose `emis0` drops them with a no-op XDP program.
//!
//! Counting: `gw-site`'s rx packets (what `ip -s link` shows, read from the gateway's
//! /proc/net/dev) is the number of frames the gateway's veth took off its ring and ran
//! through XDP, or through the stack when no XDP program is attached. It is exact for
//! every contender. Each contender's own counters (emis's counter map, nftables' named
//! counters) are read too and must agree with it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::PerCpuArray;
use emis::{
    loader::{self, LoadOptions},
    stats::Snapshot,
};
use emis_common::{Counter, MAP_STATS};
use emis_lab::{in_netns_scoped, Host, Lab};
use emis_policy::{
    compile::compile,
    nft::{Family, NftOptions},
    packet::{PacketSpec, TCP_SYN},
    policy::{Policy, Protocol},
};
use emis_testkit::{
    attach::attach_native,
    programs::{self, BenchPrograms},
    testrun::live_frames,
};
use serde::Serialize;

pub const LAB_PREFIX: &str = "emisbench";
const NFT_TABLE: &str = "emisbench";
/// Frames per live-frames batch (the kernel's default NAPI budget).
const BATCH: u32 = 64;
/// Frames per BPF_PROG_TEST_RUN call: about a tenth of a second.
const PER_CALL: u32 = 1 << 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Contender {
    /// XDP_DROP and nothing else: the receiver's limit.
    NoopDrop,
    /// XDP_PASS and nothing else on the allowed traffic: the pass path's limit on this route.
    NoopPass,
    /// emis in enforce mode on traffic it denies.
    EmisDrop,
    /// emis on traffic it allows (passed to the stack and routed to the EMIS side).
    EmisPass,
    /// xdp-filter, allowing only the spec's ports (it cannot match addresses and ports together).
    XdpFilterDrop,
    /// `emis export nft --family netdev` on traffic it denies.
    NftDrop,
    /// The same ruleset on traffic it allows.
    NftPass,
}

impl Contender {
    pub const ALL: [Contender; 7] = [
        Contender::NoopDrop,
        Contender::NoopPass,
        Contender::EmisDrop,
        Contender::EmisPass,
        Contender::XdpFilterDrop,
        Contender::NftDrop,
        Contender::NftPass,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Contender::NoopDrop => "no-op XDP_DROP (limit)",
            Contender::NoopPass => "no-op XDP_PASS, allowed traffic (pass limit)",
            Contender::EmisDrop => "emis, denied traffic (drop)",
            Contender::EmisPass => "emis, allowed traffic (pass)",
            Contender::XdpFilterDrop => "xdp-filter, port rules (drop)",
            Contender::NftDrop => "nftables ruleset (drop)",
            Contender::NftPass => "nftables ruleset (pass)",
        }
    }
    fn allowed_traffic(self) -> bool {
        matches!(
            self,
            Contender::EmisPass | Contender::NftPass | Contender::NoopPass
        )
    }
}

/// One timed run of one contender.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub contender: Contender,
    pub round: usize,
    pub seconds: f64,
    /// Frames gw-site took in during the run.
    pub rx_packets: u64,
    /// Frames lost because gw-site's ring was full (the receiver did not keep up).
    pub rx_dropped: u64,
    pub pps: f64,
    /// The contender's own count over the same run, where it has one.
    pub own_count: Option<u64>,
}

/// The lab, the frames and the programs that stay attached through the runs.
pub struct Bench<'a> {
    lab: Lab,
    programs: &'a mut BenchPrograms,
    policy: &'a Policy,
    site_ifindex: u32,
    denied: Vec<u8>,
    allowed: Vec<u8>,
    sink: Option<aya::programs::xdp::XdpLinkId>,
    nft_ruleset: String,
    generator_cpu: usize,
}

/// What [`Bench::attach`] put on gw-site that [`Bench::detach`] must take off; xdp-filter
/// and nftables are taken off by name.
#[derive(Default)]
struct Attached {
    /// The enforcer, detached when dropped.
    emis: Option<aya::Ebpf>,
    noop_link: Option<aya::programs::xdp::XdpLinkId>,
    noop_pass_link: Option<aya::programs::xdp::XdpLinkId>,
}

/// One reading of the counters a throughput run compares.
struct Counts {
    at: Instant,
    /// gw-site's rx packets and rx drops.
    rx: u64,
    dropped: u64,
    /// What the contender itself counted, if it counts.
    own: Option<u64>,
}

/// Runs `ip netns exec NS sh -c SCRIPT`.
fn sh_in(lab: &Lab, host: Host, script: &str) -> Result<String> {
    lab.exec(host, "sh", &["-c", script])
}

/// The MAC address of `iface` in `host`'s namespace.
fn mac_of(lab: &Lab, host: Host, iface: &str) -> Result<[u8; 6]> {
    let out = lab.ip(host, &["-j", "link", "show", "dev", iface])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -j link`")?;
    let text = v[0]["address"]
        .as_str()
        .ok_or_else(|| anyhow!("no address for {iface} in `ip -j link`"))?;
    let mut mac = [0u8; 6];
    for (i, part) in text.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).context("MAC address")?;
    }
    Ok(mac)
}

/// rx packets and rx drops of `iface`, from /proc/net/dev of the calling thread's namespace.
fn rx_counters(iface: &str) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")
        .context("reading /proc/thread-self/net/dev")?;
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() != iface {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if f.len() < 4 {
            bail!("short /proc/net/dev line for {iface}: {line}");
        }
        return Ok((f[1], f[3]));
    }
    bail!("{iface} is not in /proc/net/dev of this namespace")
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays in bounds for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A 60-byte TCP SYN frame (64 bytes on a wire, with the FCS) addressed to the gateway.
fn frame(dst_mac: [u8; 6], src_mac: [u8; 6], dport: u16) -> Vec<u8> {
    let mut spec = PacketSpec::tcp(
        IpAddr::V4(emis_lab::SITE_ADDR),
        IpAddr::V4(emis_lab::EMIS_PRIMARY),
        40000,
        dport,
        TCP_SYN,
    );
    spec.payload_len = 6;
    let mut f = spec.build();
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f
}

/// Every port the spec's rules name, per protocol, for xdp-filter's allow list.
fn spec_ports(policy: &Policy) -> Vec<(&'static str, u16)> {
    let mut ports = Vec::new();
    for rule in &policy.rules {
        let proto = match rule.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        for range in &rule.ports {
            for p in range.first..=range.last {
                ports.push((proto, p));
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

impl<'a> Bench<'a> {
    /// Builds the lab and attaches the EMIS side's sink. Needs root.
    pub fn new(
        programs: &'a mut BenchPrograms,
        policy: &'a Policy,
        generator_cpu: usize,
    ) -> Result<Bench<'a>> {
        let lab = Lab::create(LAB_PREFIX).context("creating the benchmark's namespace lab")?;
        // No IPv6 in the lab: neighbour discovery would add frames to the counts.
        for host in Host::ALL {
            let ns = lab.ns(host);
            in_netns_scoped(&ns, || -> Result<()> {
                std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1")
                    .context("disabling IPv6")?;
                std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
                    .context("disabling IPv6")?;
                Ok(())
            })??;
        }
        let gw_mac = mac_of(&lab, Host::Gateway, emis_lab::GW_SITE_IFACE)?;
        let site_mac = mac_of(&lab, Host::Site, emis_lab::SITE_IFACE)?;
        let emis_mac = mac_of(&lab, Host::Emis, emis_lab::EMIS_IFACE)?;
        // emis0 drops everything with XDP (so ARP too): the gateway gets a static neighbour.
        let mac = emis_mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        lab.ip(
            Host::Gateway,
            &[
                "neigh",
                "replace",
                &emis_lab::EMIS_LINK_ADDR.to_string(),
                "lladdr",
                &mac,
                "dev",
                emis_lab::GW_EMIS_IFACE,
                "nud",
                "permanent",
            ],
        )?;
        // Without an XDP program a veth takes XDP-transmitted frames only with GRO on.
        lab.exec(
            Host::Gateway,
            "ethtool",
            &["-K", emis_lab::GW_SITE_IFACE, "gro", "on"],
        )?;
        let site_ifindex = in_netns_scoped(&lab.ns(Host::Site), || {
            emis_lab::ifindex(emis_lab::SITE_IFACE)
        })??;
        let emis_ns = lab.ns(Host::Emis);
        let sink = attach_native(
            programs.program_mut(programs::NOOP_DROP)?,
            &emis_ns,
            emis_lab::EMIS_IFACE,
        )?;
        let nft_ruleset = emis_policy::nft::ruleset(
            policy,
            &NftOptions {
                family: Family::Netdev,
                ifaces: vec![emis_lab::GW_SITE_IFACE.into()],
                table: NFT_TABLE.into(),
                ..Default::default()
            },
        )?;
        Ok(Bench {
            lab,
            programs,
            policy,
            site_ifindex,
            denied: frame(gw_mac, site_mac, 444),
            allowed: frame(gw_mac, site_mac, 443),
            sink: Some(sink),
            nft_ruleset,
            generator_cpu,
        })
    }

    /// Runs `contender` for `duration` after `warmup`, sending denied or allowed frames.
    pub fn run(
        &mut self,
        contender: Contender,
        round: usize,
        warmup: Duration,
        duration: Duration,
    ) -> Result<Sample> {
        let attached = self.attach(contender)?;
        let result = self.measure(contender, round, warmup, duration, attached.emis.as_ref());
        // Detach, whatever happened.
        let detached = self.detach(contender, attached);
        let sample = result?;
        detached?;
        Ok(sample)
    }

    /// Puts `contender` on gw-site.
    fn attach(&mut self, contender: Contender) -> Result<Attached> {
        let gw = self.lab.ns(Host::Gateway);
        let iface = emis_lab::GW_SITE_IFACE;
        let mut attached = Attached::default();
        match contender {
            Contender::NoopDrop => {
                attached.noop_link = Some(attach_native(
                    self.programs.program_mut(programs::NOOP_DROP)?,
                    &gw,
                    iface,
                )?);
            }
            Contender::NoopPass => {
                attached.noop_pass_link = Some(attach_native(
                    self.programs.program_mut(programs::NOOP_PASS)?,
                    &gw,
                    iface,
                )?);
            }
            Contender::EmisDrop | Contender::EmisPass => {
                let compiled = compile(self.policy)?;
                let mut ebpf = loader::load(&compiled, LoadOptions::default())?;
                attach_native(loader::program_mut(&mut ebpf)?, &gw, iface)?;
                attached.emis = Some(ebpf);
            }
            Contender::XdpFilterDrop => {
                let mut script = format!(
                    "set -e; mount -t bpf bpf /sys/fs/bpf; \
                     xdp-filter load --mode native --policy deny --features tcp,udp {iface}"
                );
                for (proto, port) in spec_ports(self.policy) {
                    script.push_str(&format!(
                        "; xdp-filter port --mode src,dst --proto {proto} {port}"
                    ));
                }
                sh_in(&self.lab, Host::Gateway, &script)
                    .context("loading xdp-filter (is xdp-tools installed?)")?;
            }
            Contender::NftDrop | Contender::NftPass => {
                let path = std::env::temp_dir()
                    .join(format!("emisbench-ruleset-{}.nft", std::process::id()));
                std::fs::write(&path, &self.nft_ruleset)?;
                let loaded =
                    self.lab
                        .exec(Host::Gateway, "nft", &["-f", &path.display().to_string()]);
                let _ = std::fs::remove_file(&path);
                loaded.context("loading the nftables ruleset (is nftables installed?)")?;
            }
        }
        Ok(attached)
    }

    /// Takes `contender` off gw-site again.
    fn detach(&mut self, contender: Contender, attached: Attached) -> Result<()> {
        if let Some(link) = attached.noop_link {
            self.programs
                .program_mut(programs::NOOP_DROP)?
                .detach(link)
                .context("detaching the no-op program")?;
        }
        if let Some(link) = attached.noop_pass_link {
            self.programs
                .program_mut(programs::NOOP_PASS)?
                .detach(link)
                .context("detaching the no-op pass program")?;
        }
        drop(attached.emis);
        match contender {
            Contender::XdpFilterDrop => {
                let iface = emis_lab::GW_SITE_IFACE;
                self.lab
                    .ip(Host::Gateway, &["link", "set", "dev", iface, "xdp", "off"])?;
            }
            Contender::NftDrop | Contender::NftPass => {
                self.lab.exec(
                    Host::Gateway,
                    "nft",
                    &["delete", "table", "netdev", NFT_TABLE],
                )?;
            }
            _ => {}
        }
        Ok(())
    }

    /// gw-site's counters and the contender's own count, now; called from a thread in
    /// the gateway's namespace.
    fn counts(&self, contender: Contender, emis: Option<&aya::Ebpf>) -> Result<Counts> {
        let own_before = self.own_count(contender, emis)?;
        let at = Instant::now();
        let (rx, dropped) = rx_counters(emis_lab::GW_SITE_IFACE)?;
        let own_after = self.own_count(contender, emis)?;
        // The contender's count is taken on both sides of the rx read; use the mean.
        let own = match (own_before, own_after) {
            (Some(a), Some(b)) => Some((a + b) / 2),
            _ => None,
        };
        Ok(Counts {
            at,
            rx,
            dropped,
            own,
        })
    }

    fn own_count(&self, contender: Contender, emis: Option<&aya::Ebpf>) -> Result<Option<u64>> {
        match contender {
            Contender::EmisDrop | Contender::EmisPass => {
                let ebpf = emis.ok_or_else(|| anyhow!("emis is not loaded"))?;
                let map = ebpf
                    .map(MAP_STATS)
                    .ok_or_else(|| anyhow!("no {MAP_STATS} map"))?;
                let stats: PerCpuArray<_, Counter> = PerCpuArray::try_from(map)?;
                Ok(Some(Snapshot::read(&stats)?.total_packets()))
            }
            Contender::NftDrop | Contender::NftPass => {
                let out = self.lab.exec(
                    Host::Gateway,
                    "nft",
                    &["-j", "list", "counters", "table", "netdev", NFT_TABLE],
                )?;
                let v: serde_json::Value =
                    serde_json::from_str(&out).context("parsing `nft -j list counters`")?;
                let total = v["nftables"]
                    .as_array()
                    .ok_or_else(|| anyhow!("unexpected `nft -j` output"))?
                    .iter()
                    .filter_map(|o| o["counter"]["packets"].as_u64())
                    .sum();
                Ok(Some(total))
            }
            _ => Ok(None),
        }
    }

    fn measure(
        &self,
        contender: Contender,
        round: usize,
        warmup: Duration,
        duration: Duration,
        emis: Option<&aya::Ebpf>,
    ) -> Result<Sample> {
        let frame = if contender.allowed_traffic() {
            &self.allowed
        } else {
            &self.denied
        };
        let tx = self.programs.program(programs::TX)?;
        let site = self.lab.ns(Host::Site);
        let gw = self.lab.ns(Host::Gateway);
        let stop = AtomicBool::new(false);
        let ifindex = self.site_ifindex;
        let cpu = self.generator_cpu;
        std::thread::scope(|scope| -> Result<Sample> {
            let generator = scope.spawn(|| -> Result<u64> {
                emis_lab::enter_netns(&site)?;
                pin_to_cpu(cpu);
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    live_frames(tx, frame, ifindex, BATCH, PER_CALL)?;
                    sent += PER_CALL as u64;
                }
                Ok(sent)
            });
            let sampled = in_netns_scoped(&gw, || {
                std::thread::sleep(warmup);
                if generator.is_finished() {
                    bail!("the generator stopped during the warm-up");
                }
                let before = self.counts(contender, emis)?;
                std::thread::sleep(duration);
                let after = self.counts(contender, emis)?;
                Ok((
                    after.at - before.at,
                    after.rx - before.rx,
                    after.dropped - before.dropped,
                    before.own.zip(after.own).map(|(a, b)| b - a),
                ))
            })
            .and_then(|sampled| sampled);
            stop.store(true, Ordering::Relaxed);
            let generated = generator
                .join()
                .map_err(|_| anyhow!("the generator thread panicked"))?
                .context("the live-frames generator failed")?;
            let (elapsed, rx, dropped, own) = sampled?;
            if rx == 0 || generated == 0 {
                bail!(
                    "{}: gw-site received no frames (generated {generated}); the generator or \
                     the lab is broken",
                    contender.name()
                );
            }
            Ok(Sample {
                contender,
                round,
                seconds: elapsed.as_secs_f64(),
                rx_packets: rx,
                rx_dropped: dropped,
                pps: rx as f64 / elapsed.as_secs_f64(),
                own_count: own,
            })
        })
    }

    /// Detaches the sink and deletes the lab.
    pub fn finish(mut self) -> Result<()> {
        if let Some(link) = self.sink.take() {
            self.programs
                .program_mut(programs::NOOP_DROP)?
                .detach(link)
                .context("detaching the sink")?;
        }
        drop(self.lab);
        Ok(())
    }
}
