//! Writing a run-time setting (`vgpuctl set … --persist`) back to vgpud's config file, so that
//! a restart or a SIGHUP reload keeps it. Only the one key changes: the file is edited as a
//! TOML document (comments, order and layout kept), and replaced atomically.

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One setting to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting<'a> {
    /// `priority` of the `[[vm]]` named `vm`.
    VmPriority {
        /// The VM's name.
        vm: &'a str,
        /// Its priority.
        priority: u32,
    },
    /// `weight` of the `[[pool]]` named `pool`.
    PoolWeight {
        /// The pool's name.
        pool: &'a str,
        /// Its weight.
        weight: u32,
    },
}

/// Why the file was not changed (it is left as it was).
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The file could not be read.
    #[error("reading {0}: {1}")]
    Read(PathBuf, io::Error),
    /// The file is not TOML (any more).
    #[error("{0} is not valid TOML now: {1}")]
    Parse(PathBuf, Box<toml_edit::TomlError>),
    /// The file has no table for the name (an implicit pool, or the file changed).
    #[error("{0}")]
    NotInFile(String),
    /// The new file could not be written or put in place.
    #[error("writing {0}: {1}")]
    Write(PathBuf, io::Error),
}

/// Sets `setting` in the config file at `path` (through symbolic links: the file itself is
/// replaced, keeping its owner and mode).
pub fn write(path: &Path, setting: Setting<'_>) -> Result<(), PersistError> {
    let real = std::fs::canonicalize(path).map_err(|e| PersistError::Read(path.into(), e))?;
    let text = std::fs::read_to_string(&real).map_err(|e| PersistError::Read(real.clone(), e))?;
    let new = edit(&text, setting).map_err(|e| match e {
        EditError::Parse(err) => PersistError::Parse(real.clone(), Box::new(err)),
        EditError::NotInFile(m) => {
            PersistError::NotInFile(format!("{m} in {} (nothing was changed)", real.display()))
        }
    })?;
    replace(&real, new.as_bytes()).map_err(|e| PersistError::Write(real.clone(), e))
}

enum EditError {
    Parse(toml_edit::TomlError),
    NotInFile(String),
}

/// `text` with `setting` applied.
fn edit(text: &str, setting: Setting<'_>) -> Result<String, EditError> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(EditError::Parse)?;
    let (array, name, key, value) = match setting {
        Setting::VmPriority { vm, priority } => ("vm", vm, "priority", priority),
        Setting::PoolWeight { pool, weight } => ("pool", pool, "weight", weight),
    };
    let missing = || {
        let hint = if array == "pool" {
            " (a pool the VMs name without a [[pool]] entry is implicit: add one to persist \
             its weight)"
        } else {
            ""
        };
        EditError::NotInFile(format!("no [[{array}]] with name = {name:?}{hint}"))
    };
    let table = doc
        .get_mut(array)
        .and_then(|i| i.as_array_of_tables_mut())
        .ok_or_else(missing)?
        .iter_mut()
        .find(|t| t.get("name").and_then(|v| v.as_str()) == Some(name))
        .ok_or_else(missing)?;
    table[key] = toml_edit::value(i64::from(value));
    Ok(doc.to_string())
}

/// Replaces `path` by `bytes` atomically: a new file beside it (same owner and mode), synced,
/// renamed over it.
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".vgpud-new");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(meta.permissions())?;
        // Only root may give a file away; vgpud running as the file's owner needs no chown.
        if let Err(e) = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid())) {
            if e.kind() != io::ErrorKind::PermissionDenied {
                return Err(e);
            }
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# vgpud on host 7
[mediator]
backend = "cpu"

[[pool]]
id = 1
name = "gold"   # paying tenants
weight = 3

[[vm]]
name = "a"
socket = "/run/a.sock"
vm_id = 1
pool = 1
# priority is set below
priority = 1

[[vm]]
name = "b"
socket = "/run/b.sock"
vm_id = 2
pool = 1
"#;

    fn ok(s: Setting<'_>) -> String {
        match edit(FILE, s) {
            Ok(t) => t,
            Err(EditError::NotInFile(m)) => panic!("{m}"),
            Err(EditError::Parse(e)) => panic!("{e}"),
        }
    }

    #[test]
    fn only_the_key_changes() {
        let t = ok(Setting::VmPriority {
            vm: "a",
            priority: 7,
        });
        assert_eq!(t, FILE.replace("priority = 1", "priority = 7"));
        let t = ok(Setting::PoolWeight {
            pool: "gold",
            weight: 9,
        });
        assert_eq!(t, FILE.replace("weight = 3", "weight = 9"));
        // A VM without the key gets it, in its own table.
        let t = ok(Setting::VmPriority {
            vm: "b",
            priority: 2,
        });
        let c = crate::config::Config::from_toml(&t).unwrap();
        assert_eq!((c.vms[0].priority, c.vms[1].priority), (1, 2));
    }

    #[test]
    fn unknown_and_implicit_names_are_refused() {
        for s in [
            Setting::VmPriority {
                vm: "zz",
                priority: 1,
            },
            Setting::PoolWeight {
                pool: "pool-2",
                weight: 1,
            },
        ] {
            match edit(FILE, s) {
                Err(EditError::NotInFile(m)) => assert!(m.contains("no [["), "{m}"),
                _ => panic!("{s:?} accepted"),
            }
        }
    }

    #[test]
    fn the_file_is_replaced_keeping_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("vgpud.toml");
        std::fs::write(&real, FILE).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write(
            &link,
            Setting::PoolWeight {
                pool: "gold",
                weight: 5,
            },
        )
        .unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        let meta = std::fs::metadata(&real).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert!(std::fs::read_to_string(&real)
            .unwrap()
            .contains("weight = 5"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary left"
        );
        let e = write(
            &link,
            Setting::VmPriority {
                vm: "zz",
                priority: 1,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("nothing was changed"), "{e}");
    }
}
