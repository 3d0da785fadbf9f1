//! `emis run`: checks everything that can fail, installs the policy, then serves metrics
//! and reloads (SIGHUP, `emis reload`) until SIGINT or SIGTERM. Exiting leaves the
//! program attached and enforcing (fail-static); only `emis detach` removes it.

use std::sync::{Arc, Mutex};

use emis_policy::policy::{Policy, Role};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use super::{
    config::RunSettings,
    control::{self, Call, Request, Response},
    enforcer::{read_policy, Enforcer},
    error::What as _,
    events, learn, links,
    lock::StateLock,
    notify,
    pins::PinnedMaps,
    state::now,
    top::TopWindow,
    Error,
};
use crate::metrics::{
    self, program::ProgramCost, program::StatsEnabled, EnforcerCollector, EnforcerView,
    MetricsOptions, Reloads,
};

/// Runs the daemon until it is told to stop.
pub fn run(settings: RunSettings, metrics_options: MetricsOptions) -> Result<(), Error> {
    let since = now();
    // Everything that can fail is checked before anything in the kernel changes.
    crate::loader::preflight()?;
    let policy = read_policy(&settings)?;
    log_policy_notes(&policy);
    let _lock = StateLock::acquire(&settings.state_dir)?;
    links::check_interfaces(&settings.interfaces, settings.netns.as_deref())?;
    let metrics_listener = metrics::bind(settings.metrics_addr)?;
    // Held while the daemon runs: the statistics go off when it exits.
    let _bpf_stats = metrics_options
        .bpf_stats
        .then(StatsEnabled::enable)
        .transpose()
        .map_err(metrics::MetricsError::from)?;
    let control_listener = control::bind(&settings.state_dir)?;
    let events_listener = events::bind(&settings.state_dir)?;
    let state_dir = settings.state_dir.clone();
    let remove_sockets = || {
        let _ = std::fs::remove_file(control::socket_path(&state_dir));
        let _ = std::fs::remove_file(crate::events::socket_path(&state_dir));
    };

    let enforcer = match Enforcer::start(settings, policy, since) {
        Ok(enforcer) => enforcer,
        Err(e) => {
            remove_sockets();
            return Err(e);
        }
    };
    for i in &enforcer.installed {
        tracing::info!(
            iface = %i.iface,
            mode = %i.mode,
            netns = enforcer.settings.netns.as_deref().unwrap_or("-"),
            "{}",
            if i.adopted { "adopted the pinned link" } else { "attached" }
        );
    }
    if !enforcer.egress.is_empty() {
        tracing::info!(
            ifaces = %enforcer.egress.join(","),
            "egress program attached (stateful replies behind NAT, flows the router opens)"
        );
    }
    for iface in &enforcer.dropped {
        tracing::info!(%iface, "detached: no longer listed");
    }
    tracing::info!(
        rules = enforcer.policy.rules.len(),
        mode = enforcer.settings.mode.name(),
        replies = enforcer.settings.replies.name(),
        flow_table_size = enforcer.state.flow_table_size,
        spec_sha256 = %enforcer.policy.sha256,
        pin_dir = %enforcer.pins.dir().display(),
        "policy loaded"
    );
    let result = serve(
        enforcer,
        metrics_options,
        metrics_listener,
        control_listener,
        events_listener,
    );
    notify::stopping();
    remove_sockets();
    tracing::info!(
        "exiting; the program stays attached and enforcing the last policy (`emis detach` removes it)"
    );
    result
}

fn log_policy_notes(policy: &Policy) {
    for warning in &policy.warnings {
        tracing::warn!("{warning}");
    }
    if !policy.shadowed.is_empty() {
        tracing::info!(
            "{} rules match only packets an earlier rule matches and are counted under it (`emis check` lists them)",
            policy.shadowed.len()
        );
    }
    let unset: Vec<&str> = Role::ALL
        .iter()
        .filter(|r| policy.role(**r).is_none())
        .map(|r| r.name())
        .collect();
    if !unset.is_empty() {
        tracing::info!(roles = %unset.join(", "), "unset site roles stand for any address outside the enforce-scope networks");
    }
}

fn serve(
    mut enforcer: Enforcer,
    metrics_options: MetricsOptions,
    metrics_listener: std::net::TcpListener,
    control_listener: std::os::unix::net::UnixListener,
    events_listener: std::os::unix::net::UnixListener,
) -> Result<(), Error> {
    let event_fanout = Arc::new(events::FanoutStats::default());
    let top = Arc::new(Mutex::new(TopWindow::default()));
    let ring = events::open_ring(&enforcer.pins)?;
    let dns_ring = learn::open_ring(&enforcer.pins)?;
    let learner = Arc::new(Mutex::new(learn::Learner::new(
        &enforcer.pins,
        &enforcer.policy,
        enforcer.hostnames.clone(),
        enforcer.settings.dns_expiry,
    )));
    if let Ok(mut learner) = learner.lock() {
        learner.forget_earlier();
    }
    learn::set_handoff(&enforcer.pins, true, enforcer.settings.dns_rate)?;
    let interface_names = events::interface_names(
        &enforcer.settings.interfaces,
        enforcer.settings.netns.as_deref(),
    );
    let view = Arc::new(Mutex::new(EnforcerView {
        maps: PinnedMaps::open(&enforcer.pins)?,
        labels: enforcer.labels().clone(),
        spec_sha256: enforcer.policy.sha256.clone(),
        loaded_at: enforcer.state.loaded_at,
        reloads: Reloads::default(),
        event_fanout: event_fanout.clone(),
        interface_slots: metrics::interfaces::slots(&interface_names),
    }));
    if enforcer.settings.kernel_log.is_some() {
        follow_kernel_log(&enforcer, view.clone(), interface_names.clone());
    }
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(EnforcerCollector {
        view: view.clone(),
        cost: metrics_options
            .bpf_stats
            .then(|| ProgramCost::new(enforcer.pins.program())),
    }));
    registry.register_collector(Box::new(crate::metrics::learned::LearnCollector {
        learner: learner.clone(),
    }));
    let registry = Arc::new(registry);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .what(|| "starting the runtime".into())?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(metrics_listener)
            .what(|| "registering the metrics listener".into())?;
        let control_listener = tokio::net::UnixListener::from_std(control_listener)
            .what(|| "registering the control socket".into())?;
        let address = listener
            .local_addr()
            .what(|| "reading the metrics address".into())?;
        tracing::info!("metrics on http://{address}/metrics");
        let (calls_tx, mut calls) = mpsc::channel::<Call>(4);
        tokio::spawn(control::serve(control_listener, calls_tx));
        let events_listener = tokio::net::UnixListener::from_std(events_listener)
            .what(|| "registering the event socket".into())?;
        tokio::spawn(events::serve(
            ring,
            events_listener,
            view.clone(),
            interface_names,
            event_fanout,
            top.clone(),
        ));
        tokio::spawn(learn::serve(dns_ring, learner.clone()));
        let mut term = signal(SignalKind::terminate()).what(|| "watching SIGTERM".into())?;
        let mut int = signal(SignalKind::interrupt()).what(|| "watching SIGINT".into())?;
        let mut hup = signal(SignalKind::hangup()).what(|| "watching SIGHUP".into())?;
        let served = metrics::serve(listener, registry);
        tokio::pin!(served);
        notify::ready(&format!(
            "enforcing on {}",
            enforcer.settings.interfaces.join(", ")
        ));
        loop {
            tokio::select! {
                result = &mut served => return result.map_err(Error::from),
                _ = int.recv() => { tracing::info!("SIGINT: exiting"); return Ok(()) }
                _ = term.recv() => { tracing::info!("SIGTERM: exiting"); return Ok(()) }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    reload(&mut enforcer, &view);
                    relearn(&enforcer, &learner);
                }
                Some((request, reply)) = calls.recv() => {
                    let response = match request {
                        Request::Reload => {
                            let response = reload(&mut enforcer, &view);
                            relearn(&enforcer, &learner);
                            response
                        }
                        Request::Top { limit } => top_report(&top, limit),
                        Request::Names => names_report(&learner),
                    };
                    let _ = reply.send(response);
                }
            }
        }
    });
    // Nobody reads the ring buffers once the daemon is gone.
    if let Err(e) = learn::set_handoff(&enforcer.pins, false, enforcer.settings.dns_rate) {
        tracing::warn!(error = %super::chain(&e), "turning the DNS hand-off off");
    }
    if let Ok(mut view) = view.lock() {
        if let Err(e) = view.maps.set_events(false) {
            tracing::warn!(error = %super::chain(&e), "turning drop events off");
        }
    }
    served
}

/// Writes the program's per-decision trace (`--kernel-log debug`) to the log, named, from
/// a thread of its own. The trace's ring buffer is pinned with the shared maps, so the
/// programs that reloads swap in write to the one it reads.
fn follow_kernel_log(
    enforcer: &Enforcer,
    view: Arc<Mutex<EnforcerView>>,
    interfaces: std::collections::HashMap<u32, String>,
) {
    use std::os::fd::AsRawFd as _;
    let names = move || {
        let labels = view.lock().map(|v| v.labels.clone()).unwrap_or_default();
        (labels, interfaces.clone())
    };
    let forward = crate::kernel_log::Forward {
        names: Arc::new(names),
    };
    let logger = aya::programs::ProgramInfo::from_pin(enforcer.pins.program())
        .map_err(|e| e.to_string())
        .and_then(|info| {
            aya_log::EbpfLogger::init_from_id_with_logger(info.id(), forward)
                .map_err(|e| e.to_string())
        });
    let mut logger = match logger {
        Ok(logger) => logger,
        Err(e) => {
            tracing::error!(error = %e, "reading the kernel log; --kernel-log shows nothing");
            return;
        }
    };
    tracing::info!(
        "kernel log: tracing each allowed and denied packet (drop events go on as usual)"
    );
    std::thread::spawn(move || loop {
        let mut poll = libc::pollfd {
            fd: logger.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        unsafe { libc::poll(&mut poll, 1, 1000) };
        logger.flush();
    });
}

/// After a reload, the learned addresses are written again for the rules now in force,
/// under the DNS settings now in force.
fn relearn(enforcer: &Enforcer, learner: &Mutex<learn::Learner>) {
    if let Ok(mut learner) = learner.lock() {
        learner.set_expiry(enforcer.settings.dns_expiry, std::time::Instant::now());
        learner.set_policy(&enforcer.policy, enforcer.hostnames.clone());
    }
    if let Err(e) = learn::set_handoff(&enforcer.pins, true, enforcer.settings.dns_rate) {
        tracing::warn!(error = %super::chain(&e), "setting the DNS hand-off rate");
    }
}

fn names_report(learner: &Mutex<learn::Learner>) -> Response {
    let report = learner
        .lock()
        .ok()
        .map(|l| l.report(std::time::Instant::now()));
    Response {
        ok: report.is_some(),
        message: "the names learned from DNS".into(),
        report: report.and_then(|r| serde_json::to_value(r).ok()),
    }
}

fn top_report(top: &Mutex<TopWindow>, limit: usize) -> Response {
    let report = top
        .lock()
        .map(|mut top| top.report(std::time::Instant::now(), limit))
        .ok();
    Response {
        ok: report.is_some(),
        message: "the busiest denied addresses of the last minute".into(),
        report: report.and_then(|r| serde_json::to_value(r).ok()),
    }
}

/// Reloads, tells systemd, refreshes what the metrics read, and says how it went.
fn reload(enforcer: &mut Enforcer, view: &Arc<Mutex<EnforcerView>>) -> Response {
    notify::reloading();
    let response = match enforcer.reload() {
        Ok(report) => {
            if let Ok(mut view) = view.lock() {
                if let Err(e) = view.maps.reopen_config(&enforcer.pins) {
                    tracing::error!(error = %super::chain(&e), "reopening the config map after a reload");
                }
                view.labels = enforcer.labels().clone();
                view.spec_sha256 = enforcer.policy.sha256.clone();
                view.loaded_at = enforcer.state.loaded_at;
                view.reloads.record(now(), true);
            }
            let message = report.summary();
            tracing::info!("{message}");
            Response {
                ok: true,
                message,
                report: serde_json::to_value(&report).ok(),
            }
        }
        Err(e) => {
            let message = format!(
                "reload refused, the policy in force is unchanged: {}",
                super::chain(&e)
            );
            tracing::error!("{message}");
            if let Ok(mut view) = view.lock() {
                view.reloads.record(now(), false);
            }
            Response {
                ok: false,
                message,
                report: None,
            }
        }
    };
    notify::ready("enforcing");
    response
}
