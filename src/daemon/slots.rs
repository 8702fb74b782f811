//! Capacity: a host-wide maximum of concurrent jobs plus optional per-image
//! limits. Pure bookkeeping (no I/O), shared by every forge's poll loop.
//!
//! A poll loop *reserves* host slots before it asks a forge for tasks and
//! asks for exactly that many (`task_capacity`), so that several forges
//! polling at once can never be handed more tasks than the host runs. A
//! task then holds its host slot for its whole life, and additionally waits
//! for a slot of its image when the image has a limit of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug)]
struct Counts {
    host_used: u32,
    /// Of `host_used`: slots reserved for a fetch and not taken by a task.
    reserved: u32,
    image_used: BTreeMap<String, u32>,
}

/// Shared capacity bookkeeping. Cheap to clone.
#[derive(Clone)]
pub struct Slots {
    inner: Arc<Inner>,
}

struct Inner {
    host_max: u32,
    image_max: BTreeMap<String, u32>,
    counts: Mutex<Counts>,
    freed: Notify,
}

impl Slots {
    /// `image_max` lists only the images that have a limit of their own.
    pub fn new(host_max: u32, image_max: BTreeMap<String, u32>) -> Slots {
        Slots {
            inner: Arc::new(Inner {
                host_max,
                image_max,
                counts: Mutex::new(Counts {
                    host_used: 0,
                    reserved: 0,
                    image_used: BTreeMap::new(),
                }),
                freed: Notify::new(),
            }),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The host-wide maximum.
    pub fn capacity(&self) -> u32 {
        self.inner.host_max
    }

    /// Host slots in use (reserved or running).
    pub fn used(&self) -> u32 {
        self.counts().host_used
    }

    /// Host slots jobs use (running, or held for debug SSH): `used` less
    /// what is only reserved for a fetch.
    pub fn in_use(&self) -> u32 {
        let c = self.counts();
        c.host_used.saturating_sub(c.reserved)
    }

    /// Reserves every free host slot, up to `max`. Returns `None` when none is free.
    pub fn reserve(&self, max: u32) -> Option<Reservation> {
        let mut c = self.counts();
        let free = self.inner.host_max.saturating_sub(c.host_used).min(max);
        if free == 0 {
            return None;
        }
        c.host_used += free;
        c.reserved += free;
        Some(Reservation {
            slots: self.clone(),
            count: free,
        })
    }

    /// Completes when a slot is released after this call. Create it before
    /// checking for a free slot, so that a release in between is not missed.
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.freed.notified()
    }

    fn release_host(&self, n: u32) {
        if n == 0 {
            return;
        }
        let mut c = self.counts();
        c.host_used = c.host_used.saturating_sub(n);
        drop(c);
        self.inner.freed.notify_waiters();
    }

    /// Takes a slot of `image` if the image has a limit and it is not
    /// reached; `Some` for images without a limit.
    fn try_image(&self, image: &str) -> Option<ImageSlot> {
        let mut c = self.counts();
        if let Some(max) = self.inner.image_max.get(image) {
            let used = c.image_used.entry(image.to_owned()).or_insert(0);
            if *used >= *max {
                return None;
            }
            *used += 1;
        }
        Some(ImageSlot {
            slots: self.clone(),
            image: image.to_owned(),
        })
    }

    /// Waits for a slot of `image` (at once for images without a limit).
    pub async fn image_slot(&self, image: &str) -> ImageSlot {
        loop {
            // Register interest before checking, so a release in between is not missed.
            let notified = self.inner.freed.notified();
            if let Some(s) = self.try_image(image) {
                return s;
            }
            notified.await;
        }
    }

    /// Counts a VM kept after its job (for debug SSH) against the host's
    /// and its image's capacity until the returned guard is dropped. Taken
    /// while the job still holds its own slots, so it may briefly exceed
    /// the maximum; the job's slots are released right after.
    pub fn hold(&self, image: &str) -> HeldVmSlots {
        let mut c = self.counts();
        c.host_used += 1;
        let limited = self.inner.image_max.contains_key(image);
        if limited {
            *c.image_used.entry(image.to_owned()).or_insert(0) += 1;
        }
        drop(c);
        HeldVmSlots {
            _host: HostSlot {
                slots: self.clone(),
            },
            _image: limited.then(|| ImageSlot {
                slots: self.clone(),
                image: image.to_owned(),
            }),
        }
    }

    /// Images at their limit and jobs per image, for status lines.
    pub fn image_usage(&self) -> BTreeMap<String, u32> {
        self.counts().image_used.clone()
    }
}

/// Host slots reserved for a fetch. Unused slots go back when dropped.
pub struct Reservation {
    slots: Slots,
    count: u32,
}

impl Reservation {
    /// A reservation holding nothing.
    pub fn empty(slots: &Slots) -> Reservation {
        Reservation {
            slots: slots.clone(),
            count: 0,
        }
    }

    /// Slots still held.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Takes one slot out of the reservation for a task; `None` if none is left.
    pub fn take_one(&mut self) -> Option<HostSlot> {
        if self.count == 0 {
            return None;
        }
        self.count -= 1;
        let mut c = self.slots.counts();
        c.reserved = c.reserved.saturating_sub(1);
        drop(c);
        Some(HostSlot {
            slots: self.slots.clone(),
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.count > 0 {
            let mut c = self.slots.counts();
            c.reserved = c.reserved.saturating_sub(self.count);
        }
        self.slots.release_host(self.count);
    }
}

/// What warm pools see of the host: the jobs that run, not the slots a
/// poll loop reserved for a fetch (a GitHub long poll holds its
/// reservation for most of a minute; a task that comes evicts a warm
/// guest instead).
impl crate::warm::HostLoad for Slots {
    fn capacity(&self) -> u32 {
        Slots::capacity(self)
    }

    fn jobs(&self) -> u32 {
        self.in_use()
    }
}

/// One host slot held by a running task; released when dropped.
pub struct HostSlot {
    slots: Slots,
}

impl HostSlot {
    /// Waits for a host slot outside any reservation: for a task the forge
    /// sent beyond what was asked for (it must still run, but never beside
    /// more VMs than the capacity).
    pub async fn acquire(slots: &Slots) -> HostSlot {
        loop {
            let notified = slots.inner.freed.notified();
            if let Some(mut r) = slots.reserve(1)
                && let Some(s) = r.take_one()
            {
                return s;
            }
            notified.await;
        }
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        self.slots.release_host(1);
    }
}

/// The capacity a kept VM counts against ([`Slots::hold`]); released when dropped.
pub struct HeldVmSlots {
    _host: HostSlot,
    _image: Option<ImageSlot>,
}

/// One slot of an image with a limit; released when dropped.
pub struct ImageSlot {
    slots: Slots,
    image: String,
}

impl Drop for ImageSlot {
    fn drop(&mut self) {
        let mut c = self.slots.counts();
        if let Some(n) = c.image_used.get_mut(&self.image) {
            *n = n.saturating_sub(1);
        }
        drop(c);
        self.slots.inner.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reservations_never_exceed_the_host_maximum() {
        let s = Slots::new(2, BTreeMap::new());
        let mut a = s.reserve(5).unwrap();
        assert_eq!(a.count(), 2);
        assert!(s.reserve(1).is_none(), "a second forge gets nothing");
        assert_eq!(s.in_use(), 0, "reserved slots run no job yet");
        let t = a.take_one().unwrap();
        assert_eq!(s.in_use(), 1);
        drop(a); // the unused slot goes back
        assert_eq!(s.used(), 1);
        assert_eq!(s.in_use(), 1);
        let b = s.reserve(5).unwrap();
        assert_eq!(b.count(), 1);
        drop(t);
        drop(b);
        assert_eq!(s.used(), 0);
        assert_eq!(s.in_use(), 0);
    }

    #[tokio::test]
    async fn image_limits_queue_tasks_until_a_slot_frees() {
        let s = Slots::new(4, BTreeMap::from([("deb".to_owned(), 1)]));
        let first = s.image_slot("deb").await;
        let _free = s.image_slot("tiny").await; // no limit of its own
        let s2 = s.clone();
        let waiter = tokio::spawn(async move {
            let _slot = s2.image_slot("deb").await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the second deb job must wait");
        drop(first);
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_kept_vm_counts_until_released() {
        let s = Slots::new(1, BTreeMap::from([("deb".to_owned(), 1)]));
        let mut r = s.reserve(1).unwrap();
        let job = r.take_one().unwrap();
        let held = s.hold("deb");
        drop(job);
        assert_eq!(s.used(), 1);
        assert_eq!(s.in_use(), 1, "a kept VM counts for warm pools");
        assert!(
            s.reserve(1).is_none(),
            "the kept VM uses the host's only slot"
        );
        assert!(s.try_image("deb").is_none(), "and its image's");
        drop(held);
        assert_eq!(s.used(), 0);
        assert!(s.try_image("deb").is_some());
    }

    #[tokio::test]
    async fn extra_tasks_wait_for_a_host_slot() {
        let s = Slots::new(1, BTreeMap::new());
        let mut r = s.reserve(1).unwrap();
        let held = r.take_one().unwrap();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { HostSlot::acquire(&s2).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.used(), 1);
        drop(got);
        assert_eq!(s.used(), 0);
    }
}
