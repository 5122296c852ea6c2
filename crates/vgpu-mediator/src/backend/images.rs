//! Module images on the cpu reference device: it parses each image a VM loads (PTX, cubin or
//! fatbin, compressed or not) and records the kernels it declares, so that module, function,
//! parameter-layout and attribute commands behave as on a GPU. It runs none of them: a launch
//! of a VM's own kernel is refused with `NOT_SUPPORTED`.

use std::collections::HashMap;

use vgpu_abi::Status;
use vgpu_cubin::{Image, Kernel};

/// The device's compute capability (its description says 9.0).
const ARCH: u32 = 90;
/// Decompressed bytes one image may expand to.
const MAX_EXPANDED: u64 = 256 << 20;
/// Dynamic shared memory a kernel gets without asking (48 KiB, as on NVIDIA GPUs).
const DEFAULT_DYNAMIC_SHARED: i32 = 48 << 10;
/// Most shared memory a block may opt into (the description's attribute 97).
const MAX_SHARED_OPTIN: i32 = 232_448;
/// Shared memory the system reserves in every block (the description's attribute 111). Linked
/// cubins for sm_90 and later count it in a kernel's `.nv.shared.<name>` section (a kernel that
/// declares none has a 1 KiB section); NVIDIA's driver reports a kernel's static shared memory
/// without it, so that a block may still opt into all of `MAX_SHARED_OPTIN`.
const RESERVED_SHARED: u32 = 1024;

/// `CU_FUNC_ATTRIBUTE_*` numbers.
mod attr {
    pub const MAX_THREADS_PER_BLOCK: u32 = 0;
    pub const SHARED_SIZE_BYTES: u32 = 1;
    pub const CONST_SIZE_BYTES: u32 = 2;
    pub const LOCAL_SIZE_BYTES: u32 = 3;
    pub const NUM_REGS: u32 = 4;
    pub const PTX_VERSION: u32 = 5;
    pub const BINARY_VERSION: u32 = 6;
    pub const CACHE_MODE_CA: u32 = 7;
    pub const MAX_DYNAMIC_SHARED_SIZE_BYTES: u32 = 8;
    pub const PREFERRED_SHARED_MEMORY_CARVEOUT: u32 = 9;
    pub const CLUSTER_SIZE_MUST_BE_SET: u32 = 10;
    pub const REQUIRED_CLUSTER_WIDTH: u32 = 11;
    pub const REQUIRED_CLUSTER_HEIGHT: u32 = 12;
    pub const REQUIRED_CLUSTER_DEPTH: u32 = 13;
    pub const NON_PORTABLE_CLUSTER_SIZE_ALLOWED: u32 = 14;
    pub const CLUSTER_SCHEDULING_POLICY_PREFERENCE: u32 = 15;
}

/// A kernel of a loaded image.
#[derive(Debug, Clone)]
pub struct Function {
    /// The module it belongs to.
    pub module: u64,
    /// What the image says of it.
    pub kernel: Kernel,
    /// The code's architecture (SASS sm_XY as XY, or the PTX's virtual one).
    arch: u32,
    /// Dynamic shared memory limit (settable).
    max_dynamic_shared: i32,
    /// Shared memory carveout preference (settable; -1 = none).
    carveout: i32,
    /// Cluster dimensions set at run time (when the image fixes none).
    cluster: [u32; 3],
    /// Whether cluster sizes beyond the portable 8 blocks are allowed (settable).
    non_portable_cluster: i32,
    /// Cluster scheduling policy preference (settable; 0 = default).
    cluster_policy: i32,
}

/// A kernel's static shared memory as NVIDIA's driver reports it: without the part the system
/// reserves, which sm_90 code counts in (PTX declares none: its kernels report 0 here).
fn user_static_shared(k: &Kernel, arch: u32) -> i32 {
    let bytes = k.static_shared.unwrap_or(0);
    let user = if arch >= 90 {
        bytes.saturating_sub(RESERVED_SHARED)
    } else {
        bytes
    };
    user as i32
}

/// The images one VM loaded.
#[derive(Debug, Default)]
pub struct Images {
    /// Module handle → the parsed image and its functions' handles.
    modules: HashMap<u64, (Image, Vec<u64>)>,
    functions: HashMap<u64, Function>,
    /// The device memory given to globals looked up: (module, name) → address.
    globals: HashMap<(u64, String), u64>,
}

/// Parses an image: PTX text, or (`binary`) a cubin or fatbin; the code for this device's
/// architecture is what counts.
pub fn parse(bytes: &[u8], binary: bool) -> Result<Image, Status> {
    let parsed = if binary {
        Image::parse_for_arch(bytes, ARCH)
    } else {
        // PTX is text: up to the first NUL. A module needs its `.version` and `.target`
        // directives, which the JIT compiler would ask for first.
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = &bytes[..end];
        let has = |d: &[u8]| text.windows(d.len()).any(|w| w == d);
        if !has(b".version") || !has(b".target") {
            return Err(Status::InvalidArgument);
        }
        Image::parse_with_limit(text, MAX_EXPANDED)
    };
    parsed.map_err(|_| Status::InvalidArgument)
}

impl Images {
    /// Records `image` as module `handle`.
    pub fn load(&mut self, handle: u64, image: Image) {
        self.modules.insert(handle, (image, Vec::new()));
    }

    /// Forgets module `handle` and its functions. Returns the addresses its globals had, for
    /// the device to free.
    pub fn unload(&mut self, handle: u64) -> Result<Vec<u64>, Status> {
        let (_, funcs) = self
            .modules
            .remove(&handle)
            .ok_or(Status::InvalidArgument)?;
        for f in funcs {
            self.functions.remove(&f);
        }
        let mut freed = Vec::new();
        self.globals.retain(|(m, _), &mut addr| {
            let keep = *m != handle;
            if !keep {
                freed.push(addr);
            }
            keep
        });
        Ok(freed)
    }

    /// Global `name` of module `module`: its address when it has one already, and its size.
    pub fn global(&self, module: u64, name: &str) -> Result<(Option<u64>, u64), Status> {
        let (image, _) = self.modules.get(&module).ok_or(Status::InvalidArgument)?;
        let g = image.global(name).ok_or(Status::NotFound)?;
        let addr = self.globals.get(&(module, name.to_owned())).copied();
        Ok((addr, g.size))
    }

    /// Records the device memory at `addr` as global `name` of `module`.
    pub fn place_global(&mut self, module: u64, name: &str, addr: u64) {
        self.globals.insert((module, name.to_owned()), addr);
    }

    /// Looks kernel `name` up in module `module`; records it as function `handle` (or returns
    /// the handle it already has). Returns the function's handle and parameter count.
    pub fn function(&mut self, module: u64, name: &str, handle: u64) -> Result<(u64, u64), Status> {
        let (image, funcs) = self
            .modules
            .get_mut(&module)
            .ok_or(Status::InvalidArgument)?;
        if let Some(&f) = funcs.iter().find(|&&f| {
            self.functions
                .get(&f)
                .is_some_and(|x| x.kernel.name == name)
        }) {
            let n = self.functions[&f].kernel.params.len() as u64;
            return Ok((f, n));
        }
        let kernel = image.kernel(name).ok_or(Status::InvalidFunction)?.clone();
        let arch = image.for_arch(ARCH).map_or(ARCH, |m| m.source.arch);
        let static_shared = user_static_shared(&kernel, arch);
        let n = kernel.params.len() as u64;
        funcs.push(handle);
        self.functions.insert(
            handle,
            Function {
                module,
                kernel,
                arch,
                max_dynamic_shared: DEFAULT_DYNAMIC_SHARED
                    - static_shared.min(DEFAULT_DYNAMIC_SHARED),
                carveout: -1,
                cluster: [0; 3],
                non_portable_cluster: 0,
                cluster_policy: 0,
            },
        );
        Ok((handle, n))
    }

    /// The function `handle`, if this VM has it.
    pub fn get(&self, handle: u64) -> Option<&Function> {
        self.functions.get(&handle)
    }

    /// Where parameter `index` of `handle` goes: (offset, size).
    pub fn param(&self, handle: u64, index: u32) -> Result<(u64, u64), Status> {
        let f = self.functions.get(&handle).ok_or(Status::InvalidFunction)?;
        let p = f
            .kernel
            .params
            .get(index as usize)
            .ok_or(Status::InvalidArgument)?;
        Ok((p.offset as u64, p.size as u64))
    }

    /// A function attribute, as the image describes the kernel.
    pub fn attribute(&self, handle: u64, a: u32) -> Result<i32, Status> {
        let f = self.functions.get(&handle).ok_or(Status::InvalidFunction)?;
        let k = &f.kernel;
        let dims = |d: Option<[u32; 3]>| d.map(|d| d.iter().product::<u32>() as i32);
        let cluster = k.cluster_dims.unwrap_or(f.cluster);
        Ok(match a {
            attr::MAX_THREADS_PER_BLOCK => dims(k.req_threads)
                .or(dims(k.max_threads))
                .unwrap_or(1024)
                .min(1024),
            attr::SHARED_SIZE_BYTES => user_static_shared(k, f.arch),
            attr::CONST_SIZE_BYTES | attr::CACHE_MODE_CA | attr::CLUSTER_SIZE_MUST_BE_SET => 0,
            attr::LOCAL_SIZE_BYTES => k.frame_size.unwrap_or(0) as i32,
            attr::NUM_REGS => k.registers.unwrap_or(0) as i32,
            attr::PTX_VERSION | attr::BINARY_VERSION => f.arch as i32,
            attr::MAX_DYNAMIC_SHARED_SIZE_BYTES => f.max_dynamic_shared,
            attr::PREFERRED_SHARED_MEMORY_CARVEOUT => f.carveout,
            attr::REQUIRED_CLUSTER_WIDTH => cluster[0] as i32,
            attr::REQUIRED_CLUSTER_HEIGHT => cluster[1] as i32,
            attr::REQUIRED_CLUSTER_DEPTH => cluster[2] as i32,
            attr::NON_PORTABLE_CLUSTER_SIZE_ALLOWED => f.non_portable_cluster,
            attr::CLUSTER_SCHEDULING_POLICY_PREFERENCE => f.cluster_policy,
            _ => return Err(Status::InvalidArgument),
        })
    }

    /// Sets a settable function attribute.
    pub fn set_attribute(&mut self, handle: u64, a: u32, v: i32) -> Result<(), Status> {
        let f = self
            .functions
            .get_mut(&handle)
            .ok_or(Status::InvalidFunction)?;
        match a {
            attr::MAX_DYNAMIC_SHARED_SIZE_BYTES => {
                let room = MAX_SHARED_OPTIN - user_static_shared(&f.kernel, f.arch);
                if v < 0 || v > room {
                    return Err(Status::InvalidArgument);
                }
                f.max_dynamic_shared = v;
            }
            attr::PREFERRED_SHARED_MEMORY_CARVEOUT => {
                if !(-1..=100).contains(&v) {
                    return Err(Status::InvalidArgument);
                }
                f.carveout = v;
            }
            attr::REQUIRED_CLUSTER_WIDTH
            | attr::REQUIRED_CLUSTER_HEIGHT
            | attr::REQUIRED_CLUSTER_DEPTH => {
                // A cluster shape the image fixes cannot change; blocks of a cluster number at
                // most 16 (non-portable) on sm_90.
                if f.kernel.cluster_dims.is_some() || !(0..=16).contains(&v) {
                    return Err(Status::InvalidArgument);
                }
                f.cluster[(a - attr::REQUIRED_CLUSTER_WIDTH) as usize] = v as u32;
            }
            attr::NON_PORTABLE_CLUSTER_SIZE_ALLOWED => {
                if !(0..=1).contains(&v) {
                    return Err(Status::InvalidArgument);
                }
                f.non_portable_cluster = v;
            }
            attr::CLUSTER_SCHEDULING_POLICY_PREFERENCE => {
                // CU_CLUSTER_SCHEDULING_POLICY_DEFAULT, _SPREAD, _LOAD_BALANCING.
                if !(0..=2).contains(&v) {
                    return Err(Status::InvalidArgument);
                }
                f.cluster_policy = v;
            }
            _ => return Err(Status::InvalidArgument),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_ptx_directives_is_no_module() {
        assert_eq!(
            parse(b"this is not PTX", false).unwrap_err(),
            Status::InvalidArgument
        );
        let ptx = b".version 8.0\n.target sm_90\n.address_size 64\n\
                    .visible .entry k(.param .u64 p) { ret; }\n";
        let image = parse(ptx, false).unwrap();
        assert_eq!(image.kernel("k").unwrap().params.len(), 1);
    }

    #[test]
    fn static_shared_memory_is_reported_without_the_reserved_kilobyte() {
        // vgpu-cubin's fixture, built by nvcc 13.0 for sm_90: `k_bounded` declares a 1 KiB tile
        // (its section holds 2 KiB), `k_scalars` none.
        let cubin = include_bytes!("../../../vgpu-cubin/tests/fixtures/kernels.sm90.cubin");
        let mut images = Images::default();
        images.load(1, parse(cubin, true).unwrap());
        let (bounded, _) = images.function(1, "_Z9k_boundedPi", 10).unwrap();
        let (scalars, _) = images.function(1, "k_scalars", 11).unwrap();
        assert_eq!(images.attribute(bounded, attr::SHARED_SIZE_BYTES), Ok(1024));
        assert_eq!(images.attribute(scalars, attr::SHARED_SIZE_BYTES), Ok(0));
        // The default dynamic limit is 48 KiB less the static part; opting in may take the
        // rest of the 227 KiB.
        assert_eq!(
            images.attribute(bounded, attr::MAX_DYNAMIC_SHARED_SIZE_BYTES),
            Ok((48 << 10) - 1024)
        );
        assert!(images
            .set_attribute(
                bounded,
                attr::MAX_DYNAMIC_SHARED_SIZE_BYTES,
                MAX_SHARED_OPTIN - 1024
            )
            .is_ok());
        assert!(images
            .set_attribute(
                scalars,
                attr::MAX_DYNAMIC_SHARED_SIZE_BYTES,
                MAX_SHARED_OPTIN
            )
            .is_ok());
        assert_eq!(
            images.set_attribute(
                bounded,
                attr::MAX_DYNAMIC_SHARED_SIZE_BYTES,
                MAX_SHARED_OPTIN - 1023
            ),
            Err(Status::InvalidArgument)
        );
    }
}
