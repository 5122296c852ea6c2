//! ELF cubins: kernels, their parameter layouts and attributes, and globals.
//!
//! Facts relied on (checked against `cuobjdump -elf` of the fixtures built by nvcc 13.0):
//!
//! * 64-bit little-endian ELF, `e_machine` 190 (EM_CUDA); the SM in `e_flags` bits 8..16 when the
//!   ELF ABI version (`e_ident[8]`) is 8 or more (CUDA 13: flags `0x6005a04` = sm_90), in bits 0..8
//!   before (LLVM `llvm/BinaryFormat/ELF.h`: `ELFABIVERSION_CUDA_V1`/`V2`, `EF_CUDA_SM`,
//!   `EF_CUDA_SM_MASK`). The flags are the same for sm_90 and sm_90a (checked with nvcc 13.0).
//! * A kernel is an `STT_FUNC` symbol with `STO_CUDA_ENTRY` (0x10) in `st_other`; device functions
//!   lack it (and in relocatable cubins have a `.nv.info.<name>` section too, so that section is
//!   no kernel marker).
//! * `.nv.info.<name>` (type `SHT_CUDA_INFO` 0x70000000, `sh_info` = the index of the function's
//!   `.text.<name>` section, which is the symbol's `st_shndx`)
//!   holds records: format u8, attribute u8, then u16 that is the value (formats 1-3) or the
//!   length of a payload that follows (format 4, `EIFMT_SVAL`). Attributes used here:
//!   `EIATTR_KPARAM_INFO` 0x17 (index u32, ordinal u16, offset u16, u32 whose bits 18..32 are the
//!   size), `EIATTR_KPARAM_INFO_V2` 0x45 (for parameters too big for 14 bits: index u32, ordinal
//!   u16, offset u16, size u16, flags u16), `EIATTR_CBANK_PARAM_SIZE` 0x19 (the parameters' total
//!   size as the u16 value), `EIATTR_PARAM_CBANK` 0x0a (symbol u32, bank offset u16, size u16),
//!   `EIATTR_MAX_THREADS` 0x05 (`__launch_bounds__`/`.maxntid`: x, y, z u32), `EIATTR_REQNTID`
//!   0x10 (`.reqntid`: x, y, z u32), `EIATTR_CTA_PER_CLUSTER` 0x3d (`__cluster_dims__`: x, y, z
//!   u32). The module-wide `.nv.info` holds `EIATTR_REGCOUNT` 0x2f
//!   (symbol u32, registers u32) and `EIATTR_FRAME_SIZE` 0x11 (symbol u32, bytes u32) per
//!   function. Attribute numbers: the EIATTR table of NVIDIA's
//!   tools as listed by cuobjdump; record layouts from the fixtures' bytes and the research notes
//!   (`shared/libcuda-research.md` §4).
//! * Static shared memory of a kernel: the size of its `.nv.shared.<name>` section (in linked sm_90
//!   cubins this includes the 1 KiB the system reserves; relocatable cubins lack it).
//! * Globals (`__device__`, `__constant__`): `STT_OBJECT` symbols (type 13 in relocatable cubins)
//!   defined in `.nv.global*` or `.nv.constant<N>` sections other than bank 0 (the parameters);
//!   `__managed__` ones have `STO_CUDA_MANAGED` (4) in `st_other` (both `STO_` values as in
//!   cuda-gdb's `cuda-tdep.c`).

use std::collections::HashMap;

use crate::bytes::{slice, u16_at, u32_at, u64_at, u8_at};
use crate::error::{Error, Result};
use crate::{Global, GlobalSpace, Kernel, Module, Param, Source};

const EM_CUDA: u16 = 190;
const SHT_SYMTAB: u32 = 2;
const SHT_NOBITS: u32 = 8;
const SHT_CUDA_INFO: u32 = 0x7000_0000;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;
/// Variables in relocatable cubins.
const STT_CUDA_OBJECT: u8 = 13;
const STO_CUDA_ENTRY: u8 = 0x10;
const STO_CUDA_MANAGED: u8 = 0x04;
const SHN_LORESERVE: u16 = 0xff00;

const EIFMT_SVAL: u8 = 4;
const EIATTR_MAX_THREADS: u8 = 0x05;
const EIATTR_PARAM_CBANK: u8 = 0x0a;
const EIATTR_REQNTID: u8 = 0x10;
const EIATTR_FRAME_SIZE: u8 = 0x11;
const EIATTR_KPARAM_INFO: u8 = 0x17;
const EIATTR_CBANK_PARAM_SIZE: u8 = 0x19;
const EIATTR_REGCOUNT: u8 = 0x2f;
const EIATTR_CTA_PER_CLUSTER: u8 = 0x3d;
const EIATTR_KPARAM_INFO_V2: u8 = 0x45;

/// An ELF file header's facts that locate everything else.
pub(crate) struct Header {
    pub(crate) abi_version: u8,
    pub(crate) flags: u32,
    pub(crate) phoff: u64,
    pub(crate) phentsize: u16,
    pub(crate) phnum: u16,
    pub(crate) shoff: u64,
    pub(crate) shentsize: u16,
    pub(crate) shnum: u16,
    pub(crate) shstrndx: u16,
}

/// Size of the ELF64 file header.
pub(crate) const EHDR_SIZE: u64 = 64;
const SHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const SYM_SIZE: u64 = 24;

pub(crate) fn parse_header(data: &[u8]) -> Result<Header> {
    const W: &str = "ELF header";
    let ident = slice(data, 0, 16, W)?;
    if &ident[..4] != b"\x7fELF" {
        return Err(Error::UnknownFormat);
    }
    if ident[4] != 2 {
        return Err(Error::BadField {
            what: "ELF class (only 64-bit cubins)",
            value: ident[4].into(),
        });
    }
    if ident[5] != 1 {
        return Err(Error::BadField {
            what: "ELF data encoding",
            value: ident[5].into(),
        });
    }
    let machine = u16_at(data, 18, W)?;
    if machine != EM_CUDA {
        return Err(Error::BadField {
            what: "ELF machine",
            value: machine.into(),
        });
    }
    let h = Header {
        abi_version: ident[8],
        flags: u32_at(data, 48, W)?,
        phoff: u64_at(data, 32, W)?,
        phentsize: u16_at(data, 54, W)?,
        phnum: u16_at(data, 56, W)?,
        shoff: u64_at(data, 40, W)?,
        shentsize: u16_at(data, 58, W)?,
        shnum: u16_at(data, 60, W)?,
        shstrndx: u16_at(data, 62, W)?,
    };
    if h.shnum != 0 && u64::from(h.shentsize) < SHDR_SIZE {
        return Err(Error::BadField {
            what: "ELF section header size",
            value: h.shentsize.into(),
        });
    }
    if h.phnum != 0 && u64::from(h.phentsize) < PHDR_SIZE {
        return Err(Error::BadField {
            what: "ELF program header size",
            value: h.phentsize.into(),
        });
    }
    Ok(h)
}

impl Header {
    /// The SM the SASS is for (90 for sm_90).
    pub(crate) fn arch(&self) -> u32 {
        if self.abi_version >= 8 {
            (self.flags >> 8) & 0xff
        } else {
            self.flags & 0xff
        }
    }
}

/// The fields of a section header that this parser uses.
#[derive(Clone, Copy)]
struct Section {
    name: u32,
    ty: u32,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
}

/// The section headers. Their count is bounded by the bytes present (each takes 64), so a hostile
/// count cannot make this allocate more than the input's size.
fn sections(data: &[u8], h: &Header) -> Result<Vec<Section>> {
    let read = |i: u64| -> Result<Section> {
        let off = h
            .shoff
            .checked_add(i * u64::from(h.shentsize))
            .ok_or(Error::BadField {
                what: "ELF section header offset",
                value: h.shoff,
            })?;
        let sh = slice(data, off, SHDR_SIZE, "ELF section header")?;
        Ok(Section {
            name: u32_at(sh, 0, "")?,
            ty: u32_at(sh, 4, "")?,
            offset: u64_at(sh, 24, "")?,
            size: u64_at(sh, 32, "")?,
            link: u32_at(sh, 40, "")?,
            info: u32_at(sh, 44, "")?,
        })
    };
    if h.shoff == 0 {
        return Ok(Vec::new());
    }
    // Extended numbering: more than 0xff00 sections keep the count in section 0's size.
    let count = if h.shnum == 0 {
        read(0)?.size
    } else {
        h.shnum.into()
    };
    let table = count
        .checked_mul(u64::from(h.shentsize))
        .ok_or(Error::BadField {
            what: "ELF section count",
            value: count,
        })?;
    slice(data, h.shoff, table, "ELF section header table")?;
    (0..count).map(read).collect()
}

/// The bytes of a section; empty for `SHT_NOBITS`.
fn section_data<'a>(data: &'a [u8], s: &Section) -> Result<&'a [u8]> {
    if s.ty == SHT_NOBITS {
        return Ok(&[]);
    }
    slice(data, s.offset, s.size, "ELF section")
}

/// The last byte any header, section or segment of the image occupies.
pub(crate) fn extent(data: &[u8], h: &Header) -> Result<u64> {
    let mut end = EHDR_SIZE;
    let table_end = |off: u64, n: u64, size: u16| off.saturating_add(n.saturating_mul(size.into()));
    if h.phnum != 0 {
        let ph_end = table_end(h.phoff, h.phnum.into(), h.phentsize);
        slice(data, 0, ph_end, "ELF program header table")?;
        end = end.max(ph_end);
        for i in 0..u64::from(h.phnum) {
            let off = h.phoff + i * u64::from(h.phentsize);
            let p_offset = u64_at(data, off + 8, "ELF program header")?;
            let p_filesz = u64_at(data, off + 32, "ELF program header")?;
            if p_filesz != 0 {
                end = end.max(p_offset.saturating_add(p_filesz));
            }
        }
    }
    let sections = sections(data, h)?;
    if !sections.is_empty() {
        end = end.max(table_end(h.shoff, sections.len() as u64, h.shentsize));
    }
    for s in &sections {
        if s.ty != SHT_NOBITS && s.ty != 0 {
            end = end.max(s.offset.saturating_add(s.size));
        }
    }
    Ok(end)
}

struct Symbol {
    /// Offset of the name in the string table, read only for the symbols kept.
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    size: u64,
}

/// Parses an ELF cubin into the kernels and globals it declares.
pub fn parse(data: &[u8]) -> Result<Module> {
    let h = parse_header(data)?;
    // A truncated image is refused even where the parts read below survive: the driver would
    // refuse it too.
    let end = extent(data, &h)?;
    if end > data.len() as u64 {
        return Err(Error::Truncated {
            what: "ELF image",
            needed: end,
            available: data.len() as u64,
        });
    }
    let sections = sections(data, &h)?;
    let shstrndx = if h.shstrndx == 0xffff {
        sections.first().map_or(0, |s| s.link)
    } else {
        h.shstrndx.into()
    };
    let shstr = match sections.get(shstrndx as usize) {
        Some(s) => section_data(data, s)?,
        None => &[],
    };
    let mut names_read = NameReader {
        left: (data.len() as u64).saturating_mul(2).saturating_add(4096),
    };
    let names: Vec<&[u8]> = sections
        .iter()
        .map(|s| names_read.read(shstr, s.name, "ELF section name"))
        .collect::<Result<_>>()?;
    let by_name: HashMap<&[u8], usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    // `.nv.info.<name>` by the index of the `.text.<name>` it describes (its `sh_info`).
    let info_by_text: HashMap<u32, usize> = sections
        .iter()
        .zip(&names)
        .enumerate()
        .filter(|(_, (s, n))| s.ty == SHT_CUDA_INFO && n.starts_with(b".nv.info."))
        .map(|(i, (s, _))| (s.info, i))
        .collect();

    let (symbols, strtab) = match sections.iter().position(|s| s.ty == SHT_SYMTAB) {
        Some(i) => symbols(data, &sections, i)?,
        None => (Vec::new(), &[][..]),
    };
    let function_info = match by_name.get(&b".nv.info"[..]) {
        Some(&i) => function_info(section_data(data, &sections[i])?)?,
        None => HashMap::new(),
    };

    let mut own = |name_offset: u32| -> Result<(&[u8], String)> {
        let name = names_read.read(strtab, name_offset, "ELF symbol name")?;
        Ok((name, String::from_utf8_lossy(name).into_owned()))
    };
    let by_suffix = |prefix: &[u8], name: &[u8]| {
        let mut wanted = Vec::with_capacity(prefix.len() + name.len());
        wanted.extend_from_slice(prefix);
        wanted.extend_from_slice(name);
        by_name.get(wanted.as_slice()).copied()
    };

    let mut kernels = Vec::new();
    let mut globals = Vec::new();
    for (index, sym) in symbols.iter().enumerate() {
        let ty = sym.info & 0xf;
        if ty == STT_FUNC && sym.other & STO_CUDA_ENTRY != 0 {
            let (name, owned) = own(sym.name)?;
            let mut kernel = Kernel {
                name: owned,
                ..Kernel::default()
            };
            let info = info_by_text
                .get(&u32::from(sym.shndx))
                .copied()
                .or_else(|| by_suffix(b".nv.info.", name));
            if let Some(i) = info {
                apply_info(&mut kernel, section_data(data, &sections[i])?)?;
            }
            kernel.static_shared = by_suffix(b".nv.shared.", name)
                .map(|i| u32::try_from(sections[i].size).unwrap_or(u32::MAX));
            let info = u32::try_from(index)
                .ok()
                .and_then(|i| function_info.get(&i).copied())
                .unwrap_or_default();
            kernel.registers = info.registers;
            kernel.frame_size = info.frame_size;
            kernels.push(kernel);
        } else if (ty == STT_OBJECT || ty == STT_CUDA_OBJECT)
            && sym.name != 0
            && sym.shndx != 0
            && sym.shndx < SHN_LORESERVE
        {
            let Some(section) = names.get(usize::from(sym.shndx)) else {
                continue;
            };
            let space = if section.starts_with(b".nv.global") {
                GlobalSpace::Global
            } else if section.starts_with(b".nv.constant") && !section.starts_with(b".nv.constant0")
            {
                GlobalSpace::Constant
            } else {
                continue;
            };
            let (name, owned) = own(sym.name)?;
            if name.is_empty() {
                continue;
            }
            globals.push(Global {
                name: owned,
                size: sym.size,
                space,
                managed: sym.other & STO_CUDA_MANAGED != 0,
            });
        }
    }
    Ok(Module {
        source: Source::sass(h.arch()),
        kernels,
        globals,
    })
}

/// The symbols of the table in section `symtab`, and the string table their names are in.
fn symbols<'a>(
    data: &'a [u8],
    sections: &[Section],
    symtab: usize,
) -> Result<(Vec<Symbol>, &'a [u8])> {
    let st = &sections[symtab];
    let table = section_data(data, st)?;
    let strtab = match sections.get(st.link as usize) {
        Some(s) => section_data(data, s)?,
        None => {
            return Err(Error::BadField {
                what: "ELF symbol table link",
                value: st.link.into(),
            })
        }
    };
    let count = table.len() as u64 / SYM_SIZE;
    let symbols = (0..count)
        .map(|i| {
            let e = slice(table, i * SYM_SIZE, SYM_SIZE, "ELF symbol")?;
            Ok(Symbol {
                name: u32_at(e, 0, "")?,
                info: u8_at(e, 4, "")?,
                other: u8_at(e, 5, "")?,
                shndx: u16_at(e, 6, "")?,
                size: u64_at(e, 16, "")?,
            })
        })
        .collect::<Result<_>>()?;
    Ok((symbols, strtab))
}

/// Reads NUL-terminated names within a budget of bytes scanned, for the whole image: a hostile
/// image could point thousands of headers at one long string, and reading (or copying) it each
/// time would cost the square of the image's size. Twice the image (plus a little) is generous
/// for real ones: each name is stored once, or as the tail of one other.
struct NameReader {
    left: u64,
}

impl NameReader {
    fn read<'a>(&mut self, table: &'a [u8], offset: u32, what: &'static str) -> Result<&'a [u8]> {
        let rest = slice(
            table,
            offset.into(),
            (table.len() as u64).saturating_sub(offset.into()),
            what,
        )?;
        let window = &rest[..rest
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX))];
        let Some(len) = window.iter().position(|&b| b == 0) else {
            return Err(if window.len() < rest.len() {
                Error::BadField {
                    what: "ELF names (total length)",
                    value: rest.len() as u64,
                }
            } else {
                Error::Truncated {
                    what,
                    needed: table.len() as u64 + 1,
                    available: table.len() as u64,
                }
            });
        };
        // len < window.len() <= left.
        self.left -= len as u64 + 1;
        Ok(&rest[..len])
    }
}

/// One `.nv.info` record: attribute, the u16 of the record header, and the payload (empty unless
/// the format is `EIFMT_SVAL`).
fn records(info: &[u8]) -> impl Iterator<Item = Result<(u8, u16, &[u8])>> {
    let mut pos = 0u64;
    std::iter::from_fn(move || {
        if pos >= info.len() as u64 {
            return None;
        }
        let record = (|| {
            let fmt = u8_at(info, pos, "nv.info record")?;
            let attr = u8_at(info, pos + 1, "nv.info record")?;
            let value = u16_at(info, pos + 2, "nv.info record")?;
            pos += 4;
            let payload = match fmt {
                EIFMT_SVAL => {
                    let p = slice(info, pos, value.into(), "nv.info record payload")?;
                    pos += u64::from(value);
                    p
                }
                1..=3 => &[][..],
                _ => {
                    return Err(Error::BadField {
                        what: "nv.info record format",
                        value: fmt.into(),
                    })
                }
            };
            Ok((attr, value, payload))
        })();
        if record.is_err() {
            pos = u64::MAX;
        }
        Some(record)
    })
}

/// What the module-wide `.nv.info` says of one function.
#[derive(Default, Clone, Copy)]
struct FunctionInfo {
    registers: Option<u32>,
    frame_size: Option<u32>,
}

/// The module-wide `.nv.info` records (`EIATTR_REGCOUNT`, `EIATTR_FRAME_SIZE`: symbol index u32,
/// value u32), by function symbol index.
fn function_info(info: &[u8]) -> Result<HashMap<u32, FunctionInfo>> {
    let mut out: HashMap<u32, FunctionInfo> = HashMap::new();
    for r in records(info) {
        let (attr, _, p) = r?;
        if (attr == EIATTR_REGCOUNT || attr == EIATTR_FRAME_SIZE) && p.len() >= 8 {
            let f = out.entry(u32_at(p, 0, "")?).or_default();
            let value = Some(u32_at(p, 4, "")?);
            if attr == EIATTR_REGCOUNT {
                f.registers = value;
            } else {
                f.frame_size = value;
            }
        }
    }
    Ok(out)
}

fn xyz(p: &[u8]) -> Result<[u32; 3]> {
    Ok([
        u32_at(p, 0, "nv.info dims")?,
        u32_at(p, 4, "nv.info dims")?,
        u32_at(p, 8, "nv.info dims")?,
    ])
}

fn apply_info(k: &mut Kernel, info: &[u8]) -> Result<()> {
    // (ordinal, offset, size); sorted by ordinal at the end: the compiler lists them backwards.
    let mut params: Vec<(u16, u32, u32)> = Vec::new();
    let mut cbank_size = None;
    for r in records(info) {
        let (attr, value, p) = r?;
        match attr {
            EIATTR_KPARAM_INFO => {
                let word = u32_at(p, 8, "EIATTR_KPARAM_INFO")?;
                params.push((u16_at(p, 4, "")?, u16_at(p, 6, "")?.into(), word >> 18));
            }
            EIATTR_KPARAM_INFO_V2 => {
                let size = u16_at(p, 8, "EIATTR_KPARAM_INFO_V2")?;
                params.push((u16_at(p, 4, "")?, u16_at(p, 6, "")?.into(), size.into()));
            }
            EIATTR_CBANK_PARAM_SIZE => cbank_size = Some(u32::from(value)),
            EIATTR_PARAM_CBANK if cbank_size.is_none() => {
                cbank_size = Some(u16_at(p, 6, "EIATTR_PARAM_CBANK")?.into());
            }
            EIATTR_MAX_THREADS => k.max_threads = Some(xyz(p)?),
            EIATTR_REQNTID => k.req_threads = Some(xyz(p)?),
            EIATTR_CTA_PER_CLUSTER => k.cluster_dims = Some(xyz(p)?),
            _ => {}
        }
    }
    params.sort_by_key(|p| p.0);
    if let Some(w) = params.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::BadField {
            what: "kernel parameter ordinal given twice",
            value: w[0].0.into(),
        });
    }
    k.params = params
        .into_iter()
        .map(|(_, offset, size)| Param { offset, size })
        .collect();
    let end = k
        .params
        .iter()
        .map(|p| p.offset + p.size)
        .max()
        .unwrap_or(0);
    k.param_size = cbank_size.unwrap_or(end).max(end);
    Ok(())
}
