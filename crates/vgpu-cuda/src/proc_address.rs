//! `cuGetProcAddress`: which export answers a (symbol, CUDA version, flags) request.
//!
//! The answers are NVIDIA's driver's own: `data/gpa-table.tsv` was made on the GPU host by
//! `gen/gpa_table.c`, which asked the real `cuGetProcAddress_v2` every symbol at every version
//! with every flag and wrote a row each time the answer changed. The table is parsed once, at
//! the first lookup.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::exports::{self, Export};

/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`.
pub const FLAG_PER_THREAD_DEFAULT_STREAM: u64 = 2;

/// `CUdriverProcAddressQueryResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum QueryResult {
    /// Found.
    Success = 0,
    /// No such symbol.
    SymbolNotFound = 1,
    /// The symbol exists in a later version than the one asked for.
    VersionNotSufficient = 2,
}

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The `CUresult` the call returns.
    pub rc: u32,
    /// What goes to `symbolStatus`.
    pub status: QueryResult,
    /// The function, when one is handed out.
    pub export: Option<(&'static str, Export)>,
}

/// One row: from `from_version` on (until the next row), this answer.
#[derive(Debug, Clone)]
struct Row {
    from_version: i32,
    rc: u32,
    status: i32,
    export: Option<&'static str>,
}

/// The table: rows of a (symbol, flags) pair, in version order.
struct Table {
    rows: HashMap<(&'static str, u64), Vec<Row>>,
    /// The answer for a symbol the driver does not know, by flags: rows as for a symbol.
    unknown: HashMap<u64, Vec<Row>>,
}

const TABLE_TSV: &str = include_str!("../data/gpa-table.tsv");

fn parse_status(s: i32) -> QueryResult {
    match s {
        0 => QueryResult::Success,
        2 => QueryResult::VersionNotSufficient,
        _ => QueryResult::SymbolNotFound,
    }
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| parse(TABLE_TSV))
}

/// Parses the generator's output. Rows it cannot read are a build defect: the unit tests
/// parse the checked-in table and fail on them.
fn parse(tsv: &'static str) -> Table {
    let mut rows: HashMap<(&'static str, u64), Vec<Row>> = HashMap::new();
    let mut unknown: HashMap<u64, Vec<Row>> = HashMap::new();
    for line in tsv.lines() {
        let f: Vec<&'static str> = line.split('\t').collect();
        if line.starts_with("#v2\tcuNoSuchFunction\t") && f.len() == 7 {
            // kind, symbol, flags, version, rc, pfn, status
            let (Ok(flags), Ok(v), Ok(rc), Ok(st)) = (
                f[2].parse::<u64>(),
                f[3].parse::<i32>(),
                f[4].parse::<u32>(),
                f[6].parse::<i32>(),
            ) else {
                continue;
            };
            unknown.entry(flags).or_default().push(Row {
                from_version: v,
                rc,
                status: st,
                export: None,
            });
            continue;
        }
        if line.starts_with('#') || f.len() != 6 {
            continue;
        }
        let (Ok(flags), Ok(from_version), Ok(rc), Ok(status)) = (
            f[1].parse::<u64>(),
            f[2].parse::<i32>(),
            f[3].parse::<u32>(),
            f[4].parse::<i32>(),
        ) else {
            continue;
        };
        // Aliases at one address: any of them is the same function; take the first.
        let export = match f[5] {
            "-" | "UNEXPORTED" => None,
            names => names.split(',').next(),
        };
        rows.entry((f[0], flags)).or_default().push(Row {
            from_version,
            rc,
            status,
            export,
        });
    }
    for r in rows.values_mut().chain(unknown.values_mut()) {
        r.sort_by_key(|r| r.from_version);
    }
    Table { rows, unknown }
}

fn answer_of(rows: &[Row], version: i32) -> Option<Answer> {
    let i = rows.partition_point(|r| r.from_version <= version);
    let r = rows.get(i.checked_sub(1)?)?;
    let export = r.export.and_then(|n| exports::by_name(n).map(|f| (n, f)));
    Some(Answer {
        rc: r.rc,
        status: if r.export.is_some() && export.is_none() {
            QueryResult::SymbolNotFound
        } else {
            parse_status(r.status)
        },
        export,
    })
}

/// `CU_GET_PROC_ADDRESS_LEGACY_STREAM | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`: the
/// flags the driver accepts (both together act as per-thread, measured).
const KNOWN_FLAGS: u64 = 3;

/// What `cuGetProcAddress_v2(symbol, .., version, flags, ..)` answers.
pub fn lookup(symbol: &str, version: i32, flags: u64) -> Answer {
    if flags & !KNOWN_FLAGS != 0 {
        return Answer {
            rc: 1,
            status: QueryResult::SymbolNotFound,
            export: None,
        };
    }
    let flags = if flags & FLAG_PER_THREAD_DEFAULT_STREAM != 0 {
        FLAG_PER_THREAD_DEFAULT_STREAM
    } else {
        flags
    };
    let t = table();
    let not_found = Answer {
        rc: 0,
        status: QueryResult::SymbolNotFound,
        export: None,
    };
    // The table's symbols are 'static; look the request up through them.
    if let Some(rows) = t.rows.get(&(symbol, flags)) {
        return answer_of(rows, version).unwrap_or(not_found);
    }
    t.unknown
        .get(&flags)
        .and_then(|rows| answer_of(rows, version))
        .unwrap_or(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export_of(symbol: &str, version: i32, flags: u64) -> Option<&'static str> {
        lookup(symbol, version, flags).export.map(|(n, _)| n)
    }

    #[test]
    fn every_row_parses_and_names_an_export() {
        let t = table();
        assert!(
            t.rows.len() > 1000,
            "{} (symbol, flags) pairs",
            t.rows.len()
        );
        for ((sym, _), rows) in &t.rows {
            for r in rows {
                if let Some(e) = r.export {
                    assert!(exports::by_name(e).is_some(), "{sym}: {e} is not exported");
                }
            }
        }
    }

    #[test]
    fn versions_pick_the_variant_the_driver_picks() {
        assert_eq!(export_of("cuMemcpyHtoD", 2000, 0), Some("cuMemcpyHtoD"));
        assert_eq!(export_of("cuMemcpyHtoD", 3020, 0), Some("cuMemcpyHtoD_v2"));
        assert_eq!(export_of("cuMemcpyHtoD", 13000, 0), Some("cuMemcpyHtoD_v2"));
        assert_eq!(
            export_of("cuCtxGetDevice", 12000, 0),
            Some("cuCtxGetDevice")
        );
        assert_eq!(
            export_of("cuCtxGetDevice", 13000, 0),
            Some("cuCtxGetDevice_v2")
        );
        assert_eq!(
            export_of("cuGetProcAddress", 12000, 0),
            Some("cuGetProcAddress_v2")
        );
    }

    #[test]
    fn the_per_thread_flag_picks_ptds_and_ptsz_variants() {
        assert_eq!(
            export_of("cuMemcpyHtoD", 13000, 2),
            Some("cuMemcpyHtoD_v2_ptds")
        );
        assert_eq!(
            export_of("cuLaunchKernel", 13000, 2),
            Some("cuLaunchKernel_ptsz")
        );
        assert_eq!(
            export_of("cuLaunchKernel", 13000, 0),
            Some("cuLaunchKernel")
        );
        // Both stream flags together act as per-thread; unknown flag bits are refused.
        assert_eq!(
            export_of("cuLaunchKernel", 13000, 3),
            Some("cuLaunchKernel_ptsz")
        );
        assert_eq!(lookup("cuLaunchKernel", 13000, 4).rc, 1);
        // Before its per-thread variant existed the symbol's version is not sufficient.
        let a = lookup("cuMemcpyHtoD", 6000, 2);
        assert_eq!((a.rc, a.status), (0, QueryResult::VersionNotSufficient));
        assert!(a.export.is_none());
    }

    #[test]
    fn unknown_symbols_and_too_new_versions() {
        let a = lookup("cuNoSuchFunction", 13000, 0);
        assert_eq!(
            (a.rc, a.status, a.export.is_none()),
            (0, QueryResult::SymbolNotFound, true)
        );
        let a = lookup("", 13000, 0);
        assert!(a.export.is_none());
        // Any version above the driver's own is refused (CUDA_ERROR_INVALID_VALUE).
        assert_eq!(lookup("cuInit", 13010, 0).rc, 1);
        assert!(lookup("cuInit", 13010, 0).export.is_none());
    }
}
