//! The listening side: binds every VM's socket at start-up, accepts one client per VM, sets it
//! up, and notices when it leaves.

use super::{send_setup, SharedRegion, TransportError};
use crate::access::{bind_listener, SocketPerms};
use crate::config::VmConfig;
use crate::throttle::Throttle;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::fd::{AsFd, OwnedFd};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a new connection waits for the VM's attached client to go. A client that closes
/// its socket and connects again at once can find its old end still open: a process that forks
/// (any thread of it) holds a copy of every descriptor until the child execs, so the close is
/// not the last one and the hang-up comes a little later.
pub const REATTACH_GRACE: Duration = Duration::from_secs(1);

/// What a new connection brings to the executor.
#[derive(Debug)]
pub struct Setup {
    /// Index of the VM in the config.
    pub vm: usize,
    /// The shared memory.
    pub region: Arc<SharedRegion>,
    /// vgpud reads this: the VM rang its doorbell.
    pub doorbell: OwnedFd,
    /// vgpud writes this to interrupt the VM.
    pub irq: OwnedFd,
    /// The executor acknowledges once the device is initialised (registers written, context
    /// created), so the client never sees an uninitialised BAR.
    pub ready: SyncSender<()>,
}

/// Transport → executor.
#[derive(Debug)]
pub enum Event {
    /// A client connected.
    Connected(Setup),
    /// The client of VM `vm` left; free everything.
    Disconnected(usize),
}

struct Vm {
    name: String,
    path: PathBuf,
    shm_size: u64,
    listener: UnixListener,
    client: Option<UnixStream>,
    /// A connection that came while `client` was still attached, and when: it is set up if the
    /// old client's end closes within [`REATTACH_GRACE`], refused otherwise.
    waiting: Option<(UnixStream, Instant)>,
    /// Refused connections, for the log.
    refusals: Throttle,
    /// Clients that sent data, for the log.
    chatty: Throttle,
}

/// The transport thread's state.
pub struct Server {
    vms: Vec<Vm>,
    events: Sender<Event>,
    wake: Arc<OwnedFd>,
    stop: Arc<OwnedFd>,
}

fn bind(vm: &VmConfig) -> Result<UnixListener, TransportError> {
    let path = &vm.socket;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(TransportError::MissingDir {
            vm: vm.name.clone(),
            dir: dir.to_owned(),
        });
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(TransportError::NotASocket {
                vm: vm.name.clone(),
                path: path.clone(),
            });
        }
        if UnixStream::connect(path).is_ok() {
            return Err(TransportError::InUse {
                vm: vm.name.clone(),
                path: path.clone(),
            });
        }
        // A stale socket left by a server that died: nobody listens, replace it.
        std::fs::remove_file(path).map_err(|e| {
            TransportError::io(format!("removing stale socket {}", path.display()), e)
        })?;
    }
    // The socket is the VM's identity: only the configured owner / group may connect
    // (default mode 0600); until those are applied it is vgpud's own user's alone (umask 077).
    let l = SocketPerms::for_vm(vm).and_then(|p| bind_listener(path, &p))?;
    l.set_nonblocking(true)
        .map_err(|e| TransportError::io("set_nonblocking", e))?;
    Ok(l)
}

fn drain(fd: &OwnedFd) {
    let mut b = [0u8; 8];
    let _ = rustix::io::read(fd, &mut b);
}

impl Server {
    /// Binds every VM's socket. Fails (and removes what it bound) on the first error.
    pub fn bind_all(
        vms: &[VmConfig],
        events: Sender<Event>,
        wake: Arc<OwnedFd>,
    ) -> Result<Self, TransportError> {
        let mut bound: Vec<Vm> = Vec::new();
        for vm in vms {
            match bind(vm) {
                Ok(listener) => bound.push(Vm {
                    name: vm.name.clone(),
                    path: vm.socket.clone(),
                    shm_size: vm.shm_size.0,
                    listener,
                    client: None,
                    waiting: None,
                    refusals: Throttle::default(),
                    chatty: Throttle::default(),
                }),
                Err(e) => {
                    for b in &bound {
                        let _ = std::fs::remove_file(&b.path);
                    }
                    return Err(e);
                }
            }
        }
        let stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| TransportError::io("eventfd", e))?;
        Ok(Self {
            vms: bound,
            events,
            wake,
            stop: Arc::new(stop),
        })
    }

    /// An eventfd that stops [`Server::run`] when written.
    pub fn stop_handle(&self) -> Arc<OwnedFd> {
        self.stop.clone()
    }

    fn notify(&self, ev: Event) -> bool {
        if self.events.send(ev).is_err() {
            return false;
        }
        let _ = rustix::io::write(&*self.wake, &1u64.to_le_bytes());
        true
    }

    /// Serves until stopped. Removes the socket files on the way out.
    pub fn run(mut self) {
        loop {
            // Index map: [stop, listeners..., clients...]
            let mut map: Vec<(bool, usize)> = Vec::new();
            let mut fds: Vec<PollFd<'_>> = vec![PollFd::new(&*self.stop, PollFlags::IN)];
            for (i, vm) in self.vms.iter().enumerate() {
                fds.push(PollFd::new(&vm.listener, PollFlags::IN));
                map.push((false, i));
            }
            for (i, vm) in self.vms.iter().enumerate() {
                if let Some(c) = &vm.client {
                    fds.push(PollFd::new(c, PollFlags::IN));
                    map.push((true, i));
                }
            }
            // Wake for the first waiting connection whose grace runs out.
            let deadline = self
                .vms
                .iter()
                .filter_map(|vm| vm.waiting.as_ref().map(|(_, t)| *t + REATTACH_GRACE))
                .min();
            let timeout = deadline.map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                rustix::time::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: left.subsec_nanos() as i64,
                }
            });
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    warn!("transport: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            let stop = !fds[0].revents().is_empty();
            let ready: Vec<(bool, usize)> = fds[1..]
                .iter()
                .zip(&map)
                .filter(|(f, _)| !f.revents().is_empty())
                .map(|(_, m)| *m)
                .collect();
            drop(fds);
            if stop {
                drain(&self.stop);
                break;
            }
            for (is_client, i) in ready {
                if is_client {
                    self.client_readable(i);
                } else {
                    self.accept(i);
                }
            }
            for i in 0..self.vms.len() {
                let expired = self.vms[i]
                    .waiting
                    .as_ref()
                    .is_some_and(|(_, t)| t.elapsed() >= REATTACH_GRACE);
                if expired {
                    self.vms[i].waiting = None;
                    self.refused(i);
                }
            }
        }
        // Clients still attached are not reported as gone: the executors, stopping next, tell
        // each guest that its device stopped (which a detach would no longer reach) and free
        // everything themselves.
        for vm in &mut self.vms {
            vm.client = None;
            vm.waiting = None;
            let _ = std::fs::remove_file(&vm.path);
        }
        info!("transport: stopped");
    }

    /// Logs a refused second client, throttled (a client reconnecting in a loop must not
    /// flood the log).
    fn refused(&mut self, i: usize) {
        let vm = &mut self.vms[i];
        if let Some(n) = vm.refusals.hit() {
            warn!(vm = %vm.name, refused = n,
                  "a second client connected while one is attached; refusing it (one QEMU per VM)");
        }
    }

    fn client_readable(&mut self, i: usize) {
        let vm = &mut self.vms[i];
        let Some(c) = vm.client.as_mut() else { return };
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) => info!(vm = %vm.name, "client disconnected"),
            Ok(n) => {
                if let Some(times) = vm.chatty.hit() {
                    warn!(vm = %vm.name, bytes = n, times,
                          "client sent data (the ivshmem protocol has none); disconnecting it");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                return
            }
            Err(e) => info!(vm = %vm.name, "client connection error: {e}; treating as disconnect"),
        }
        vm.client = None;
        self.notify(Event::Disconnected(i));
        if let Some((stream, _)) = self.vms[i].waiting.take() {
            self.attach(i, stream);
        }
    }

    fn accept(&mut self, i: usize) {
        let (stream, _) = match self.vms[i].listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                warn!(vm = %self.vms[i].name, "accept failed: {e}");
                return;
            }
        };
        // The old client may have closed just before this one connected, its EOF not yet
        // handled (both became ready in the same poll): look before refusing.
        if self.vms[i].client.is_some() {
            self.client_readable(i);
        }
        if self.vms[i].client.is_some() {
            // Still attached: the new connection waits a little for it to go (see
            // REATTACH_GRACE); one waiting connection per VM, any more are refused now.
            if self.vms[i].waiting.is_some() {
                self.refused(i);
            } else {
                self.vms[i].waiting = Some((stream, Instant::now()));
            }
            return;
        }
        self.attach(i, stream);
    }

    /// Sets `stream` up as the VM's client.
    fn attach(&mut self, i: usize, stream: UnixStream) {
        match self.setup(i, &stream) {
            Ok(()) => {
                let _ = stream.set_nonblocking(true);
                info!(vm = %self.vms[i].name, "client connected and set up");
                self.vms[i].client = Some(stream);
            }
            Err(e) => {
                warn!(vm = %self.vms[i].name, "setting up client failed: {e}");
                // The executor may already hold the channel: tell it to free it.
                self.notify(Event::Disconnected(i));
            }
        }
    }

    fn setup(&mut self, i: usize, stream: &UnixStream) -> Result<(), TransportError> {
        let vm = &self.vms[i];
        let region = SharedRegion::create(&vm.name, vm.shm_size).map_err(|e| {
            TransportError::io(
                format!("creating {} bytes of shared memory", vm.shm_size),
                e,
            )
        })?;
        let region = Arc::new(region);
        let flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
        let doorbell = eventfd(0, flags).map_err(|e| TransportError::io("eventfd", e))?;
        let irq = eventfd(0, flags).map_err(|e| TransportError::io("eventfd", e))?;
        let doorbell_client = doorbell
            .try_clone()
            .map_err(|e| TransportError::io("dup eventfd", e))?;
        let irq_client = irq
            .try_clone()
            .map_err(|e| TransportError::io("dup eventfd", e))?;
        let (ready_tx, ready_rx): (_, Receiver<()>) = sync_channel(1);
        let sent = self.notify(Event::Connected(Setup {
            vm: i,
            region: region.clone(),
            doorbell,
            irq,
            ready: ready_tx,
        }));
        if !sent {
            return Err(TransportError::io(
                "executor",
                std::io::Error::other("executor is gone"),
            ));
        }
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| {
                TransportError::io(
                    "waiting for the executor",
                    std::io::Error::from(ErrorKind::TimedOut),
                )
            })?;
        send_setup(
            stream.as_fd(),
            region.fd(),
            doorbell_client.as_fd(),
            irq_client.as_fd(),
        )
        .map_err(|e| TransportError::io("sending ivshmem set-up", e))?;
        Ok(())
    }
}
