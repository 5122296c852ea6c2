//! Starting and ending worker processes: exactly the fds a worker needs on fixed numbers (every
//! other fd of vgpud is close-on-exec, so a worker never holds another VM's memory), death with
//! vgpud (`PR_SET_PDEATHSIG`), and a reaper that collects killed workers off the executor's
//! thread.

use super::proto::{FD_COUNT, FD_REGION};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use tracing::{debug, warn};

/// Lowest fd number of the parent-side duplicates (above every number a worker receives).
const HIGH_FD: RawFd = 16;

/// Spawns `exe worker_args…` with `fds[i]` as fd `FD_REGION + i` in the child. stdin is
/// `/dev/null`; stdout and stderr are vgpud's (the worker logs there).
pub(super) fn spawn(
    exe: &Path,
    worker_args: &[String],
    fds: [BorrowedFd<'_>; FD_COUNT],
) -> std::io::Result<Child> {
    // Duplicates above every target number: in the child, dup2 then never overwrites a source it
    // still needs, and never meets `old == new` (which would leave close-on-exec set).
    let mut high: Vec<OwnedFd> = Vec::with_capacity(FD_COUNT);
    for fd in fds {
        high.push(rustix::io::fcntl_dupfd_cloexec(fd, HIGH_FD)?);
    }
    let mut raw = [0 as RawFd; FD_COUNT];
    for (r, h) in raw.iter_mut().zip(&high) {
        *r = h.as_raw_fd();
    }
    let parent = rustix::process::getpid();
    // The CPUs of vgpud's main thread: a worker must not inherit the pinning of the executor
    // thread that starts it (`executor_cpus`), or every worker would share the executor's CPU.
    let cpus = rustix::thread::sched_getaffinity(Some(parent))?;
    let mut cmd = Command::new(exe);
    cmd.arg0("vgpud-worker")
        .arg(super::proto::WORKER_FLAG)
        .args(worker_args)
        .stdin(Stdio::null());
    let child_setup = move || -> std::io::Result<()> {
        for (i, &fd) in raw.iter().enumerate() {
            // SAFETY: plain dup2 on fds this process holds; async-signal-safe, no allocation.
            if unsafe { libc::dup2(fd, FD_REGION + i as RawFd) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // Whatever else this process holds that is not close-on-exec (fds vgpud inherited from
        // whoever started it) must not reach the worker either.
        cloexec_above(FD_REGION + FD_COUNT as RawFd);
        rustix::thread::sched_setaffinity(None, &cpus)?;
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
        // vgpud may have died between fork and prctl: then no signal would ever come.
        if rustix::process::getppid() != Some(parent) {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: `child_setup` runs in the forked child before exec and only makes
    // async-signal-safe system calls (dup2, close_range, sched_setaffinity, prctl, getppid) on
    // values captured by copy; it allocates nothing and touches no lock.
    unsafe { cmd.pre_exec(child_setup) };
    let child = cmd.spawn();
    drop(high);
    child
}

/// Marks every fd from `first` up close-on-exec. Async-signal-safe (system calls only).
fn cloexec_above(first: RawFd) {
    // SAFETY: close_range only changes fd flags; no memory is involved.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        // Kernels before 5.11: one fcntl per possible fd.
        for fd in first..4096 {
            // SAFETY: fcntl on an fd number that may or may not be open; no memory involved.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// Reaps killed workers on its own thread (a killed process may take a while to exit while
/// the driver tears its GPU context down; the executor never waits for that).
#[derive(Debug)]
pub(super) struct Reaper {
    tx: Option<mpsc::Sender<Child>>,
}

impl Reaper {
    /// A reaper whose thread starts with the first worker it is given.
    pub(super) fn new() -> Self {
        Self { tx: None }
    }

    /// SIGKILLs `child` (if still running) and has it reaped.
    pub(super) fn kill(&mut self, mut child: Child) {
        let pid = child.id();
        if let Err(e) = child.kill() {
            debug!(pid, "killing worker: {e}");
        }
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if self.tx.is_none() {
            let (tx, rx) = mpsc::channel::<Child>();
            let spawned = std::thread::Builder::new()
                .name("vgpud-reaper".into())
                .spawn(move || {
                    for mut c in rx {
                        let pid = c.id();
                        match c.wait() {
                            Ok(st) => debug!(pid, "worker reaped: {st}"),
                            Err(e) => warn!(pid, "reaping worker: {e}"),
                        }
                    }
                });
            match spawned {
                Ok(_) => self.tx = Some(tx),
                Err(e) => warn!("reaper thread: {e}"),
            }
        }
        match &self.tx {
            Some(tx) => {
                if let Err(mpsc::SendError(mut c)) = tx.send(child) {
                    let _ = c.try_wait();
                }
            }
            // No thread: the zombie stays until the next try_wait or vgpud's exit.
            None => warn!(pid, "worker left unreaped"),
        }
    }
}
