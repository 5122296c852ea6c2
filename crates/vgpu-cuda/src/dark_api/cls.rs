//! CONTEXT_LOCAL_STORAGE_INTERFACE_V0301 (c693336e): values cudart keeps per context, keyed by
//! (context, key). No size word: [0] put, [1] delete, [2] get (called on every cudart call
//! that needs its context state), [3] NULL. A NULL context means the current one.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::RwLock;

use super::driver;
use super::Table;
use crate::api::guard;
use crate::types::{CUcontext, CUresult};

pub(crate) static TABLE: Table<4> = Table([
    put as *const c_void,
    delete as *const c_void,
    get as *const c_void,
    std::ptr::null(),
]);

/// What cudart registers to learn that a context's state goes away: `(ctx, key, value)`.
pub type Destructor = unsafe extern "C" fn(CUcontext, *mut c_void, *mut c_void);

struct Entry {
    value: usize,
    dtor: Option<Destructor>,
}

/// (context, key) → value, as addresses.
static STORE: RwLock<Option<HashMap<(usize, usize), Entry>>> = RwLock::new(None);

/// `ctx`, or the current context for NULL.
fn resolve(ctx: CUcontext) -> Result<usize, CUresult> {
    let ctx = if ctx.is_null() {
        driver::current_context()?
    } else {
        ctx
    };
    if ctx.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_CONTEXT);
    }
    Ok(ctx as usize)
}

fn answer(r: Result<(), CUresult>) -> CUresult {
    r.err().unwrap_or(CUresult::CUDA_SUCCESS)
}

/// [0] `(CUcontext, key, value, destructor)`: stores or replaces the value.
unsafe extern "C" fn put(
    ctx: CUcontext,
    key: *mut c_void,
    value: *mut c_void,
    dtor: Option<Destructor>,
) -> CUresult {
    guard("CONTEXT_LOCAL_STORAGE[0]", || {
        answer((|| {
            let ctx = resolve(ctx)?;
            let mut s = STORE.write().map_err(|_| CUresult::CUDA_ERROR_UNKNOWN)?;
            let entry = Entry {
                value: value as usize,
                dtor,
            };
            s.get_or_insert_with(HashMap::new)
                .insert((ctx, key as usize), entry);
            Ok(())
        })())
    })
}

/// [1] `(CUcontext, key)`: forgets the value without calling its destructor (the caller
/// deletes what it owns; Lupine found calling it here unsafe). An absent key is no error.
unsafe extern "C" fn delete(ctx: CUcontext, key: *mut c_void) -> CUresult {
    guard("CONTEXT_LOCAL_STORAGE[1]", || {
        answer((|| {
            let ctx = resolve(ctx)?;
            let mut s = STORE.write().map_err(|_| CUresult::CUDA_ERROR_UNKNOWN)?;
            if let Some(m) = s.as_mut() {
                m.remove(&(ctx, key as usize));
            }
            Ok(())
        })())
    })
}

/// [2] `(void** value, CUcontext, key)`: the stored value; `CUDA_ERROR_INVALID_HANDLE` if
/// there is none.
///
/// # Safety
/// `value` is NULL or valid for a write.
unsafe extern "C" fn get(value: *mut *mut c_void, ctx: CUcontext, key: *mut c_void) -> CUresult {
    guard("CONTEXT_LOCAL_STORAGE[2]", || {
        if value.is_null() {
            return CUresult::CUDA_ERROR_INVALID_VALUE;
        }
        answer((|| {
            let ctx = resolve(ctx)?;
            let s = STORE.read().map_err(|_| CUresult::CUDA_ERROR_UNKNOWN)?;
            let v = s
                .as_ref()
                .and_then(|m| m.get(&(ctx, key as usize)))
                .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)?
                .value;
            // SAFETY: non-NULL, valid for a write (the caller's promise).
            unsafe { value.write(v as *mut c_void) };
            Ok(())
        })())
    })
}

/// Forgets every value stored for `ctx` and calls their destructors: for the context code to
/// call when a context's state goes away (`cuCtxDestroy`, `cuDevicePrimaryCtxReset`, the last
/// release of a primary context), as NVIDIA's driver does.
///
/// # Safety
/// `ctx`'s state really goes away: the destructors are cudart's, and free what it keeps for
/// the context.
pub unsafe fn context_destroyed(ctx: CUcontext) {
    let gone: Vec<((usize, usize), Entry)> = match STORE.write() {
        Ok(mut s) => match s.as_mut() {
            Some(m) => {
                let keys: Vec<_> = m
                    .keys()
                    .filter(|(c, _)| *c == ctx as usize)
                    .copied()
                    .collect();
                keys.into_iter()
                    .filter_map(|k| m.remove(&k).map(|e| (k, e)))
                    .collect()
            }
            None => Vec::new(),
        },
        Err(_) => return,
    };
    // Outside the lock: a destructor may call back into the table.
    for ((_, key), e) in gone {
        if let Some(d) = e.dtor {
            // SAFETY: cudart registered `d` for exactly this (context, key, value).
            unsafe { d(ctx, key as *mut c_void, e.value as *mut c_void) };
        }
    }
}
