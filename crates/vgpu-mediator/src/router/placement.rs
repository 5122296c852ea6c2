//! Where a VM runs: when it connects, the least-loaded device its pool may use.

/// Placement errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    /// The VM's pool names no device present here.
    #[error("no device of the VM's pool is present (pool devices: {0:?})")]
    NoDevice(Vec<usize>),
}

/// VMs per device, and which device each connected VM is on.
#[derive(Debug, Clone)]
pub struct Placement {
    load: Vec<usize>,
    placed: Vec<Option<usize>>,
}

impl Placement {
    /// `devices` devices, `vms` VMs, nothing placed.
    pub fn new(devices: usize, vms: usize) -> Self {
        Self {
            load: vec![0; devices],
            placed: vec![None; vms],
        }
    }

    /// Places `vm` on the device of `allowed` with the fewest VMs (ties: the lowest index) and
    /// returns it. A VM placed already is released first.
    pub fn place(&mut self, vm: usize, allowed: &[usize]) -> Result<usize, PlacementError> {
        self.release(vm);
        let dev = allowed
            .iter()
            .copied()
            .filter(|&d| d < self.load.len())
            .min_by_key(|&d| (self.load[d], d))
            .ok_or_else(|| PlacementError::NoDevice(allowed.to_vec()))?;
        self.load[dev] += 1;
        self.placed[vm] = Some(dev);
        Ok(dev)
    }

    /// Forgets `vm`'s placement; returns the device it was on.
    pub fn release(&mut self, vm: usize) -> Option<usize> {
        let dev = self.placed[vm].take()?;
        self.load[dev] -= 1;
        Some(dev)
    }

    /// The device `vm` is on.
    pub fn device_of(&self, vm: usize) -> Option<usize> {
        self.placed[vm]
    }

    /// VMs on each device.
    pub fn load(&self) -> &[usize] {
        &self.load
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spreads_and_pins() {
        let mut p = Placement::new(2, 6);
        let both = [0, 1];
        let got: Vec<usize> = (0..4).map(|vm| p.place(vm, &both).unwrap()).collect();
        assert_eq!(got, vec![0, 1, 0, 1]);
        assert_eq!(p.load(), &[2, 2]);
        assert_eq!(p.release(1), Some(1));
        assert_eq!(
            p.place(4, &both),
            Ok(1),
            "the freed device is the least loaded"
        );
        assert_eq!(p.place(5, &[0]), Ok(0), "a pinned pool stays on its device");
        assert_eq!(p.load(), &[3, 2]);
        assert_eq!(
            Placement::new(1, 1).place(0, &[3]),
            Err(PlacementError::NoDevice(vec![3]))
        );
    }

    proptest! {
        /// Whatever the order of connects and disconnects, loads count the placed VMs, every VM
        /// is on a device its pool allows, and a pool spanning every device is spread evenly
        /// (loads differ by at most one) when it is alone.
        #[test]
        fn balanced(devices in 1usize..5, ops in proptest::collection::vec((0usize..8, any::<bool>()), 1..60)) {
            let all: Vec<usize> = (0..devices).collect();
            let mut p = Placement::new(devices, 8);
            for (vm, connect) in ops {
                if connect { p.place(vm, &all).unwrap(); } else { p.release(vm); }
                let placed: Vec<usize> = (0..8).filter_map(|v| p.device_of(v)).collect();
                prop_assert_eq!(placed.len(), p.load().iter().sum::<usize>());
                for d in 0..devices {
                    prop_assert_eq!(placed.iter().filter(|&&x| x == d).count(), p.load()[d]);
                }
            }
            // Fresh placement of n VMs over all devices is even.
            let mut q = Placement::new(devices, 8);
            for vm in 0..8 { q.place(vm, &all).unwrap(); }
            let (mn, mx) = (q.load().iter().min().unwrap(), q.load().iter().max().unwrap());
            prop_assert!(mx - mn <= 1);
        }
    }
}
