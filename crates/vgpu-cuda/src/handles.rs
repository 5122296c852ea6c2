//! The objects behind the handles the driver hands out (contexts, streams, events, modules,
//! functions): each is leaked, so a handle is its address, and a registry says which handles
//! are alive. A destroyed object stays leaked, so a stale handle never names reused memory; the
//! registry answers it INVALID_HANDLE (or INVALID_CONTEXT) instead.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::Mutex;

/// The live handles of one kind of object.
pub struct Registry<T: Sync + 'static> {
    live: Mutex<Option<HashSet<usize>>>,
    _kind: PhantomData<fn() -> &'static T>,
}

impl<T: Sync + 'static> Registry<T> {
    /// No live handles.
    pub const fn new() -> Self {
        Self {
            live: Mutex::new(None),
            _kind: PhantomData,
        }
    }

    /// Leaks `v` and registers its address as a live handle.
    pub fn add(&self, v: T) -> &'static T {
        let r: &'static T = Box::leak(Box::new(v));
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(HashSet::new)
            .insert(Self::handle(r));
        r
    }

    /// The handle of an object.
    pub fn handle(r: &'static T) -> usize {
        r as *const T as usize
    }

    /// Retires a handle: it names nothing any more. Whether it was live.
    pub fn retire(&self, h: usize) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .is_some_and(|s| s.remove(&h))
    }

    /// How many handles are live.
    pub fn len(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, HashSet::len)
    }

    /// Whether no handle is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The object behind `h`, if it is a live handle.
    pub fn get(&self, h: usize) -> Option<&'static T> {
        let l = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if l.as_ref().is_some_and(|s| s.contains(&h)) {
            // SAFETY: only `add` registers addresses, of objects it leaked, which are never
            // freed.
            Some(unsafe { &*(h as *const T) })
        } else {
            None
        }
    }
}

impl<T: Sync + 'static> Default for Registry<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_live_until_retired() {
        static R: Registry<u32> = Registry::new();
        let a = R.add(7);
        let h = Registry::handle(a);
        assert_eq!(R.get(h), Some(&7));
        assert_eq!(R.get(h + 1), None);
        assert!(R.retire(h));
        assert!(!R.retire(h));
        assert_eq!(R.get(h), None);
    }
}
