//! The event fan-out: the daemon is the one reader of the kernel's event ring buffer
//! (`EMIS_EVENTS`, pinned beside the counters so it outlives reloads and restarts) and
//! hands every event to each client of `<state dir>/events.sock` as a JSON line. A
//! client that falls behind loses events (counted) rather than slowing the daemon.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use aya::maps::{MapData, RingBuf};
use emis_common::{Event, EVENT_SIZE, MAP_EVENTS};
use tokio::{io::unix::AsyncFd, io::AsyncWriteExt as _, sync::broadcast};

use super::{error::What as _, pins::Pins, top::TopWindow, Error};
use crate::{
    events::{socket_path, EventLine},
    metrics::EnforcerView,
};

/// Events a client may be behind before it loses the oldest.
const CLIENT_BACKLOG: usize = 4096;

/// Binds the event socket; the caller holds the state lock, so a socket file there is stale.
pub fn bind(state_dir: &Path) -> Result<std::os::unix::net::UnixListener, Error> {
    super::control::bind_private_socket(&socket_path(state_dir), "the event socket")
}

/// Opens the pinned ring buffer.
pub fn open_ring(pins: &Pins) -> Result<RingBuf<MapData>, Error> {
    RingBuf::try_from(pins.open_map(MAP_EVENTS)?)
        .what(|| format!("pinned map {MAP_EVENTS} has an unexpected type"))
}

/// The names of the attached interfaces by ifindex, read inside `netns` when given.
pub fn interface_names(interfaces: &[String], netns: Option<&str>) -> HashMap<u32, String> {
    let lookup = |interfaces: Vec<String>| {
        interfaces
            .into_iter()
            .filter_map(|name| {
                let c = std::ffi::CString::new(name.clone()).ok()?;
                let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
                (index != 0).then_some((index, name))
            })
            .collect::<HashMap<u32, String>>()
    };
    let interfaces = interfaces.to_vec();
    match netns {
        None => lookup(interfaces),
        Some(ns) => {
            let ns = ns.to_string();
            // A thread of its own: joining a namespace is for the rest of the thread's life.
            std::thread::spawn(move || match crate::loader::join_netns(&ns) {
                Ok(()) => lookup(interfaces),
                Err(e) => {
                    tracing::warn!(error = %e, "events will name interfaces by index");
                    HashMap::new()
                }
            })
            .join()
            .unwrap_or_default()
        }
    }
}

/// Counters of the fan-out the metrics export.
#[derive(Debug, Default)]
pub struct FanoutStats {
    /// Events lost by clients that fell behind, summed over clients.
    pub client_dropped: AtomicU64,
    pub clients: AtomicU64,
}

/// Reads the ring buffer and accepts clients until the runtime stops.
pub async fn serve(
    ring: RingBuf<MapData>,
    listener: tokio::net::UnixListener,
    view: Arc<Mutex<EnforcerView>>,
    names: HashMap<u32, String>,
    stats: Arc<FanoutStats>,
    top: Arc<Mutex<TopWindow>>,
) {
    let (tx, _) = broadcast::channel::<Arc<String>>(CLIENT_BACKLOG);
    let accept_tx = tx.clone();
    let accept_stats = stats.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(client(stream, accept_tx.subscribe(), accept_stats.clone()));
        }
    });
    // Safety: the RingBuf owns its map fd and returns the same one until it is dropped.
    let mut ring = match unsafe { AsyncFd::register(ring) } {
        Ok(ring) => ring,
        Err(e) => {
            tracing::error!(error = %e, "watching the event ring buffer: no events for clients");
            return;
        }
    };
    loop {
        let Ok(mut guard) = ring.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < EVENT_SIZE {
                continue;
            }
            // The kernel wrote an Event; the ring buffer gives no alignment promise.
            let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            drop(item);
            let line = describe(&event, &view, &names);
            if let Ok(mut top) = top.lock() {
                top.record(std::time::Instant::now(), &line);
            }
            if tx.receiver_count() == 0 {
                continue;
            }
            if let Ok(text) = serde_json::to_string(&line) {
                let _ = tx.send(Arc::new(text));
            }
        }
        guard.clear_ready();
    }
}

fn describe(event: &Event, view: &Mutex<EnforcerView>, names: &HashMap<u32, String>) -> EventLine {
    let iface = names
        .get(&event.ifindex)
        .cloned()
        .unwrap_or_else(|| format!("if{}", event.ifindex));
    let time = wall_clock_ns(event.time_ns);
    match view.lock() {
        Ok(view) => EventLine::from_event(event, time, iface, &view.labels),
        Err(poisoned) => EventLine::from_event(event, time, iface, &poisoned.get_ref().labels),
    }
}

/// A CLOCK_MONOTONIC time (what bpf_ktime_get_ns reads) on the wall clock.
fn wall_clock_ns(monotonic_ns: u64) -> i128 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono_now = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
    let wall_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    wall_now - (mono_now - monotonic_ns as i128)
}

async fn client(
    mut stream: tokio::net::UnixStream,
    mut events: broadcast::Receiver<Arc<String>>,
    stats: Arc<FanoutStats>,
) {
    stats.clients.fetch_add(1, Ordering::Relaxed);
    loop {
        match events.recv().await {
            Ok(line) => {
                let mut bytes = Vec::with_capacity(line.len() + 1);
                bytes.extend_from_slice(line.as_bytes());
                bytes.push(b'\n');
                if stream.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                stats.client_dropped.fetch_add(lost, Ordering::Relaxed);
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    stats.clients.fetch_sub(1, Ordering::Relaxed);
}
