//! A counting semaphore for one test binary: at most [`MAX_VMS`] VMs (or builds) at once.

use std::sync::{Condvar, Mutex};

/// How many VMs may boot at once (the CI machine has 2 cores).
pub const MAX_VMS: usize = 2;

struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

static SLOTS: Slots = Slots {
    used: Mutex::new(0),
    freed: Condvar::new(),
};

/// One of the [`MAX_VMS`] places, held until dropped.
pub struct Slot;

impl Slot {
    pub fn acquire() -> Slot {
        let mut used = SLOTS.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= MAX_VMS {
            used = SLOTS.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *SLOTS.used.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        SLOTS.freed.notify_one();
    }
}
