//! Modules and libraries of device code, and their functions and kernels.
//!
//! An image (PTX, cubin or fatbin, or a fatbin wrapper as nvcc embeds it) is copied when it is
//! loaded. A module (`cuModuleLoadData*`) is shipped to vgpud at once, so that a bad image fails
//! the call as NVIDIA's does; a library (`cuLibraryLoadData`, what the CUDA runtime registers
//! its fatbins with) is shipped when one of its kernels is first asked for, so that a program
//! ships only the code it uses. A function's parameter layout is asked from vgpud once, when
//! the function is first looked up. `CUfunction` and `CUkernel` handles are the same object.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

use vgpu_guest::compute::{Function, Module};

use super::context::require_current;
use super::{memory, put, run};
use crate::driver;
use crate::handles::Registry;
use crate::types::{CUdeviceptr, CUfunction, CUkernel, CUlibrary, CUmodule, CUresult};

/// `CU_MODULE_EAGER_LOADING`.
pub const EAGER_LOADING: c_int = 1;
/// `CU_MODULE_LAZY_LOADING`.
pub const LAZY_LOADING: c_int = 2;

/// The loading mode `CUDA_MODULE_LOADING` asks for: `EAGER`, else lazy (NVIDIA's default
/// since CUDA 12.2).
pub fn loading_mode() -> c_int {
    match std::env::var("CUDA_MODULE_LOADING").as_deref() {
        Ok(v) if v.eq_ignore_ascii_case("eager") => EAGER_LOADING,
        _ => LAZY_LOADING,
    }
}

/// Magic of the fatbin wrapper nvcc embeds in host code.
const WRAPPER_MAGIC: u32 = 0x466243b1;
/// Magic of a fatbin container.
const FATBIN_MAGIC: u32 = 0xba55ed50;
/// `\x7fELF` read as a little-endian u32.
const ELF_MAGIC: u32 = 0x464c_457f;
/// Largest image accepted (vgpud's own bound is lower; this only stops a runaway length).
const MAX_IMAGE: usize = 1 << 31;

/// A loaded module (or library).
pub struct ModuleObj {
    /// The image, 8-byte aligned.
    image: Vec<u64>,
    /// Its length in bytes.
    len: usize,
    /// Whether it is PTX text.
    ptx: bool,
    /// The module in vgpud, once shipped.
    host: OnceLock<Result<Module<'static>, CUresult>>,
    /// Functions looked up so far, by name.
    functions: Mutex<HashMap<Vec<u8>, &'static FuncObj>>,
    /// Globals looked up so far, by name: (device address, size).
    globals: Mutex<HashMap<Vec<u8>, (u64, u64)>>,
}

/// A function (or kernel) of a module.
pub struct FuncObj {
    module: &'static ModuleObj,
    name: CString,
    /// vgpud's function and its parameter layout.
    host: Function,
    /// Attributes read so far (they change only when set through this driver).
    attributes: Mutex<HashMap<c_int, c_int>>,
}

static MODULES: Registry<ModuleObj> = Registry::new();
static FUNCTIONS: Registry<FuncObj> = Registry::new();

/// The module behind a `CUmodule` or `CUlibrary` handle.
fn module(h: *mut c_void) -> Result<&'static ModuleObj, CUresult> {
    MODULES
        .get(h as usize)
        .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)
}

/// The function behind a `CUfunction` or `CUkernel` handle.
pub fn function(h: *mut c_void) -> Result<&'static FuncObj, CUresult> {
    FUNCTIONS
        .get(h as usize)
        .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)
}

impl FuncObj {
    /// vgpud's function handle.
    pub fn handle(&self) -> u64 {
        self.host.handle()
    }
    /// `(offset, size)` of each parameter.
    pub fn params(&self) -> &[(u32, u32)] {
        self.host.params()
    }
    /// The kernel's name.
    pub fn name(&self) -> &[u8] {
        self.name.to_bytes()
    }
}

fn read_u16(p: *const u8, off: usize) -> u16 {
    // SAFETY: the callers only read inside headers whose magic they checked (the image's
    // owner promises a valid image).
    unsafe { p.add(off).cast::<u16>().read_unaligned() }
}
fn read_u32(p: *const u8, off: usize) -> u32 {
    // SAFETY: as in `read_u16`.
    unsafe { p.add(off).cast::<u32>().read_unaligned() }
}
fn read_u64(p: *const u8, off: usize) -> u64 {
    // SAFETY: as in `read_u16`.
    unsafe { p.add(off).cast::<u64>().read_unaligned() }
}

/// Where an image starts and how long it is, from its headers (the driver API passes images
/// by pointer only): a fatbin wrapper's fatbin, a fatbin, an ELF cubin, or NUL-terminated PTX.
///
/// # Safety
/// `p` points to a valid image of one of those kinds.
unsafe fn locate(p: *const u8) -> Result<(*const u8, usize, bool), CUresult> {
    if p.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let mut p = p;
    if read_u32(p, 0) == WRAPPER_MAGIC {
        // { magic u32, version u32, data *const fatbin, filename_or_fatbins }
        p = read_u64(p, 8) as *const u8;
        if p.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_IMAGE);
        }
    }
    let len = match read_u32(p, 0) {
        // { magic u32, version u16, header_size u16, fat_size u64 }
        FATBIN_MAGIC => read_u16(p, 6) as usize + read_u64(p, 8) as usize,
        ELF_MAGIC => {
            // ELF64: the furthest of the section header table, the program header table and
            // every section's contents.
            let shoff = read_u64(p, 0x28) as usize;
            let shentsize = read_u16(p, 0x3a) as usize;
            let shnum = read_u16(p, 0x3c) as usize;
            let phoff = read_u64(p, 0x20) as usize;
            let phentsize = read_u16(p, 0x36) as usize;
            let phnum = read_u16(p, 0x38) as usize;
            let mut end = (shoff + shentsize * shnum).max(phoff + phentsize * phnum);
            for i in 0..shnum {
                let sh = shoff + i * shentsize;
                let kind = read_u32(p, sh + 4);
                // SHT_NOBITS occupies no bytes of the file.
                if kind != 8 {
                    end =
                        end.max(read_u64(p, sh + 0x18) as usize + read_u64(p, sh + 0x20) as usize);
                }
            }
            end
        }
        _ => {
            // SAFETY: PTX is NUL-terminated text (the caller's promise).
            let n = unsafe { CStr::from_ptr(p.cast::<c_char>()) }
                .to_bytes()
                .len();
            return Ok((p, n, true));
        }
    };
    if len == 0 || len > MAX_IMAGE {
        return Err(CUresult::CUDA_ERROR_INVALID_IMAGE);
    }
    Ok((p, len, false))
}

/// Copies the image at `p` into a new module object.
///
/// # Safety
/// `p` points to a valid image.
unsafe fn new_module(p: *const c_void) -> Result<&'static ModuleObj, CUresult> {
    // SAFETY: forwarded from the caller.
    let (start, len, ptx) = unsafe { locate(p.cast()) }?;
    let mut image = vec![0u64; len.div_ceil(8)];
    // SAFETY: `start` is valid for `len` bytes (the image's headers say so), `image` holds at
    // least `len` bytes and does not overlap it.
    unsafe { std::ptr::copy_nonoverlapping(start, image.as_mut_ptr().cast::<u8>(), len) };
    Ok(MODULES.add(ModuleObj {
        image,
        len,
        ptx,
        host: OnceLock::new(),
        functions: Mutex::new(HashMap::new()),
        globals: Mutex::new(HashMap::new()),
    }))
}

impl ModuleObj {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `image` holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.image.as_ptr().cast::<u8>(), self.len) }
    }

    /// The module in vgpud, shipped now if it was not yet.
    fn host(&self) -> Result<&Module<'static>, CUresult> {
        self.host
            .get_or_init(|| {
                let d = driver::get()?;
                let r = if self.ptx {
                    let text = std::str::from_utf8(self.bytes())
                        .map_err(|_| CUresult::CUDA_ERROR_INVALID_PTX)?;
                    d.dev.load_module(text)
                } else {
                    d.dev.load_image(self.bytes())
                };
                r.map_err(|e| match driver::error_of(&e) {
                    CUresult::CUDA_ERROR_INVALID_VALUE => CUresult::CUDA_ERROR_INVALID_IMAGE,
                    other => other,
                })
            })
            .as_ref()
            .map_err(|e| *e)
    }

    /// The function `name`, looked up in vgpud the first time.
    fn function(&'static self, name: &[u8]) -> Result<&'static FuncObj, CUresult> {
        let mut fs = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = fs.get(name) {
            return Ok(f);
        }
        let text = std::str::from_utf8(name).map_err(|_| CUresult::CUDA_ERROR_NOT_FOUND)?;
        let host = self
            .host()?
            .function(text)
            .map_err(|e| match driver::error_of(&e) {
                CUresult::CUDA_ERROR_INVALID_VALUE | CUresult::CUDA_ERROR_INVALID_HANDLE => {
                    CUresult::CUDA_ERROR_NOT_FOUND
                }
                other => other,
            })?;
        let f = FUNCTIONS.add(FuncObj {
            module: self,
            // Names come from C strings: no NUL inside.
            name: CString::new(name).map_err(|_| CUresult::CUDA_ERROR_NOT_FOUND)?,
            host,
            attributes: Mutex::new(HashMap::new()),
        });
        fs.insert(name.to_vec(), f);
        Ok(f)
    }
}

impl ModuleObj {
    /// The global variable `name`: its device address and size, asked from vgpud the first
    /// time (which ships the module if it was not yet).
    fn global(&self, name: &[u8]) -> Result<(u64, u64), CUresult> {
        let mut gs = self.globals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&g) = gs.get(name) {
            return Ok(g);
        }
        let text = std::str::from_utf8(name).map_err(|_| CUresult::CUDA_ERROR_NOT_FOUND)?;
        let handle = self.host()?.handle();
        let d = driver::get()?;
        let g = d
            .dev
            .module_global(handle, text)
            .map_err(|e| match driver::error_of(&e) {
                CUresult::CUDA_ERROR_INVALID_VALUE => CUresult::CUDA_ERROR_NOT_FOUND,
                other => other,
            })?;
        memory::add_global(g.0, g.1);
        gs.insert(name.to_vec(), g);
        Ok(g)
    }
}

/// # Safety
/// `dptr` and `bytes` are NULL or valid for a write; `name` is NULL or NUL-terminated.
unsafe fn get_global(
    dptr: *mut CUdeviceptr,
    bytes: *mut usize,
    m: *mut c_void,
    name: *const c_char,
) -> Result<CUresult, CUresult> {
    require_current()?;
    if name.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let m = module(m)?;
    // SAFETY: non-NULL and NUL-terminated (the caller's promise).
    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
    let (p, size) = m.global(name)?;
    // SAFETY: each is NULL (not wanted) or valid for a write (the caller's promise).
    unsafe {
        put(dptr, p);
        put(bytes, size as usize);
    }
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuModuleGetGlobal_v2`: a `__device__` or `__constant__` variable's address and size.
///
/// # Safety
/// `dptr` and `bytes` are NULL or valid for a write; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cuModuleGetGlobal_v2(
    dptr: *mut CUdeviceptr,
    bytes: *mut usize,
    m: CUmodule,
    name: *const c_char,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuModuleGetGlobal_v2", || unsafe {
        get_global(dptr, bytes, m.cast(), name)
    })
}

/// `cuLibraryGetGlobal`: as [`cuModuleGetGlobal_v2`], for a library (the runtime's
/// `cudaMemcpyToSymbol` and `cudaGetSymbolAddress` come here).
///
/// # Safety
/// `dptr` and `bytes` are NULL or valid for a write; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cuLibraryGetGlobal(
    dptr: *mut CUdeviceptr,
    bytes: *mut usize,
    l: CUlibrary,
    name: *const c_char,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuLibraryGetGlobal", || unsafe {
        get_global(dptr, bytes, l.cast(), name)
    })
}

/// `cuModuleGetLoadingMode`.
///
/// # Safety
/// `mode` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuModuleGetLoadingMode(mode: *mut c_int) -> CUresult {
    run("cuModuleGetLoadingMode", || {
        driver::get()?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(mode, loading_mode()) })
    })
}

/// # Safety
/// `pm` is NULL or valid for a write; `image` points to a valid image.
unsafe fn module_load(pm: *mut CUmodule, image: *const c_void) -> Result<CUresult, CUresult> {
    require_current()?;
    if pm.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: forwarded from the caller.
    let m = unsafe { new_module(image) }?;
    if let Err(e) = m.host() {
        MODULES.retire(Registry::handle(m));
        return Err(e);
    }
    // SAFETY: non-NULL and valid for a write (the caller's promise).
    unsafe { pm.write(m as *const ModuleObj as CUmodule) };
    Ok(CUresult::CUDA_SUCCESS)
}

/// The contents of the image file `fname`, NUL-terminated (so that PTX text is a C string),
/// in 8-byte words (cubin and fatbin headers are read at that alignment).
///
/// # Safety
/// `fname` is NULL or NUL-terminated.
unsafe fn read_image_file(fname: *const c_char) -> Result<Vec<u64>, CUresult> {
    if fname.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL and NUL-terminated (the caller's promise).
    let path = unsafe { CStr::from_ptr(fname) };
    let path = std::path::Path::new(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()),
    );
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CUresult::CUDA_ERROR_FILE_NOT_FOUND,
        _ => CUresult::CUDA_ERROR_INVALID_VALUE,
    })?;
    let mut words = vec![0u64; bytes.len() / 8 + 1];
    // SAFETY: `words` holds at least `bytes.len() + 1` bytes; the last stays 0.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast::<u8>(), bytes.len())
    };
    Ok(words)
}

/// `cuModuleLoad`: a module from a PTX, cubin or fatbin file.
///
/// # Safety
/// `pm` is NULL or valid for a write; `fname` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoad(pm: *mut CUmodule, fname: *const c_char) -> CUresult {
    run("cuModuleLoad", || {
        require_current()?;
        // SAFETY: forwarded from the caller.
        let image = unsafe { read_image_file(fname) }?;
        // SAFETY: `image` is the file's bytes, NUL-terminated, alive for the call.
        unsafe { module_load(pm, image.as_ptr().cast()) }
    })
}

/// `cuModuleLoadData`.
///
/// # Safety
/// `pm` is NULL or valid for a write; `image` points to a valid image.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(pm: *mut CUmodule, image: *const c_void) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuModuleLoadData", || unsafe { module_load(pm, image) })
}

/// `cuModuleLoadDataEx`: JIT options are accepted and left to vgpud's driver defaults.
///
/// # Safety
/// `pm` is NULL or valid for a write; `image` points to a valid image.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    pm: *mut CUmodule,
    image: *const c_void,
    _num_options: c_uint,
    _options: *mut c_int,
    _values: *mut *mut c_void,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuModuleLoadDataEx", || unsafe { module_load(pm, image) })
}

/// `cuModuleLoadFatBinary`.
///
/// # Safety
/// `pm` is NULL or valid for a write; `image` points to a valid fatbin.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadFatBinary(
    pm: *mut CUmodule,
    image: *const c_void,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuModuleLoadFatBinary", || unsafe {
        module_load(pm, image)
    })
}

fn unload(h: *mut c_void) -> Result<CUresult, CUresult> {
    let m = module(h)?;
    MODULES.retire(h as usize);
    let functions = m.functions.lock().unwrap_or_else(|e| e.into_inner());
    for &f in functions.values() {
        FUNCTIONS.retire(Registry::handle(f));
    }
    drop(functions);
    for &(p, _) in m.globals.lock().unwrap_or_else(|e| e.into_inner()).values() {
        memory::remove_global(p);
    }
    // The module object stays leaked (stale handles must never name reused memory); its
    // vgpud module is unloaded.
    if let Some(Ok(hm)) = m.host.get() {
        let d = driver::get()?;
        d.dev
            .unload_module(hm.handle())
            .map_err(|e| driver::error_of(&e))?;
    }
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuModuleUnload`.
#[no_mangle]
pub extern "C" fn cuModuleUnload(m: CUmodule) -> CUresult {
    run("cuModuleUnload", || unload(m.cast()))
}

/// # Safety
/// `pf` is NULL or valid for a write; `name` is NULL or NUL-terminated.
unsafe fn get_function(
    pf: *mut *mut c_void,
    m: *mut c_void,
    name: *const c_char,
) -> Result<CUresult, CUresult> {
    require_current()?;
    if pf.is_null() || name.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let m = module(m)?;
    // SAFETY: non-NULL and NUL-terminated (the caller's promise).
    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
    let f = m.function(name)?;
    // SAFETY: non-NULL and valid for a write (the caller's promise).
    unsafe { pf.write(f as *const FuncObj as *mut c_void) };
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuModuleGetFunction`.
///
/// # Safety
/// `pf` is NULL or valid for a write; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    pf: *mut CUfunction,
    m: CUmodule,
    name: *const c_char,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuModuleGetFunction", || unsafe {
        get_function(pf.cast(), m.cast(), name)
    })
}

/// `cuLibraryLoadData`: the image is copied now and shipped to vgpud when a kernel of it is
/// first asked for. JIT and library options are accepted and left to the defaults
/// (`CU_LIBRARY_BINARY_IS_PRESERVED` needs nothing: the image is copied anyway).
///
/// # Safety
/// `pl` is NULL or valid for a write; `code` points to a valid image.
#[no_mangle]
pub unsafe extern "C" fn cuLibraryLoadData(
    pl: *mut CUlibrary,
    code: *const c_void,
    _jit_options: *mut c_int,
    _jit_values: *mut *mut c_void,
    _num_jit: c_uint,
    _lib_options: *mut c_int,
    _lib_values: *mut *mut c_void,
    _num_lib: c_uint,
) -> CUresult {
    run("cuLibraryLoadData", || {
        driver::get()?;
        if pl.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `code` points to a valid image (the caller's promise).
        let m = unsafe { new_module(code) }?;
        if loading_mode() == EAGER_LOADING {
            m.host()?;
        }
        // SAFETY: non-NULL and valid for a write (the caller's promise).
        unsafe { pl.write(m as *const ModuleObj as CUlibrary) };
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuLibraryUnload`.
#[no_mangle]
pub extern "C" fn cuLibraryUnload(l: CUlibrary) -> CUresult {
    run("cuLibraryUnload", || unload(l.cast()))
}

/// `cuLibraryGetKernel`.
///
/// # Safety
/// `pk` is NULL or valid for a write; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cuLibraryGetKernel(
    pk: *mut CUkernel,
    l: CUlibrary,
    name: *const c_char,
) -> CUresult {
    run("cuLibraryGetKernel", || {
        driver::get()?;
        if pk.is_null() || name.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let m = module(l.cast())?;
        // SAFETY: non-NULL and NUL-terminated (the caller's promise).
        let name = unsafe { CStr::from_ptr(name) }.to_bytes();
        let f = m.function(name)?;
        // SAFETY: non-NULL and valid for a write (the caller's promise).
        unsafe { pk.write(f as *const FuncObj as CUkernel) };
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuLibraryGetModule`: the library's module (the same object).
///
/// # Safety
/// `pm` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuLibraryGetModule(pm: *mut CUmodule, l: CUlibrary) -> CUresult {
    run("cuLibraryGetModule", || {
        let m = module(l.cast())?;
        m.host()?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(pm, m as *const ModuleObj as CUmodule) })
    })
}

/// `cuKernelGetFunction`: the kernel's function (the same object).
///
/// # Safety
/// `pf` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuKernelGetFunction(pf: *mut CUfunction, k: CUkernel) -> CUresult {
    run("cuKernelGetFunction", || {
        require_current()?;
        let f = function(k.cast())?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(pf, f as *const FuncObj as CUfunction) })
    })
}

/// `cuKernelGetName` / `cuFuncGetName`: the kernel's name, valid for the life of the process.
///
/// # Safety
/// `name` is NULL or valid for a write.
unsafe fn get_name(name: *mut *const c_char, h: *mut c_void) -> Result<CUresult, CUresult> {
    let f = function(h)?;
    // SAFETY: forwarded from the caller; the string lives as long as the (leaked) function.
    Ok(unsafe { put(name, f.name.as_ptr()) })
}

/// `cuKernelGetName`.
///
/// # Safety
/// `name` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuKernelGetName(name: *mut *const c_char, k: CUkernel) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuKernelGetName", || unsafe { get_name(name, k.cast()) })
}

/// `cuFuncGetName`.
///
/// # Safety
/// `name` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuFuncGetName(name: *mut *const c_char, f: CUfunction) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuFuncGetName", || unsafe { get_name(name, f.cast()) })
}

/// # Safety
/// `offset` and `size` are NULL or valid for writes.
unsafe fn param_info(
    h: *mut c_void,
    index: usize,
    offset: *mut usize,
    size: *mut usize,
) -> Result<CUresult, CUresult> {
    let f = function(h)?;
    let &(o, s) = f
        .params()
        .get(index)
        .ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
    // SAFETY: each is NULL or valid for a write (the caller's promise).
    unsafe {
        if !offset.is_null() {
            offset.write(o as usize);
        }
        if !size.is_null() {
            size.write(s as usize);
        }
    }
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuFuncGetParamInfo`.
///
/// # Safety
/// `offset` and `size` are NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cuFuncGetParamInfo(
    f: CUfunction,
    index: usize,
    offset: *mut usize,
    size: *mut usize,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuFuncGetParamInfo", || unsafe {
        param_info(f.cast(), index, offset, size)
    })
}

/// `cuKernelGetParamInfo`.
///
/// # Safety
/// `offset` and `size` are NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cuKernelGetParamInfo(
    k: CUkernel,
    index: usize,
    offset: *mut usize,
    size: *mut usize,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuKernelGetParamInfo", || unsafe {
        param_info(k.cast(), index, offset, size)
    })
}

impl FuncObj {
    /// The module the function belongs to.
    pub fn module_handle(&self) -> CUmodule {
        self.module as *const ModuleObj as CUmodule
    }

    /// Attribute `attrib` (in range), read from vgpud once and cached.
    pub fn attribute(&self, attrib: c_int) -> Result<c_int, CUresult> {
        if let Some(&v) = self
            .attributes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&attrib)
        {
            return Ok(v);
        }
        let v = driver::get()?
            .dev
            .func_attribute(self.handle(), attrib as u32)
            .map_err(|e| driver::error_of(&e))?;
        self.attributes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(attrib, v);
        Ok(v)
    }
}

/// `CU_FUNC_ATTRIBUTE_MAX` of the CUDA 13.0 headers: attributes are below it.
const FUNC_ATTRIBUTE_MAX: c_int = 16;

/// `CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK`.
pub const ATTR_MAX_THREADS_PER_BLOCK: c_int = 0;
/// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
pub const ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES: c_int = 8;

/// An attribute of a function, cached after the first read.
fn get_attribute(h: *mut c_void, attrib: c_int) -> Result<c_int, CUresult> {
    require_current()?;
    let f = function(h)?;
    if !(0..FUNC_ATTRIBUTE_MAX).contains(&attrib) {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    f.attribute(attrib)
}

fn set_attribute(h: *mut c_void, attrib: c_int, value: c_int) -> Result<CUresult, CUresult> {
    require_current()?;
    let f = function(h)?;
    if !(0..FUNC_ATTRIBUTE_MAX).contains(&attrib) {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver::get()?;
    d.dev
        .set_func_attribute(f.handle(), attrib as u32, value)
        .map_err(|e| driver::error_of(&e))?;
    // Setting one attribute may change what others read (the dynamic shared memory limit and
    // the carveout move together): read them afresh.
    f.attributes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuFuncGetAttribute`.
///
/// # Safety
/// `pi` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    f: CUfunction,
) -> CUresult {
    run("cuFuncGetAttribute", || {
        let v = get_attribute(f.cast(), attrib)?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(pi, v) })
    })
}

/// `cuFuncSetAttribute`.
#[no_mangle]
pub extern "C" fn cuFuncSetAttribute(f: CUfunction, attrib: c_int, value: c_int) -> CUresult {
    run("cuFuncSetAttribute", || {
        set_attribute(f.cast(), attrib, value)
    })
}

/// `cuKernelGetAttribute`: the one device.
///
/// # Safety
/// `pi` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuKernelGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    k: CUkernel,
    dev: c_int,
) -> CUresult {
    run("cuKernelGetAttribute", || {
        if dev != super::device::DEVICE {
            return Err(CUresult::CUDA_ERROR_INVALID_DEVICE);
        }
        let v = get_attribute(k.cast(), attrib)?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(pi, v) })
    })
}

/// `cuKernelSetAttribute`: the one device.
#[no_mangle]
pub extern "C" fn cuKernelSetAttribute(
    attrib: c_int,
    value: c_int,
    k: CUkernel,
    dev: c_int,
) -> CUresult {
    run("cuKernelSetAttribute", || {
        if dev != super::device::DEVICE {
            return Err(CUresult::CUDA_ERROR_INVALID_DEVICE);
        }
        set_attribute(k.cast(), attrib, value)
    })
}

/// `cuFuncSetCacheConfig`: a preference; vgpud's driver keeps its default split of the L1
/// cache and shared memory.
#[no_mangle]
pub extern "C" fn cuFuncSetCacheConfig(f: CUfunction, config: c_int) -> CUresult {
    run("cuFuncSetCacheConfig", || {
        function(f.cast())?;
        if !(0..=3).contains(&config) {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuKernelSetCacheConfig`: as `cuFuncSetCacheConfig`.
#[no_mangle]
pub extern "C" fn cuKernelSetCacheConfig(k: CUkernel, config: c_int, dev: c_int) -> CUresult {
    run("cuKernelSetCacheConfig", || {
        function(k.cast())?;
        if dev != super::device::DEVICE {
            return Err(CUresult::CUDA_ERROR_INVALID_DEVICE);
        }
        if !(0..=3).contains(&config) {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuFuncGetModule`.
///
/// # Safety
/// `pm` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuFuncGetModule(pm: *mut CUmodule, f: CUfunction) -> CUresult {
    run("cuFuncGetModule", || {
        let f = function(f.cast())?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(pm, f.module_handle()) })
    })
}
