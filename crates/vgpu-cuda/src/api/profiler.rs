//! The profiler's switches, `cuProfilerStart` and `cuProfilerStop` (the runtime's
//! `cudaProfilerStart`/`Stop`, `torch.cuda.profiler`). No profiler attaches to a guest's
//! driver (one attaches to vgpud's process on the host, which sees every VM), so they do what
//! NVIDIA's driver does with none attached: check that the thread has a context and return.

use super::context::require_current;
use super::run;
use crate::types::CUresult;

/// `cuProfilerStart`.
#[no_mangle]
pub extern "C" fn cuProfilerStart() -> CUresult {
    run("cuProfilerStart", || {
        require_current()?;
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuProfilerStop`.
#[no_mangle]
pub extern "C" fn cuProfilerStop() -> CUresult {
    run("cuProfilerStop", || {
        require_current()?;
        Ok(CUresult::CUDA_SUCCESS)
    })
}
