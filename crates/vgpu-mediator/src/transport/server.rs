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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::io::{IoSliceMut, Write};
    use std::mem::MaybeUninit;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::mpsc::{channel, RecvTimeoutError};
    use std::thread::JoinHandle;
    use vgpu_abi::ivshmem::{CLIENT_PEER_ID, MEDIATOR_PEER_ID, PROTOCOL_VERSION};

    const TIMEOUT: Duration = Duration::from_secs(10);
    /// How long "nothing happens" is watched for.
    const QUIET: Duration = Duration::from_millis(100);

    fn config(dir: &Path, names: &[&str]) -> Config {
        let mut t = String::from("[mediator]\nbackend = \"cpu\"\n");
        for (i, n) in names.iter().enumerate() {
            t += &format!(
                "[[vm]]\nname = \"{n}\"\nsocket = \"{}\"\nvm_id = {}\nshm_size = 131072\n",
                dir.join(format!("{n}.sock")).display(),
                i + 1
            );
        }
        Config::from_toml(&t).unwrap()
    }

    fn new_eventfd() -> OwnedFd {
        eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap()
    }

    /// A server thread over the VMs of `config`, stopped when dropped.
    struct Running {
        events: Receiver<Event>,
        wake: Arc<OwnedFd>,
        stop: Arc<OwnedFd>,
        thread: Option<JoinHandle<()>>,
    }

    impl Running {
        fn start(cfg: &Config) -> Self {
            let (tx, rx) = channel();
            let wake = Arc::new(new_eventfd());
            let server = Server::bind_all(&cfg.vms, tx, wake.clone()).unwrap();
            let stop = server.stop_handle();
            Self {
                events: rx,
                wake,
                stop,
                thread: Some(std::thread::spawn(move || server.run())),
            }
        }

        fn next(&self) -> Event {
            self.events.recv_timeout(TIMEOUT).expect("an event")
        }

        fn quiet(&self) -> bool {
            matches!(
                self.events.recv_timeout(QUIET),
                Err(RecvTimeoutError::Timeout)
            )
        }

        /// Events signalled on the wake eventfd since the last look.
        fn wakes(&self) -> u64 {
            let mut b = [0u8; 8];
            rustix::io::read(&*self.wake, &mut b).map_or(0, |_| u64::from_le_bytes(b))
        }

        fn stop(&mut self) {
            let _ = rustix::io::write(&*self.stop, &1u64.to_le_bytes());
            if let Some(t) = self.thread.take() {
                t.join().expect("transport thread panicked");
            }
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop();
        }
    }

    /// The set-up messages a client receives: `(value, fd)` each.
    fn read_setup(c: &UnixStream) -> Vec<(i64, Option<OwnedFd>)> {
        (0..5)
            .map(|_| {
                let mut buf = [0u8; 8];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut anc = RecvAncillaryBuffer::new(&mut space);
                let r = recvmsg(
                    c,
                    &mut [IoSliceMut::new(&mut buf)],
                    &mut anc,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .unwrap();
                assert_eq!(r.bytes, 8);
                let fd = anc.drain().find_map(|m| match m {
                    RecvAncillaryMessage::ScmRights(mut it) => it.next(),
                    _ => None,
                });
                (i64::from_le_bytes(buf), fd)
            })
            .collect()
    }

    /// Reads from `c` until EOF (with a timeout); returns the bytes before it.
    fn read_to_eof(c: &mut UnixStream) -> Vec<u8> {
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut all = Vec::new();
        c.read_to_end(&mut all).expect("EOF");
        all
    }

    #[test]
    fn a_client_gets_its_device_once_the_executor_is_ready_and_leaving_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &["a", "b"]);
        let srv = Running::start(&cfg);
        let mode = std::fs::metadata(&cfg.vms[1].socket)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "only vgpud's user may connect by default"
        );

        let client = UnixStream::connect(&cfg.vms[1].socket).unwrap();
        let Event::Connected(setup) = srv.next() else {
            panic!("not a connect")
        };
        assert_eq!(setup.vm, 1);
        assert_eq!(setup.region.len(), 131072);
        // The wake-up follows the event (written just after it is sent).
        let t0 = std::time::Instant::now();
        while srv.wakes() == 0 {
            assert!(t0.elapsed() < TIMEOUT, "no wake-up for the event");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Until the executor says the device is initialised, the client is told nothing.
        client.set_nonblocking(true).unwrap();
        let mut b = [0u8; 8];
        assert!((&client).read(&mut b).is_err());
        client.set_nonblocking(false).unwrap();
        setup.ready.send(()).unwrap();

        let msgs = read_setup(&client);
        let values: Vec<i64> = msgs.iter().map(|m| m.0).collect();
        assert_eq!(
            values,
            [
                PROTOCOL_VERSION,
                CLIENT_PEER_ID as i64,
                -1,
                MEDIATOR_PEER_ID as i64,
                CLIENT_PEER_ID as i64
            ]
        );
        let [shm, doorbell, irq] = [2, 3, 4].map(|i| msgs[i].1.as_ref().expect("an fd"));
        // The memory, the doorbell and the interrupt the executor holds are the client's.
        rustix::io::pwrite(shm, b"hi", 100).unwrap();
        let mut got = [0u8; 2];
        setup.region.view().read_bytes(100, &mut got);
        assert_eq!(&got, b"hi");
        rustix::io::write(doorbell, &1u64.to_le_bytes()).unwrap();
        rustix::io::read(&setup.doorbell, &mut b).unwrap();
        rustix::io::write(&setup.irq, &1u64.to_le_bytes()).unwrap();
        rustix::io::read(irq, &mut b).unwrap();

        // One client per VM: a second is closed on, with no set-up and no event.
        let mut second = UnixStream::connect(&cfg.vms[1].socket).unwrap();
        assert!(read_to_eof(&mut second).is_empty());
        assert!(srv.quiet());

        drop(client);
        assert!(matches!(srv.next(), Event::Disconnected(1)));
        // The socket serves the next client.
        let _again = UnixStream::connect(&cfg.vms[1].socket).unwrap();
        let Event::Connected(s) = srv.next() else {
            panic!("not a connect")
        };
        assert_eq!(s.vm, 1);
        s.ready.send(()).unwrap();
    }

    #[test]
    fn a_client_that_sends_data_is_disconnected() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &["a"]);
        let srv = Running::start(&cfg);
        let mut client = UnixStream::connect(&cfg.vms[0].socket).unwrap();
        let Event::Connected(setup) = srv.next() else {
            panic!("not a connect")
        };
        setup.ready.send(()).unwrap();
        read_setup(&client);
        client.write_all(b"hello").unwrap();
        assert!(matches!(srv.next(), Event::Disconnected(0)));
        assert!(read_to_eof(&mut client).is_empty());
    }

    #[test]
    fn an_executor_that_never_answers_leaves_no_client_attached() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &["a"]);
        let srv = Running::start(&cfg);
        let mut client = UnixStream::connect(&cfg.vms[0].socket).unwrap();
        let Event::Connected(setup) = srv.next() else {
            panic!("not a connect")
        };
        // The executor is gone before acknowledging: the set-up fails, the client is closed
        // on and the executor told to free what it may hold.
        drop(setup);
        assert!(read_to_eof(&mut client).is_empty());
        assert!(matches!(srv.next(), Event::Disconnected(0)));
    }

    #[test]
    fn stopping_removes_the_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &["a", "b"]);
        let mut srv = Running::start(&cfg);
        assert!(cfg.vms.iter().all(|v| v.socket.exists()));
        srv.stop();
        assert!(cfg.vms.iter().all(|v| !v.socket.exists()));
    }

    #[test]
    fn bind_all_replaces_only_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = channel();
        let wake = Arc::new(new_eventfd());
        let bind = |cfg: &Config| Server::bind_all(&cfg.vms, tx.clone(), wake.clone());

        let mut missing = config(dir.path(), &["a"]);
        missing.vms[0].socket = dir.path().join("no-such-dir/a.sock");
        assert!(matches!(
            bind(&missing),
            Err(TransportError::MissingDir { .. })
        ));

        // A file that is not a socket is never replaced; what was bound before is removed.
        let cfg = config(dir.path(), &["a", "b"]);
        std::fs::write(&cfg.vms[1].socket, b"precious").unwrap();
        assert!(matches!(bind(&cfg), Err(TransportError::NotASocket { .. })));
        assert_eq!(std::fs::read(&cfg.vms[1].socket).unwrap(), b"precious");
        assert!(!cfg.vms[0].socket.exists(), "a's socket was not cleaned up");
        std::fs::remove_file(&cfg.vms[1].socket).unwrap();

        // A socket another server listens on is in use; one nobody listens on is stale.
        let live = bind(&config(dir.path(), &["a"])).unwrap();
        assert!(matches!(bind(&cfg), Err(TransportError::InUse { .. })));
        drop(live);
        assert!(cfg.vms[0].socket.exists(), "left behind, as by a crash");
        let _server = bind(&cfg).expect("a stale socket is replaced");
        assert!(UnixStream::connect(&cfg.vms[0].socket).is_ok());
    }
}
