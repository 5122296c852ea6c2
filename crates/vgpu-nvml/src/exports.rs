//! Every function NVML 13 exports, by name: the ones [`crate::api`] implements and, for the
//! rest, generated stubs that answer `NVML_ERROR_NOT_SUPPORTED` (build.rs).

// Each stub takes no arguments: under the x86-64 System V ABI the caller owns its arguments,
// so a function that ignores them may be called with any.
mod stubs {
    use crate::types::NvmlReturn;
    include!(concat!(env!("OUT_DIR"), "/stubs.rs"));
}

include!(concat!(env!("OUT_DIR"), "/names.rs"));

/// Every NVML 13 function's name, sorted.
pub fn names() -> impl Iterator<Item = &'static str> {
    NAMES.iter().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_nvml_13s_and_sorted() {
        assert!(NAMES.windows(2).all(|w| w[0] < w[1]));
        assert!(NAMES.len() > 390, "{} names", NAMES.len());
        for n in [
            "nvmlInit_v2",
            "nvmlInit",
            "nvmlErrorString",
            "nvmlDeviceGetPciInfo",
        ] {
            assert!(NAMES.contains(&n), "{n}");
        }
    }

    #[test]
    fn an_unimplemented_export_answers_not_supported() {
        let rc = stubs::nvmlDeviceGetTemperature();
        assert_eq!(rc, NvmlReturn::NOT_SUPPORTED);
        assert!(crate::unsupported::reported().contains(&"nvmlDeviceGetTemperature"));
    }

    use crate::types::NvmlReturn;
}
