//! Who may reach vgpud's sockets: ownership and mode of the socket files (VM sockets and the
//! admin socket) and the peer-credential check of the admin socket.
//!
//! * [`SocketPerms`] resolves a config's `*_owner` / `*_group` / `*_mode` keys (names or ids)
//!   once, at start-up, so that a typo fails before anything is bound.
//! * [`bind_listener`] binds a listening socket that has its configured owner, group and mode
//!   from the moment anyone can connect to it; [`apply`] sets them on a socket file bound by
//!   someone else.
//! * [`peer_allowed`] decides, from `SO_PEERCRED` (and `SO_PEERGROUPS`), whether a connected
//!   peer may use the admin socket.

use crate::config::{FileMode, MediatorConfig, Principal, VmConfig};
use std::ffi::{c_char, c_int, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The mode a socket file gets when the config names none: only its owner may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Longest path a UNIX socket address holds (`sun_path` is 108 bytes with its NUL).
#[cfg(test)]
const MAX_SOCKET_PATH: usize = 107;

/// Errors of this module; each names the config key or the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A user name that the host does not know.
    #[error("{key}: no user named {name:?} on this host")]
    UnknownUser {
        /// Config key (e.g. `mediator.admin_socket_owner`).
        key: String,
        /// The name looked up.
        name: String,
    },
    /// A group name that the host does not know.
    #[error("{key}: no group named {name:?} on this host")]
    UnknownGroup {
        /// Config key (e.g. `mediator.admin_group`).
        key: String,
        /// The name looked up.
        name: String,
    },
    /// The user or group database could not be read.
    #[error("{key}: looking up {name:?}: {source}")]
    Lookup {
        /// Config key.
        key: String,
        /// The name looked up.
        name: String,
        /// Cause.
        source: io::Error,
    },
    /// A file operation on a socket path failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done (`"binding"`, `"chown (socket_owner/socket_group) of"`, …).
        what: String,
        /// The path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Something other than a socket is where a socket should be bound.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// `SO_PEERCRED` could not be read.
    #[error("reading the peer's credentials: {0}")]
    PeerCred(io::Error),
    /// The peer is not allowed; the message is what the peer is told.
    #[error("permission denied: {reason}")]
    Denied {
        /// The peer's credentials.
        peer: PeerCred,
        /// Why (names the uid and what would have been allowed).
        reason: String,
    },
}

impl AccessError {
    fn io(what: impl Into<String>, path: &Path, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            path: path.to_owned(),
            source,
        }
    }
}

/// A socket file's owner, group (ids; `None`: leave as created) and mode, resolved from the
/// config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketPerms {
    /// Owner uid (`None`: vgpud's own).
    pub uid: Option<u32>,
    /// Group gid (`None`: vgpud's own).
    pub gid: Option<u32>,
    /// Permission bits (default [`DEFAULT_SOCKET_MODE`]).
    pub mode: u32,
    /// Config key prefix for error messages (`"mediator.admin_socket"`, `vm "a": socket`).
    key: &'static str,
}

impl Default for SocketPerms {
    fn default() -> Self {
        Self {
            uid: None,
            gid: None,
            mode: DEFAULT_SOCKET_MODE,
            key: "socket",
        }
    }
}

impl SocketPerms {
    /// Resolves names to ids. `key` prefixes the key names in errors: `"socket"` gives
    /// `socket_owner` / `socket_group`, `"mediator.admin_socket"` gives
    /// `mediator.admin_socket_owner` / `…_group`.
    pub fn resolve(
        owner: Option<&Principal>,
        group: Option<&Principal>,
        mode: Option<FileMode>,
        key: &'static str,
    ) -> Result<Self, AccessError> {
        Ok(Self {
            uid: owner
                .map(|p| resolve_user(p, &format!("{key}_owner")))
                .transpose()?,
            gid: group
                .map(|p| resolve_group(p, &format!("{key}_group")))
                .transpose()?,
            mode: mode.map_or(DEFAULT_SOCKET_MODE, |m| m.0 & 0o777),
            key,
        })
    }

    /// A `[[vm]]`'s `socket_owner` / `socket_group` / `socket_mode`.
    pub fn for_vm(vm: &VmConfig) -> Result<Self, AccessError> {
        Self::resolve(
            vm.socket_owner.as_ref(),
            vm.socket_group.as_ref(),
            vm.socket_mode,
            "socket",
        )
        .map_err(|e| name_vm(e, &vm.name))
    }

    /// `[mediator] admin_socket_owner` / `admin_socket_group` / `admin_socket_mode`.
    pub fn for_admin(m: &MediatorConfig) -> Result<Self, AccessError> {
        Self::resolve(
            m.admin_socket_owner.as_ref(),
            m.admin_socket_group.as_ref(),
            m.admin_socket_mode,
            "mediator.admin_socket",
        )
    }

    /// Sets the owner, group and mode of the socket file at `path`.
    ///
    /// Order: first the mode restricted to its owner bits, then the ownership, then the full
    /// mode. Whatever the file's mode was (the umask's), from the first step on it is never
    /// more open than configured: the owner bits are granted to the configured owner only
    /// after the chown, the group and other bits only at the end.
    pub fn apply_to(&self, path: &Path) -> Result<(), AccessError> {
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| AccessError::io("stat of socket", path, e))?;
        // `chmod` follows symlinks: only touch what is really a socket (the directory is
        // vgpud's own; this guards against mistakes, not against a hostile directory).
        if !meta.file_type().is_socket() {
            return Err(AccessError::NotASocket(path.to_owned()));
        }
        let chmod = |mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
                AccessError::io(format!("chmod {mode:04o} ({}_mode) of", self.key), path, e)
            })
        };
        chmod(self.mode & 0o700)?;
        if self.uid.is_some() || self.gid.is_some() {
            std::os::unix::fs::lchown(path, self.uid, self.gid).map_err(|e| {
                AccessError::io(
                    format!(
                        "chown to uid {:?} gid {:?} ({k}_owner/{k}_group) of",
                        self.uid,
                        self.gid,
                        k = self.key
                    ),
                    path,
                    e,
                )
            })?;
        }
        chmod(self.mode)
    }
}

fn name_vm(e: AccessError, vm: &str) -> AccessError {
    match e {
        AccessError::UnknownUser { key, name } => AccessError::UnknownUser {
            key: format!("vm {vm:?}: {key}"),
            name,
        },
        AccessError::UnknownGroup { key, name } => AccessError::UnknownGroup {
            key: format!("vm {vm:?}: {key}"),
            name,
        },
        AccessError::Lookup { key, name, source } => AccessError::Lookup {
            key: format!("vm {vm:?}: {key}"),
            name,
            source,
        },
        e => e,
    }
}

/// Binds a listening UNIX stream socket at `path` with `perms` (replacing a stale socket
/// there: callers check first that nobody listens on it; anything but a socket is refused).
///
/// The socket is bound and listening in one step (so that a file at `path` is always a
/// socket that can be connected to, which start-up checks rely on), then given its owner,
/// group and mode. Until then it has the mode vgpud's umask gives it: vgpud sets its umask to
/// 077 when it starts (`main`), so in that instant only vgpud's own user may connect — never
/// anyone the configuration does not allow.
pub fn bind_listener(path: &Path, perms: &SocketPerms) -> Result<UnixListener, AccessError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(AccessError::NotASocket(path.to_owned()));
        }
        remove(path)?;
    }
    let listener = UnixListener::bind(path).map_err(|e| AccessError::io("binding", path, e))?;
    if let Err(e) = perms.apply_to(path) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

fn remove(p: &Path) -> Result<(), AccessError> {
    std::fs::remove_file(p).map_err(|e| AccessError::io("removing stale socket", p, e))
}

/// A user: a numeric id as is; a name through the user database (`getpwnam_r`). A name of
/// digits that is no user is taken as a uid, as `chown` does.
pub fn resolve_user(p: &Principal, key: &str) -> Result<u32, AccessError> {
    resolve(p, key, lookup_user, |key, name| AccessError::UnknownUser {
        key,
        name,
    })
}

/// A group: a numeric id as is; a name through the group database (`getgrnam_r`).
pub fn resolve_group(p: &Principal, key: &str) -> Result<u32, AccessError> {
    resolve(p, key, lookup_group, |key, name| {
        AccessError::UnknownGroup { key, name }
    })
}

fn resolve(
    p: &Principal,
    key: &str,
    lookup: fn(&str) -> io::Result<Option<u32>>,
    unknown: fn(String, String) -> AccessError,
) -> Result<u32, AccessError> {
    let name = match p {
        Principal::Id(id) => return Ok(*id),
        Principal::Name(n) => n,
    };
    match lookup(name) {
        Ok(Some(id)) => Ok(id),
        Ok(None) => name
            .parse::<u32>()
            .map_err(|_| unknown(key.to_string(), name.clone())),
        Err(source) => Err(AccessError::Lookup {
            key: key.to_string(),
            name: name.clone(),
            source,
        }),
    }
}

/// Calls a `get*nam_r` function with a growing buffer. `call(buf, len, found)` returns the
/// function's result and sets `found` to whether an entry was returned.
fn nss_lookup(
    name: &str,
    mut call: impl FnMut(&CString, &mut [c_char], &mut bool) -> (c_int, u32),
) -> io::Result<Option<u32>> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))?;
    let mut buf: Vec<c_char> = vec![0; 1024];
    loop {
        let mut found = false;
        let (rc, id) = call(&cname, &mut buf, &mut found);
        match rc {
            0 => return Ok(found.then_some(id)),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            // Some NSS modules report "no such entry" as an error (getpwnam_r(3)).
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

fn lookup_user(name: &str) -> io::Result<Option<u32>> {
    nss_lookup(name, |cname, buf, found| {
        let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `cname` is a NUL-terminated string, `pwd` is writable storage for one
        // `passwd`, `buf` is writable for `buf.len()` bytes and outlives the call, `result` is
        // a valid out-pointer. getpwnam_r is thread-safe and writes only into these.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                pwd.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        *found = rc == 0 && !result.is_null();
        let uid = if *found {
            // SAFETY: a non-null `result` points to `pwd`, which getpwnam_r then filled in.
            unsafe { (*result).pw_uid }
        } else {
            0
        };
        (rc, uid)
    })
}

fn lookup_group(name: &str) -> io::Result<Option<u32>> {
    nss_lookup(name, |cname, buf, found| {
        let mut grp = std::mem::MaybeUninit::<libc::group>::uninit();
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as in `lookup_user`, for getgrnam_r and a `group`.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                grp.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        *found = rc == 0 && !result.is_null();
        let gid = if *found {
            // SAFETY: a non-null `result` points to `grp`, which getgrnam_r then filled in.
            unsafe { (*result).gr_gid }
        } else {
            0
        };
        (rc, gid)
    })
}

/// A connected peer's credentials (as of its `connect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// Effective uid.
    pub uid: u32,
    /// Effective (primary) gid.
    pub gid: u32,
}

/// Whether the peer of `stream` may use the admin socket: root, vgpud's own effective uid,
/// and (when `allowed_gid` is set) peers whose primary or supplementary groups contain it.
/// Supplementary groups come from `SO_PEERGROUPS` (as of the peer's `connect`, no race with
/// pid reuse); on kernels without it (before 4.13), from `/proc/PID/status`.
pub fn peer_allowed(stream: impl AsFd, allowed_gid: Option<u32>) -> Result<PeerCred, AccessError> {
    let fd = stream.as_fd();
    let peer = so_peercred(fd).map_err(AccessError::PeerCred)?;
    decide(
        peer,
        rustix::process::geteuid().as_raw(),
        allowed_gid,
        || peer_groups(fd, peer.pid),
    )
}

/// The decision of [`peer_allowed`], given the peer's credentials, vgpud's euid and a way to
/// get the peer's supplementary groups (only asked for when needed).
fn decide(
    peer: PeerCred,
    own_uid: u32,
    allowed_gid: Option<u32>,
    groups: impl FnOnce() -> io::Result<Vec<u32>>,
) -> Result<PeerCred, AccessError> {
    if peer.uid == 0 || peer.uid == own_uid {
        return Ok(peer);
    }
    let reason = match allowed_gid {
        Some(g) if peer.gid == g => return Ok(peer),
        Some(g) => match groups() {
            Ok(gs) if gs.contains(&g) => return Ok(peer),
            Ok(_) => format!(
                "uid {} (gid {}, pid {}) is neither root, vgpud's uid {own_uid}, \
                 nor in admin_group {g}",
                peer.uid, peer.gid, peer.pid
            ),
            Err(e) => format!(
                "uid {} (pid {}) is neither root nor vgpud's uid {own_uid}, and its groups \
                 could not be read: {e}",
                peer.uid, peer.pid
            ),
        },
        None => format!(
            "uid {} (gid {}, pid {}) is neither root nor vgpud's uid {own_uid} \
             (and no admin_group is configured)",
            peer.uid, peer.gid, peer.pid
        ),
    };
    Err(AccessError::Denied { peer, reason })
}

/// The peer's supplementary groups.
fn peer_groups(fd: BorrowedFd<'_>, pid: i32) -> io::Result<Vec<u32>> {
    match so_peergroups(fd) {
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
            let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            parse_status_groups(&text).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "no Groups: line in status")
            })
        }
        r => r,
    }
}

/// `SO_PEERGROUPS` (Linux ≥ 4.13; not in every `libc` target module, hence the constant).
const SO_PEERGROUPS: c_int = 59;

/// `SO_PEERCRED` read into `libc::ucred`. (rustix's `UCred` holds a non-zero `Pid`, but the
/// kernel reports pid 0 for a peer outside vgpud's pid namespace, e.g. `vgpuctl` on the host
/// of a vgpud in a container.)
fn so_peercred(fd: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `c` is a writable `ucred` and `len` its size; the kernel writes at most `len`
    // bytes there. `fd` is a live descriptor for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: c.pid,
        uid: c.uid,
        gid: c.gid,
    })
}

fn so_peergroups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let cap = groups.len() * std::mem::size_of::<libc::gid_t>();
        let mut len = cap as libc::socklen_t;
        // SAFETY: `groups` is writable for `cap` bytes and `len` says so; the kernel writes at
        // most `len` bytes there and stores the length it wrote (or needs) in `len`. `fd` is a
        // live descriptor for the duration of the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n.min(groups.len()));
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: the buffer is too small and `len` holds the size needed (at most
        // NGROUPS_MAX = 65536 groups).
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

/// The `Groups:` line of a `/proc/PID/status` text.
fn parse_status_groups(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace().map(|g| g.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixStream;

    fn name(s: &str) -> Principal {
        Principal::Name(s.into())
    }

    #[test]
    fn resolves_names_and_ids() {
        assert_eq!(resolve_user(&Principal::Id(4242), "k").unwrap(), 4242);
        assert_eq!(resolve_user(&name("root"), "k").unwrap(), 0);
        assert_eq!(resolve_group(&name("root"), "k").unwrap(), 0);
        assert_eq!(resolve_group(&Principal::Id(7), "k").unwrap(), 7);
        // Digits that name nobody are an id, as chown(1) takes them.
        assert_eq!(resolve_user(&name("987654"), "k").unwrap(), 987654);
    }

    #[test]
    fn unknown_names_name_the_key() {
        let e = resolve_user(&name("no-such-user-vgpu"), "mediator.admin_socket_owner")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mediator.admin_socket_owner"), "{e}");
        assert!(e.contains("no user named \"no-such-user-vgpu\""), "{e}");
        let e = resolve_group(&name("no-such-group-vgpu"), "mediator.admin_group")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mediator.admin_group: no group named"), "{e}");
        let vm = crate::config::Config::from_toml(
            "[[vm]]\nname = \"a\"\nsocket = \"/tmp/x.sock\"\nvm_id = 1\n\
             socket_group = \"no-such-group-vgpu\"\n",
        )
        .unwrap();
        let e = SocketPerms::for_vm(&vm.vms[0]).unwrap_err().to_string();
        assert!(e.contains("vm \"a\": socket_group: no group named"), "{e}");
        assert!(resolve_user(&name("a\0b"), "k").is_err());
    }

    #[test]
    fn perms_default_and_keys() {
        let p = SocketPerms::resolve(None, None, None, "socket").unwrap();
        assert_eq!((p.uid, p.gid, p.mode), (None, None, 0o600));
        let m = crate::config::MediatorConfig {
            admin_socket_mode: Some(FileMode(0o660)),
            admin_socket_group: Some(Principal::Id(5)),
            ..Default::default()
        };
        let p = SocketPerms::for_admin(&m).unwrap();
        assert_eq!((p.uid, p.gid, p.mode), (None, Some(5), 0o660));
    }

    #[test]
    fn status_groups() {
        let s = "Name:\tx\nUid:\t1\t1\t1\t1\nGroups:\t4 24 27 \nNgid:\t0\n";
        assert_eq!(parse_status_groups(s), Some(vec![4, 24, 27]));
        assert_eq!(parse_status_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_status_groups("Uid:\t1\n"), None);
        assert_eq!(parse_status_groups("Groups:\tx\n"), None);
    }

    #[test]
    fn decisions() {
        let p = |uid, gid| PeerCred { pid: 9, uid, gid };
        let none = || -> io::Result<Vec<u32>> { Ok(vec![]) };
        let never = || -> io::Result<Vec<u32>> { panic!("groups asked for needlessly") };
        assert!(decide(p(0, 0), 1000, None, never).is_ok(), "root");
        assert!(decide(p(1000, 5), 1000, None, never).is_ok(), "own uid");
        assert!(
            decide(p(77, 42), 1000, Some(42), never).is_ok(),
            "primary group"
        );
        assert!(decide(p(77, 5), 1000, Some(42), || Ok(vec![3, 42])).is_ok());
        let e = decide(p(77, 5), 1000, Some(42), none).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("permission denied: uid 77"), "{msg}");
        assert!(msg.contains("admin_group 42"), "{msg}");
        assert!(matches!(e, AccessError::Denied { peer, .. } if peer.uid == 77));
        let msg = decide(p(77, 42), 1000, None, never)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no admin_group"), "{msg}");
        let msg = decide(p(77, 5), 1000, Some(42), || Err(io::Error::other("gone")))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("could not be read: gone"), "{msg}");
    }

    #[test]
    fn peer_of_a_socketpair_is_us() {
        let (a, _b) = UnixStream::pair().unwrap();
        let me = peer_allowed(&a, None).unwrap();
        assert_eq!(me.uid, rustix::process::geteuid().as_raw());
        assert_eq!(me.gid, rustix::process::getegid().as_raw());
        assert_eq!(me.pid, std::process::id() as i32);
        let mut got = so_peergroups(a.as_fd()).unwrap();
        let mut want: Vec<u32> = rustix::process::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        let own = parse_status_groups(&std::fs::read_to_string("/proc/self/status").unwrap());
        let mut own = own.unwrap();
        own.sort_unstable();
        assert_eq!(own, want);
    }

    #[test]
    fn bind_listener_sets_mode_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let perms = SocketPerms::resolve(None, None, None, "socket").unwrap();
        let l = bind_listener(&path, &perms).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, 0o600);
        UnixStream::connect(&path).unwrap();
        let (_c, _) = l.accept().unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        drop(l);

        // A stale socket is replaced; group = our own gid works without privileges.
        let own_gid = rustix::process::getegid().as_raw();
        let perms = SocketPerms::resolve(
            None,
            Some(&Principal::Id(own_gid)),
            Some(FileMode(0o640)),
            "socket",
        )
        .unwrap();
        let _l = bind_listener(&path, &perms).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o640, own_gid));
        UnixStream::connect(&path).unwrap();

        // Anything but a socket is never replaced.
        let file = dir.path().join("f");
        std::fs::write(&file, b"keep").unwrap();
        let e = bind_listener(&file, &perms).unwrap_err();
        assert!(matches!(e, AccessError::NotASocket(_)), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }

    #[test]
    fn long_paths_bind_in_place() {
        let dir = tempfile::tempdir().unwrap();
        // A path of the longest length a socket address takes.
        let k = MAX_SOCKET_PATH - dir.path().as_os_str().len() - "/".len() - "/n.sk".len();
        let sub = dir.path().join("d".repeat(k));
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("n.sk");
        assert_eq!(path.as_os_str().len(), MAX_SOCKET_PATH);
        let _l = bind_listener(&path, &SocketPerms::default()).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        UnixStream::connect(&path).unwrap();
    }

    /// Owner, group and mode from the config applied to a socket file.
    fn apply(
        path: &Path,
        owner: Option<&Principal>,
        group: Option<&Principal>,
        mode: Option<FileMode>,
    ) -> Result<(), AccessError> {
        SocketPerms::resolve(owner, group, mode, "socket")?.apply_to(path)
    }

    #[test]
    fn apply_sets_mode_on_a_bound_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.sock");
        let _l = UnixListener::bind(&path).unwrap();
        apply(&path, None, None, Some(FileMode(0o660))).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o660);
        apply(&path, None, None, None).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        let e = apply(&path, Some(&name("no-such-user-vgpu")), None, None).unwrap_err();
        assert!(e.to_string().contains("socket_owner"), "{e}");
        let e = apply(&dir.path().join("missing"), None, None, None).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
