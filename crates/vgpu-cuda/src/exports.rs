//! Every function NVIDIA's driver exports, by name: the ones [`crate::api`] implements and, for
//! the rest, generated stubs that answer `CUDA_ERROR_NOT_SUPPORTED` (build.rs).

/// The address of an exported function (its real signature is the driver API's).
pub type Export = unsafe extern "C" fn();

// Each stub takes no arguments: under the x86-64 System V ABI the caller owns its arguments,
// so a function that ignores them may be called with any.
mod stubs {
    use crate::types::CUresult;
    include!(concat!(env!("OUT_DIR"), "/stubs.rs"));
}

include!(concat!(env!("OUT_DIR"), "/export_table.rs"));

/// The export called `name`, if the driver has one.
pub fn by_name(name: &str) -> Option<Export> {
    EXPORTS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| EXPORTS[i].1)
}

/// Every exported function's name, sorted.
pub fn names() -> impl Iterator<Item = &'static str> {
    EXPORTS.iter().map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_complete() {
        assert!(EXPORTS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(by_name("cuInit").is_some());
        assert!(by_name("cuGetProcAddress_v2").is_some());
        assert!(by_name("cuNoSuchFunction").is_none());
    }

    #[test]
    fn an_unimplemented_export_answers_not_supported() {
        let f = by_name("cuGraphicsMapResources").expect("exported");
        // SAFETY: stubs take no arguments and return a CUresult (see `stubs`).
        let rc = unsafe {
            let f: unsafe extern "C" fn() -> crate::types::CUresult = std::mem::transmute(f);
            f()
        };
        assert_eq!(rc, crate::types::CUresult::CUDA_ERROR_NOT_SUPPORTED);
        assert!(crate::unsupported::reported().contains(&"cuGraphicsMapResources"));
    }
}
