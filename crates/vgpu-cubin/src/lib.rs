//! Parsing CUDA device code images — fatbin containers, ELF cubins and PTX text — into the
//! kernels, parameter layouts and globals they declare. Byte slices in, plain data out: no I/O,
//! no `unsafe`, and no panic or unbounded allocation on hostile input (vgpud parses what guests
//! send), so every offset and length read from an image is checked.
//!
//! Users: the guest driver (`vgpu-cuda`) answers `cuModuleGetFunction`, `cuLibraryGetKernel`,
//! `cuFuncGetParamInfo` and `cuModuleGetGlobal` locally and measures images that the API passes
//! by pointer only ([`image_len`]); vgpud's cpu reference backend records what an image declares.
//!
//! ```
//! # fn main() -> Result<(), vgpu_cubin::Error> {
//! let ptx = b".version 9.0\n.target sm_90\n.address_size 64\n\
//!             .visible .entry add(.param .u64 a, .param .u32 n) { ret; }\0";
//! let image = vgpu_cubin::Image::parse(ptx)?;
//! let add = image.kernel("add").unwrap();
//! assert_eq!(add.params, [vgpu_cubin::Param { offset: 0, size: 8 }, vgpu_cubin::Param { offset: 8, size: 4 }]);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod bytes;
pub mod elf;
mod error;
pub mod fatbin;
pub mod ptx;

use std::collections::BTreeMap;

pub use error::{Error, Result};
pub use fatbin::{Compression, Entry, EntryKind, Fatbin, Wrapper, DEFAULT_DECOMPRESS_LIMIT};

/// The kinds of bytes a module-loading call may be handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// A fatbin container (magic `0xBA55ED50`).
    Fatbin,
    /// A `__fatBinC_Wrapper_t` (magic `0x466243B1`) pointing at a fatbin elsewhere.
    Wrapper,
    /// An ELF cubin.
    Elf,
    /// PTX text.
    Ptx,
}

/// What the first bytes say the image is; `None` for too few bytes or unknown magic.
pub fn detect(bytes: &[u8]) -> Option<Format> {
    let magic = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    match magic {
        fatbin::FATBIN_MAGIC => Some(Format::Fatbin),
        fatbin::WRAPPER_MAGIC => Some(Format::Wrapper),
        _ if bytes.starts_with(b"\x7fELF") => Some(Format::Elf),
        // PTX starts with text: comments, blank lines or a directive.
        _ if bytes[..4]
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) =>
        {
            Some(Format::Ptx)
        }
        _ => None,
    }
}

/// Answer of [`image_len`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageLen {
    /// The image is this many bytes long (PTX: up to and including its NUL).
    Exact(usize),
    /// The prefix is too short to tell: call again with at least this many bytes. For PTX the end
    /// is unknown until the NUL shows up; read on (geometrically, or page by page).
    NeedMore(usize),
}

/// The length of the image that starts with `prefix`, for APIs that pass only a pointer
/// (`cuModuleLoadData`, `cuLibraryLoadData`): a fatbin's header gives header size + entries
/// size; an ELF's extent is the furthest end of its headers, sections and segments; PTX ends at
/// its NUL. A [`Format::Wrapper`] measures [`Wrapper::SIZE`]: its fatbin, at its `data` address,
/// is measured separately. The caller should cap what it is willing to read: a hostile header can
/// claim any length.
pub fn image_len(prefix: &[u8]) -> Result<ImageLen> {
    if prefix.len() < 4 {
        return Ok(match prefix.iter().position(|&b| b == 0) {
            Some(nul) => ImageLen::Exact(nul + 1),
            None => ImageLen::NeedMore(4),
        });
    }
    let need = |n: u64| Ok(ImageLen::NeedMore(usize::try_from(n).unwrap_or(usize::MAX)));
    let exact = |n: u64| {
        usize::try_from(n)
            .map(ImageLen::Exact)
            .map_err(|_| Error::BadField {
                what: "image length",
                value: n,
            })
    };
    match detect(prefix).ok_or(Error::UnknownFormat)? {
        Format::Fatbin => {
            if prefix.len() < fatbin::HEADER_SIZE {
                return need(fatbin::HEADER_SIZE as u64);
            }
            let (header, entries) = fatbin::parse_header(prefix)?;
            let len = u64::from(header).checked_add(entries);
            exact(len.ok_or(Error::BadField {
                what: "fatbin size",
                value: entries,
            })?)
        }
        Format::Wrapper => Ok(ImageLen::Exact(Wrapper::SIZE)),
        Format::Elf => {
            if (prefix.len() as u64) < elf::EHDR_SIZE {
                return need(elf::EHDR_SIZE);
            }
            let h = elf::parse_header(prefix)?;
            match elf::extent(prefix, &h) {
                Ok(end) => exact(end),
                Err(Error::Truncated { needed, .. }) => need(needed),
                Err(e) => Err(e),
            }
        }
        Format::Ptx => match prefix.iter().position(|&b| b == 0) {
            Some(nul) => Ok(ImageLen::Exact(nul + 1)),
            None => Ok(ImageLen::NeedMore(prefix.len() + 1)),
        },
    }
}

/// One kernel parameter's place in the parameter buffer (what `cuFuncGetParamInfo` answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Param {
    /// Byte offset in the buffer.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// A kernel (`__global__` function, PTX `.entry`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Kernel {
    /// The symbol name (mangled for C++ linkage), as `cuModuleGetFunction` takes it.
    pub name: String,
    /// Parameters in declaration order.
    pub params: Vec<Param>,
    /// Total size of the parameters: the end of the last one (SASS: `EIATTR_CBANK_PARAM_SIZE`).
    pub param_size: u32,
    /// `__launch_bounds__` / `.maxntid`: the most threads per block in x, y, z.
    pub max_threads: Option<[u32; 3]>,
    /// `.reqntid`: the block shape the kernel requires.
    pub req_threads: Option<[u32; 3]>,
    /// `__cluster_dims__` / `.reqnctapercluster`: the thread block cluster shape it requires.
    pub cluster_dims: Option<[u32; 3]>,
    /// SASS only: bytes of static shared memory, the size of the `.nv.shared.<name>` section: in
    /// linked sm_90 cubins that includes the 1 KiB the system reserves (2048 for a 1 KiB array),
    /// in relocatable ones not.
    pub static_shared: Option<u32>,
    /// SASS only: registers per thread (`EIATTR_REGCOUNT`).
    pub registers: Option<u32>,
    /// SASS only: bytes of stack frame (local memory) per thread (`EIATTR_FRAME_SIZE`).
    pub frame_size: Option<u32>,
}

/// Where a global variable lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GlobalSpace {
    /// `__device__` (`.global`).
    Global,
    /// `__constant__` (`.const`).
    Constant,
}

/// A module-scope variable that `cuModuleGetGlobal` can find.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Global {
    /// The symbol name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Global or constant memory.
    pub space: GlobalSpace,
    /// `__managed__`: unified memory that the runtime registers (and the module loads eagerly
    /// for, under lazy loading).
    pub managed: bool,
}

/// SASS or PTX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Machine code in an ELF cubin, for a real architecture (`sm_XY`).
    Sass,
    /// PTX text for a virtual architecture (`compute_XY`), JIT-compiled by the driver.
    Ptx,
}

/// Which devices an architecture-specific target is limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// `sm_90`, `compute_90`: SASS runs on later minors of its major version, PTX on any
    /// later device.
    Base,
    /// `sm_100f`: runs on the devices of its family (same major version, minor not below).
    FamilySpecific,
    /// `sm_90a`: runs on exactly that architecture.
    ArchSpecific,
}

/// Which code a [`Module`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    /// SASS or PTX.
    pub code: Code,
    /// 90 for sm_90 or compute_90 (PTX without a `.target sm_NN`: 0).
    pub arch: u32,
    /// Plain, family- or architecture-specific. In a fatbin the entry's flags tell; a bare cubin
    /// does not (its ELF flags are the same for sm_90 and sm_90a), so it reads as
    /// [`Variant::Base`]; PTX tells by the suffix of its `.target`.
    pub variant: Variant,
}

impl Source {
    /// SASS for `arch`, plain.
    pub fn sass(arch: u32) -> Source {
        Source {
            code: Code::Sass,
            arch,
            variant: Variant::Base,
        }
    }

    /// PTX for `arch`, plain.
    pub fn ptx(arch: u32) -> Source {
        Source {
            code: Code::Ptx,
            arch,
            variant: Variant::Base,
        }
    }

    /// Whether a device of compute capability `device` (90 for 9.0) can run this code, SASS
    /// directly or PTX after JIT compilation (CUDA's compatibility rules: SASS within a major
    /// version, PTX forward to any later device, `a` targets on their own architecture only,
    /// `f` targets within their family).
    pub fn runs_on(&self, device: u32) -> bool {
        let same_major = self.arch / 10 == device / 10 && self.arch <= device;
        match (self.variant, self.code) {
            (Variant::ArchSpecific, _) => self.arch == device,
            (Variant::FamilySpecific, _) | (Variant::Base, Code::Sass) => same_major,
            (Variant::Base, Code::Ptx) => self.arch <= device,
        }
    }
}

/// What one piece of code (one ELF or one PTX text) declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// SASS or PTX, and for which architecture.
    pub source: Source,
    /// Its kernels.
    pub kernels: Vec<Kernel>,
    /// Its globals.
    pub globals: Vec<Global>,
}

impl Module {
    /// The kernel named `name` (a linear search: modules keep their image's order).
    pub fn kernel(&self, name: &str) -> Option<&Kernel> {
        self.kernels.iter().find(|k| k.name == name)
    }

    /// The global named `name` (a linear search).
    pub fn global(&self, name: &str) -> Option<&Global> {
        self.globals.iter().find(|g| g.name == name)
    }
}

/// A parsed image: every piece of code in it, and what they declare together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// What the bytes were.
    pub format: Format,
    /// One per ELF or PTX entry (one in all for a bare cubin or PTX), in image order. Entries of
    /// unknown kinds are skipped.
    pub modules: Vec<Module>,
    /// Every kernel any module declares, once per name, sorted by name (which [`Image::kernel`]
    /// relies on): from the first SASS module that has it, else from the first PTX module.
    pub kernels: Vec<Kernel>,
    /// Every global any module declares, once per name, sorted and chosen as kernels are.
    pub globals: Vec<Global>,
}

impl Image {
    /// Parses a fatbin container, ELF cubin or PTX text (NUL-terminated or not), decompressing
    /// at most [`DEFAULT_DECOMPRESS_LIMIT`] bytes of fatbin entries.
    pub fn parse(bytes: &[u8]) -> Result<Image> {
        Image::parse_with_limit(bytes, DEFAULT_DECOMPRESS_LIMIT)
    }

    /// [`Image::parse`] with another ceiling on the bytes decompressed, all entries together.
    pub fn parse_with_limit(bytes: &[u8], limit: u64) -> Result<Image> {
        Image::parse_selected(bytes, limit, None)
    }

    /// Only what a device of compute capability `arch` (90 for 9.0) would load: of a fatbin,
    /// the entry [`Image::for_arch`] would choose, chosen from the entry headers so that no other
    /// entry is decompressed or parsed (cheap enough for the guest driver to do at the first
    /// use of a lazily loaded image); a cubin or PTX text that the device cannot run is
    /// [`Error::NoCodeFor`].
    pub fn parse_for_arch(bytes: &[u8], arch: u32) -> Result<Image> {
        Image::parse_selected(bytes, DEFAULT_DECOMPRESS_LIMIT, Some(arch))
    }

    fn parse_selected(bytes: &[u8], limit: u64, arch: Option<u32>) -> Result<Image> {
        let format = detect(bytes).ok_or(Error::UnknownFormat)?;
        let modules = match format {
            Format::Wrapper => return Err(Error::Wrapper),
            Format::Elf => vec![elf::parse(bytes)?],
            Format::Ptx => vec![ptx::parse(bytes)?],
            Format::Fatbin => {
                let fatbin = Fatbin::parse(bytes)?;
                let entries = fatbin.entries.iter().filter_map(|e| Some((e.source()?, e)));
                let chosen: Vec<&Entry> = match arch {
                    None => entries.map(|(_, e)| e).collect(),
                    Some(arch) => best_for(entries, arch).into_iter().collect(),
                };
                let mut modules = Vec::new();
                let mut left = limit;
                for entry in chosen {
                    // One entry's decompressed bytes live at a time.
                    let contents = entry.contents(left).map_err(|e| match e {
                        Error::TooLarge { .. } => Error::TooLarge { limit },
                        e => e,
                    })?;
                    if entry.compression != Compression::None {
                        left -= contents.len() as u64;
                    }
                    let mut module = match entry.kind {
                        EntryKind::Ptx => ptx::parse(&contents)?,
                        _ => elf::parse(&contents)?,
                    };
                    // The entry header is authoritative: a cubin does not tell its variant, and the
                    // text's .target may be absent.
                    module.source = entry.source().unwrap_or(module.source);
                    modules.push(module);
                }
                modules
            }
        };
        if let Some(arch) = arch {
            if !modules.iter().any(|m| m.source.runs_on(arch)) {
                return Err(Error::NoCodeFor { arch });
            }
        }
        let mut kernels = BTreeMap::new();
        let mut globals = BTreeMap::new();
        let sass_first = modules.iter().filter(|m| m.source.code == Code::Sass);
        let ptx_then = modules.iter().filter(|m| m.source.code == Code::Ptx);
        for m in sass_first.chain(ptx_then) {
            for k in &m.kernels {
                kernels.entry(k.name.as_str()).or_insert(k);
            }
            for g in &m.globals {
                globals.entry(g.name.as_str()).or_insert(g);
            }
        }
        Ok(Image {
            format,
            kernels: kernels.into_values().cloned().collect(),
            globals: globals.into_values().cloned().collect(),
            modules,
        })
    }

    /// The kernel named `name` (a binary search: [`Image::kernels`] is sorted).
    pub fn kernel(&self, name: &str) -> Option<&Kernel> {
        let i = self
            .kernels
            .binary_search_by(|k| k.name.as_str().cmp(name))
            .ok()?;
        self.kernels.get(i)
    }

    /// The global named `name` (a binary search: [`Image::globals`] is sorted).
    pub fn global(&self, name: &str) -> Option<&Global> {
        let i = self
            .globals
            .binary_search_by(|g| g.name.as_str().cmp(name))
            .ok()?;
        self.globals.get(i)
    }

    /// The SM architectures the image has SASS for, ascending, without repeats.
    pub fn sm_versions(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .modules
            .iter()
            .filter(|m| m.source.code == Code::Sass)
            .map(|m| m.source.arch)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether the image carries PTX (so a device without matching SASS can JIT it).
    pub fn has_ptx(&self) -> bool {
        self.modules.iter().any(|m| m.source.code == Code::Ptx)
    }

    /// The module a device of compute capability `arch` (90 for 9.0) would load: SASS that runs
    /// on it ([`Source::runs_on`]) for the highest architecture, the most specific variant first,
    /// else such PTX (JIT-compiled); `None`: no usable code (`CUDA_ERROR_NO_BINARY_FOR_GPU`).
    pub fn for_arch(&self, arch: u32) -> Option<&Module> {
        best_for(self.modules.iter().map(|m| (m.source, m)), arch)
    }
}

/// Of `candidates`, the one a device of compute capability `arch` loads (see [`Image::for_arch`]).
fn best_for<T>(candidates: impl Iterator<Item = (Source, T)> + Clone, arch: u32) -> Option<T> {
    let best = |code: Code| {
        candidates
            .clone()
            .filter(|(s, _)| s.code == code && s.runs_on(arch))
            .max_by_key(|(s, _)| (s.arch, s.variant))
    };
    best(Code::Sass).or_else(|| best(Code::Ptx)).map(|(_, t)| t)
}
