//! PTX text: entry points with their parameter layouts, and module-scope `.global`/`.const`
//! variables.
//!
//! Parameters are laid out as the driver lays out a PTX kernel's parameter buffer (and as ptxas
//! records it in `EIATTR_KPARAM_INFO`, checked against the fixtures): each at the next multiple of
//! its alignment, which is the explicit `.align N` or else the size of its type; the total is the
//! end of the last one, unpadded. After `.ptr`, an `.align` is the pointee's, not the parameter's
//! (PTX ISA, "Kernel Function Parameter Attributes").

use std::borrow::Cow;
use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::{Global, GlobalSpace, Kernel, Module, Param, Source, Variant};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok<'a> {
    /// A directive (`.entry`), identifier, number or other word.
    Word(&'a str),
    /// One punctuation character.
    Punct(u8),
    /// A quoted string (contents never matter here).
    Str,
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    line: u32,
}

impl<'a> Lexer<'a> {
    fn next_tok(&mut self) -> Result<Option<(Tok<'a>, u32)>> {
        let b = self.src.as_bytes();
        loop {
            let Some(&c) = b.get(self.pos) else {
                return Ok(None);
            };
            match c {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                c if c.is_ascii_whitespace() || c == 0 => self.pos += 1,
                b'/' if b.get(self.pos + 1) == Some(&b'/') => {
                    while self.pos < b.len() && b[self.pos] != b'\n' {
                        self.pos += 1;
                    }
                }
                b'/' if b.get(self.pos + 1) == Some(&b'*') => {
                    let start = self.line;
                    self.pos += 2;
                    loop {
                        match b.get(self.pos) {
                            None => return Err(ptx_err(start, "unterminated comment")),
                            Some(b'*') if b.get(self.pos + 1) == Some(&b'/') => {
                                self.pos += 2;
                                break;
                            }
                            Some(&c) => {
                                if c == b'\n' {
                                    self.line += 1;
                                }
                                self.pos += 1;
                            }
                        }
                    }
                }
                b'"' => {
                    let start = self.line;
                    self.pos += 1;
                    loop {
                        match b.get(self.pos) {
                            None | Some(b'\n') => {
                                return Err(ptx_err(start, "unterminated string"))
                            }
                            Some(b'\\') => self.pos += 2,
                            Some(b'"') => {
                                self.pos += 1;
                                break;
                            }
                            Some(_) => self.pos += 1,
                        }
                    }
                    return Ok(Some((Tok::Str, start)));
                }
                c if is_word(c) => {
                    let start = self.pos;
                    self.pos += 1;
                    // A directive ends at the next dot: `.ptr.global.align` is three of them (PTX
                    // ISA, "Kernel Function Parameter Attributes"). Instructions such as
                    // `ld.param.u32` start with a letter and stay whole.
                    let directive = c == b'.';
                    while self.pos < b.len()
                        && is_word(b[self.pos])
                        && !(directive && b[self.pos] == b'.')
                    {
                        self.pos += 1;
                    }
                    // Word bytes are ASCII, so these are char boundaries.
                    return Ok(Some((Tok::Word(&self.src[start..self.pos]), self.line)));
                }
                c if c.is_ascii() => {
                    self.pos += 1;
                    return Ok(Some((Tok::Punct(c), self.line)));
                }
                _ => {
                    return Err(ptx_err(
                        self.line,
                        "non-ASCII character outside a comment or string",
                    ))
                }
            }
        }
    }
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'%' | b'.')
}

fn ptx_err(line: u32, reason: impl Into<String>) -> Error {
    Error::Ptx {
        line,
        reason: reason.into(),
    }
}

/// Top-level directives that end with their line instead of a `;` (a pattern).
macro_rules! line_directives {
    () => {
        ".version" | ".target" | ".address_size" | ".file"
    };
}

/// The PTX text of `bytes`: up to the first NUL if there is one. Bytes that are not UTF-8
/// become U+FFFD: harmless in comments and strings (a path in a `.file`), an error elsewhere.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
}

/// Parses PTX text (NUL-terminated or not) into the entries and variables it declares.
pub fn parse(bytes: &[u8]) -> Result<Module> {
    let text = text(bytes);
    let src: &str = &text;
    let mut lx = Lexer {
        src,
        pos: 0,
        line: 1,
    };
    let mut out = Collected {
        target: Source::ptx(0),
        kernels: Vec::new(),
        kernel_index: HashMap::new(),
        globals: Vec::new(),
    };
    // One top-level statement at a time: tokens up to `;` or to a function body's `{`.
    let mut stmt: Vec<(Tok, u32)> = Vec::new();
    let mut depth = 0u32;
    // Whether the statement so far declares a function, so that a `{` at depth 0 opens its body
    // (kept up to date rather than searched for: a statement may be long).
    let mut is_func = false;
    while let Some((tok, line)) = lx.next_tok()? {
        if stmt.is_empty() {
            is_func = false;
        }
        match tok {
            Tok::Punct(b'{') if depth == 0 && is_func => {
                out.statement(&stmt, true)?;
                stmt.clear();
                skip_body(&mut lx, line)?;
            }
            Tok::Punct(b';') if depth == 0 => {
                out.statement(&stmt, false)?;
                stmt.clear();
            }
            Tok::Punct(c @ (b'{' | b'(' | b'[')) => {
                depth += 1;
                stmt.push((Tok::Punct(c), line));
            }
            Tok::Punct(c @ (b'}' | b')' | b']')) => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| ptx_err(line, "unbalanced bracket"))?;
                stmt.push((Tok::Punct(c), line));
                // Debug sections (`.section .debug_info { ... }`) end with their brace.
                if depth == 0 && stmt.first().map(|t| &t.0) == Some(&Tok::Word(".section")) {
                    stmt.clear();
                }
            }
            // These directives end at the line's end, without `;`.
            Tok::Word(w @ line_directives!()) if depth == 0 => {
                out.statement(&stmt, false)?;
                stmt.clear();
                is_func = false;
                stmt.push((Tok::Word(w), line));
            }
            t => {
                if let Some((Tok::Word(line_directives!()), l)) = stmt.first() {
                    if *l != line {
                        out.statement(&stmt, false)?;
                        stmt.clear();
                        is_func = false;
                    }
                }
                is_func |= matches!(t, Tok::Word(".entry" | ".func"));
                stmt.push((t, line));
            }
        }
    }
    if depth != 0 {
        return Err(ptx_err(lx.line, "unbalanced bracket at end of text"));
    }
    out.statement(&stmt, false)?;
    Ok(Module {
        source: out.target,
        kernels: out.kernels,
        globals: out.globals,
    })
}

fn skip_body(lx: &mut Lexer, line: u32) -> Result<()> {
    let mut depth = 1u32;
    while let Some((tok, _)) = lx.next_tok()? {
        match tok {
            Tok::Punct(b'{') => depth += 1,
            Tok::Punct(b'}') => {
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    Err(ptx_err(line, "function body not closed"))
}

/// What a PTX text declares, as it is read.
struct Collected {
    target: Source,
    kernels: Vec<Kernel>,
    /// Index in `kernels` by name: entries may be declared (`.entry k(...);`) before they are
    /// defined, and are recorded once.
    kernel_index: HashMap<String, usize>,
    globals: Vec<Global>,
}

impl Collected {
    /// Records one top-level statement; `has_body`: a function body followed it.
    fn statement(&mut self, stmt: &[(Tok, u32)], has_body: bool) -> Result<()> {
        let target = &mut self.target;
        let Some((first, line)) = stmt.first() else {
            return Ok(());
        };
        let words = || {
            stmt.iter()
                .filter_map(|(t, _)| if let Tok::Word(w) = t { Some(*w) } else { None })
        };
        if *first == Tok::Word(".target") {
            // `.target sm_90a, debug`: the first sm_NN names the architecture.
            if let Some(sm) = words().find_map(|w| w.strip_prefix("sm_")) {
                let digits = sm.len() - sm.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                target.arch = sm[..digits]
                    .parse()
                    .map_err(|_| ptx_err(*line, format!("bad target sm_{sm}")))?;
                target.variant = match &sm[digits..] {
                    "a" => Variant::ArchSpecific,
                    "f" => Variant::FamilySpecific,
                    _ => Variant::Base,
                };
            }
            return Ok(());
        }
        if let Some(i) = stmt.iter().position(|(t, _)| *t == Tok::Word(".entry")) {
            // An `.extern` entry is defined elsewhere.
            if words().any(|w| w == ".extern") {
                return Ok(());
            }
            let kernel = entry(&stmt[i + 1..], *line)?;
            match self.kernel_index.get(&kernel.name) {
                // The definition's performance directives win over a declaration's.
                Some(&k) if has_body => self.kernels[k] = kernel,
                Some(_) => {}
                None => {
                    self.kernel_index
                        .insert(kernel.name.clone(), self.kernels.len());
                    self.kernels.push(kernel);
                }
            }
            return Ok(());
        }
        if words().any(|w| w == ".func" || w == ".extern") {
            return Ok(());
        }
        let space = if words().any(|w| w == ".global") {
            GlobalSpace::Global
        } else if words().any(|w| w == ".const") {
            GlobalSpace::Constant
        } else {
            return Ok(());
        };
        // `.global .attribute(.managed) .u32 x;`
        let managed = words().any(|w| w == ".managed");
        for decl in variables(stmt)? {
            self.globals.push(Global {
                name: decl.name.to_owned(),
                size: decl.size,
                space,
                managed,
            });
        }
        Ok(())
    }
}

struct Decl<'a> {
    name: &'a str,
    size: u64,
    align: u64,
}

/// Size of a PTX fundamental type (`.u32` → 4); `None` for anything else.
fn type_size(w: &str) -> Option<u64> {
    Some(match w {
        ".b8" | ".u8" | ".s8" | ".pred" => 1,
        ".b16" | ".u16" | ".s16" | ".f16" | ".bf16" | ".e4m3x2" | ".e5m2x2" => 2,
        ".b32" | ".u32" | ".s32" | ".f32" | ".f16x2" | ".bf16x2" | ".tf32" => 4,
        ".b64" | ".u64" | ".s64" | ".f64" | ".texref" | ".samplerref" | ".surfref" => 8,
        ".b128" => 16,
        _ => return None,
    })
}

/// Parses `[.state] [.align N] [.vN] .type name[dims] [= init] {, name[dims] [= init]}` into
/// declarators; states and attributes other than those are skipped.
fn variables<'a>(stmt: &[(Tok<'a>, u32)]) -> Result<Vec<Decl<'a>>> {
    let mut out = Vec::new();
    let mut i = 0;
    let (mut ty, mut align, mut vec, mut after_ptr) = (None, None, 1u64, false);
    let line = stmt.first().map_or(0, |s| s.1);
    let number = |i: usize| -> Result<u64> {
        match stmt.get(i) {
            Some((Tok::Word(w), l)) => {
                parse_int(w).ok_or_else(|| ptx_err(*l, format!("bad number {w}")))
            }
            _ => Err(ptx_err(line, "number expected")),
        }
    };
    while i < stmt.len() {
        let (tok, l) = &stmt[i];
        match tok {
            Tok::Word(".align") => {
                let n = number(i + 1)?;
                if !after_ptr {
                    align = Some(n);
                }
                i += 2;
            }
            Tok::Word(".ptr") => {
                after_ptr = true;
                i += 1;
            }
            Tok::Word(w @ (".v2" | ".v4" | ".v8")) => {
                vec = w[2..].parse().unwrap_or(1);
                i += 1;
            }
            Tok::Word(w) if type_size(w).is_some() => {
                ty = type_size(w);
                i += 1;
            }
            Tok::Word(w) if w.starts_with('.') => i += 1,
            Tok::Word(name) => {
                let elem = ty
                    .ok_or_else(|| ptx_err(*l, format!("{name}: no type")))?
                    .saturating_mul(vec);
                let mut size = elem;
                let mut unsized_dim = false;
                i += 1;
                // Array dimensions; `[]` takes its length from the initializer.
                while let Some((Tok::Punct(b'['), _)) = stmt.get(i) {
                    let n = match stmt.get(i + 1) {
                        Some((Tok::Punct(b']'), _)) => {
                            unsized_dim = true;
                            i += 2;
                            continue;
                        }
                        _ => number(i + 1)?,
                    };
                    if stmt.get(i + 2).map(|s| &s.0) != Some(&Tok::Punct(b']')) {
                        return Err(ptx_err(*l, format!("{name}: bad array dimension")));
                    }
                    size = size.saturating_mul(n);
                    i += 3;
                }
                let align = align.unwrap_or(elem).max(1);
                if !align.is_power_of_two() {
                    return Err(ptx_err(*l, format!("{name}: alignment {align}")));
                }
                // Skip an initializer, up to the next declarator, counting its outermost elements
                // (commas directly within the outer braces, plus one) for a `[]` dimension.
                let (mut depth, mut braces, mut values) = (0u32, 0u32, 0u64);
                while let Some((t, _)) = stmt.get(i) {
                    match t {
                        Tok::Punct(c @ (b'{' | b'(' | b'[')) => {
                            depth += 1;
                            if *c == b'{' {
                                braces += 1;
                                values = values.max(1);
                            }
                        }
                        Tok::Punct(c @ (b'}' | b')' | b']')) => {
                            depth = depth.saturating_sub(1);
                            if *c == b'}' {
                                braces = braces.saturating_sub(1);
                            }
                        }
                        Tok::Punct(b',') if depth == 0 => {
                            i += 1;
                            break;
                        }
                        Tok::Punct(b',') if braces == 1 => values += 1,
                        _ => {}
                    }
                    i += 1;
                }
                if unsized_dim {
                    size = size.saturating_mul(values);
                }
                out.push(Decl { name, size, align });
            }
            _ => i += 1,
        }
    }
    Ok(out)
}

fn parse_int(w: &str) -> Option<u64> {
    let w = w.strip_suffix('U').unwrap_or(w);
    if let Some(h) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        w.parse().ok()
    }
}

/// `name ( params ) performance-directives`, the tokens after `.entry`.
fn entry(rest: &[(Tok, u32)], line: u32) -> Result<Kernel> {
    let Some((Tok::Word(name), _)) = rest.first() else {
        return Err(ptx_err(line, ".entry without a name"));
    };
    let mut kernel = Kernel {
        name: (*name).to_owned(),
        ..Kernel::default()
    };
    let mut i = 1;
    if let Some((Tok::Punct(b'('), _)) = rest.get(1) {
        let close = matching(rest, 1).ok_or_else(|| ptx_err(line, "parameter list not closed"))?;
        let mut offset = 0u64;
        let list = &rest[2..close];
        for param in list
            .split(|(t, _)| *t == Tok::Punct(b','))
            .filter(|_| !list.is_empty())
        {
            let decl = variables(param)?;
            let [d] = decl.as_slice() else {
                return Err(ptx_err(
                    param.first().map_or(line, |p| p.1),
                    "bad parameter",
                ));
            };
            offset = offset.div_ceil(d.align).saturating_mul(d.align);
            let (off, size) = (u32::try_from(offset), u32::try_from(d.size));
            let (Ok(off), Ok(size)) = (off, size) else {
                return Err(ptx_err(line, format!("{name}: parameters too large")));
            };
            kernel.params.push(Param { offset: off, size });
            offset = offset.saturating_add(d.size);
        }
        kernel.param_size =
            u32::try_from(offset).map_err(|_| ptx_err(line, "parameters too large"))?;
        i = close + 1;
    }
    while i < rest.len() {
        if let Tok::Word(w @ (".maxntid" | ".reqntid" | ".reqnctapercluster")) = rest[i].0 {
            let mut dims = [1u32; 3];
            let mut j = i + 1;
            for d in &mut dims {
                match rest.get(j) {
                    Some((Tok::Word(n), l)) => {
                        *d = parse_int(n)
                            .and_then(|v| u32::try_from(v).ok())
                            .ok_or_else(|| ptx_err(*l, format!("bad {w}")))?;
                        j += 1;
                    }
                    _ => break,
                }
                if rest.get(j).map(|t| &t.0) == Some(&Tok::Punct(b',')) {
                    j += 1;
                } else {
                    break;
                }
            }
            let field = match w {
                ".maxntid" => &mut kernel.max_threads,
                ".reqntid" => &mut kernel.req_threads,
                _ => &mut kernel.cluster_dims,
            };
            *field = Some(dims);
            i = j;
        } else {
            i += 1;
        }
    }
    Ok(kernel)
}

/// Index of the bracket closing the one at `open`.
fn matching(toks: &[(Tok, u32)], open: usize) -> Option<usize> {
    let mut depth = 0u32;
    for (i, (t, _)) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Punct(b'(' | b'[' | b'{') => depth += 1,
            Tok::Punct(b')' | b']' | b'}') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(offset: u32, size: u32) -> Param {
        Param { offset, size }
    }

    #[test]
    fn parameter_layouts() {
        let m = parse(
            br#"
            .version 9.0
            .target sm_90a, debug
            .address_size 64
            .visible .entry k(
                .param .u8 a,
                .param .u64 .ptr .global .align 16 ptr,   // .align after .ptr: the pointee's
                .param .u32 .ptr.global.align 16 packed,  // the PTX ISA's own spelling
                .param .u16 b,
                .param .align 16 .b8 s[48],
                .param .f16x2 h,
                .param .b8 grid[2][3],
                .param .texref t
            )
            .maxntid 256
            .reqntid 64, 2
            .explicitcluster
            .reqnctapercluster 4
            {
                .param .b64 call_arg;   // parameters of calls in the body are no kernel's
                ret;
            }
            .weak .entry w() { }
            "#,
        )
        .unwrap();
        assert_eq!(
            m.source,
            Source {
                variant: Variant::ArchSpecific,
                ..Source::ptx(90)
            }
        );
        let [k, w] = m.kernels.as_slice() else {
            panic!("{:?}", m.kernels)
        };
        assert_eq!(k.name, "k");
        assert_eq!(
            k.params,
            [
                p(0, 1),
                p(8, 8),
                p(16, 4),
                p(20, 2),
                p(32, 48),
                p(80, 4),
                p(84, 6),
                p(96, 8)
            ]
        );
        assert_eq!(k.param_size, 104);
        assert_eq!(k.max_threads, Some([256, 1, 1]));
        assert_eq!(k.req_threads, Some([64, 2, 1]));
        assert_eq!(k.cluster_dims, Some([4, 1, 1]));
        assert_eq!((w.name.as_str(), w.params.len(), w.param_size), ("w", 0, 0));
    }

    #[test]
    fn declared_then_defined_entries_count_once() {
        // As in libcudadevrt's PTX: prototypes first, definitions with their directives later.
        let m = parse(
            br#"
            .entry k(.param .u64 p);
            .extern .entry elsewhere(.param .u32 x);
            .entry k(.param .u64 p) .maxntid 32 { ret; }
            .entry k(.param .u64 p);
            "#,
        )
        .unwrap();
        let [k] = m.kernels.as_slice() else {
            panic!("{:?}", m.kernels)
        };
        assert_eq!((k.name.as_str(), k.max_threads), ("k", Some([32, 1, 1])));
    }

    #[test]
    fn module_variables() {
        let m = parse(
            br#"
            .version 8.0
            .target sm_100f
            .file 1 "kernels.cu"
            /* .global .u32 commented_out; */
            .extern .global .align 4 .u32 elsewhere;
            .global .align 4 .u32 a = 7, b[3] = {1, 2, 3}, c[] = {4, 5}, d[][2] = {{1, 2}, {3, 4}};
            .global .attribute(.managed) .align 8 .u64 m;
            .visible .global .align 16 .v4 .f32 vec;
            .global .align 8 .u64 table[2] = {generic(a), generic(b)};
            .const .align 4 .b8 coeffs[2][32];
            .shared .align 4 .b8 not_global[64];
            .func (.param .b32 r) helper(.param .b32 x) { .reg .b32 %r<2>; ret; }
            .section .debug_info { .b8 1, 2 .b32 3 }
            .global .f64 after;
            "#,
        )
        .unwrap();
        assert_eq!(
            m.source,
            Source {
                variant: Variant::FamilySpecific,
                ..Source::ptx(100)
            }
        );
        assert!(m.kernels.is_empty());
        let got: Vec<_> = m
            .globals
            .iter()
            .map(|g| (g.name.as_str(), g.size, g.space))
            .collect();
        assert!(m.globals.iter().all(|g| g.managed == (g.name == "m")));
        let (g, c) = (GlobalSpace::Global, GlobalSpace::Constant);
        assert_eq!(
            got,
            [
                ("a", 4, g),
                ("b", 12, g),
                ("c", 8, g),
                ("d", 16, g),
                ("m", 8, g),
                ("vec", 16, g),
                ("table", 16, g),
                ("coeffs", 64, c),
                ("after", 8, g)
            ]
        );
    }

    #[test]
    fn bad_text_is_an_error() {
        for (src, line) in [
            (&b".entry k(.param .u32 a"[..], 1),
            (b".version 9.0\n.entry k(.param .nosuchtype a) {}", 2),
            (b".entry k() {\n ret;\n", 1),
            (b"\n\n.global .u32 x[zz];", 3),
            (b"/* open", 1),
            (b".file 1 \"open", 1),
            (b".entry k() {}\n}", 2),
            (b".global .align 3 .u32 odd;", 1),
        ] {
            match parse(src) {
                Err(Error::Ptx { line: l, .. }) => {
                    assert_eq!(l, line, "{}", String::from_utf8_lossy(src))
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(src)),
            }
        }
        assert!(matches!(
            parse(b".version 9.0 \xff"),
            Err(Error::Ptx { .. })
        ));
        // The text ends at the first NUL, whatever follows.
        assert!(parse(b".global .u32 x;\0\xff\xff{{{").is_ok());
        // Not UTF-8 in a comment or string is no matter.
        assert!(parse(b"// caf\xe9\n.file 1 \"/tmp/caf\xe9.cu\"\n.global .u32 x;").is_ok());
    }
}
