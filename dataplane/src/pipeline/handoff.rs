//! Hand-off between workers, a vector at a time. Every ordered pair of workers has
//! its own single-producer single-consumer ring (`ringbuf`): a burst's packets for
//! one worker are staged while the stages run and published with one index update
//! at the end of the burst; the owner takes a vector with one index update too. No
//! lock, no allocation, no per-packet atomic read-modify-write (a crossbeam channel
//! paid one per packet and per side).
use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use super::{StageId, BURST};

/// A packet one worker hands to the worker that owns its connection. Its metadata
/// (what the stages so far learned of it) travels in the frame, so the owner resumes
/// at the stage that handed it over (no second parse; a decapsulated inner frame
/// stays one).
pub struct HandedOff<F> {
    pub frame: F,
    pub stage: StageId,
}

/// One worker's ends of the mesh.
pub struct Handoff<F> {
    /// To worker w (None for this one).
    to: Vec<Option<HeapProd<HandedOff<F>>>>,
    /// From every other worker.
    from: Vec<HeapCons<HandedOff<F>>>,
    /// This burst's packets for worker w, published by `publish`.
    staged: Vec<Vec<HandedOff<F>>>,
    /// Which inbound ring `take` starts with (round robin, so none starves).
    start: usize,
}

/// The rings between `workers` workers, `capacity` packets each; element w is
/// worker w's ends.
pub fn mesh<F>(workers: usize, capacity: usize) -> Vec<Handoff<F>> {
    let mut ends: Vec<Handoff<F>> = (0..workers)
        .map(|_| Handoff {
            to: (0..workers).map(|_| None).collect(),
            from: Vec::with_capacity(workers.saturating_sub(1)),
            staged: (0..workers).map(|_| Vec::with_capacity(BURST)).collect(),
            start: 0,
        })
        .collect();
    for a in 0..workers {
        for b in 0..workers {
            if a != b {
                let (p, c) = HeapRb::new(capacity).split();
                ends[a].to[b] = Some(p);
                ends[b].from.push(c);
            }
        }
    }
    ends
}

impl<F> Handoff<F> {
    /// Stages `h` for worker `w`; gives it back when there is no such worker or its
    /// stage is full (more than a burst's worth: published early by the caller).
    #[inline]
    pub fn stage(&mut self, w: u16, h: HandedOff<F>) -> Result<(), HandedOff<F>> {
        let w = usize::from(w);
        match self.staged.get_mut(w) {
            Some(s) if self.to.get(w).is_some_and(Option::is_some) && s.len() < s.capacity() => {
                s.push(h);
                Ok(())
            }
            _ => Err(h),
        }
    }

    /// Whether anything is staged (one check per burst when nothing is).
    #[inline]
    pub fn any_staged(&self) -> bool {
        self.staged.iter().any(|s| !s.is_empty())
    }

    /// Publishes every staged vector to its ring; what does not fit is given to
    /// `full` (the ring is full: the owner is behind). Returns how many went.
    pub fn publish(&mut self, mut full: impl FnMut(HandedOff<F>)) -> u64 {
        let mut sent = 0;
        for (w, s) in self.staged.iter_mut().enumerate() {
            if s.is_empty() {
                continue;
            }
            let mut items = s.drain(..);
            if let Some(Some(p)) = self.to.get_mut(w) {
                sent += p.push_iter(&mut items) as u64;
            }
            items.for_each(&mut full);
        }
        sent
    }

    /// Takes up to `max` handed-off packets into `out`, round robin over the
    /// inbound rings.
    pub fn take(&mut self, out: &mut impl FnMut(HandedOff<F>), max: usize) -> usize {
        let n = self.from.len();
        let mut got = 0;
        for k in 0..n {
            if got >= max {
                break;
            }
            let c = &mut self.from[(self.start + k) % n];
            if c.is_empty() {
                continue;
            }
            for h in c.pop_iter().take(max - got) {
                out(h);
                got += 1;
            }
        }
        if n > 0 {
            self.start = (self.start + 1) % n;
        }
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u32) -> HandedOff<u32> {
        HandedOff {
            frame: n,
            stage: StageId::Lb,
        }
    }

    #[test]
    fn a_vector_goes_to_its_worker_in_order_and_overflow_is_given_back() {
        let mut m = mesh::<u32>(3, 4);
        let mut w2 = m.pop().unwrap();
        let mut w1 = m.pop().unwrap();
        let mut w0 = m.pop().unwrap();
        assert!(w0.stage(0, h(99)).is_err(), "no ring to itself");
        assert!(w0.stage(7, h(99)).is_err(), "no such worker");
        for n in 0..6 {
            w0.stage(1, h(n)).map_err(|_| ()).unwrap();
        }
        w0.stage(2, h(100)).map_err(|_| ()).unwrap();
        let mut over = Vec::new();
        assert_eq!(w0.publish(|x| over.push(x.frame)), 5);
        assert_eq!(over, vec![4, 5], "ring of 4 to worker 1: two given back");
        assert!(!w0.any_staged());
        let mut got = Vec::new();
        assert_eq!(w1.take(&mut |x| got.push(x.frame), 32), 4);
        assert_eq!(got, vec![0, 1, 2, 3]);
        let mut got2 = Vec::new();
        assert_eq!(w2.take(&mut |x| got2.push(x.frame), 1), 1);
        assert_eq!(got2, vec![100]);
        assert_eq!(w1.take(&mut |_| {}, 32), 0);
    }
}
