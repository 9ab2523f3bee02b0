//! Simulcast layer choice for one subscriber of one track.
//!
//! Three layers: the *requested* maximum (from the subscriber), the *target* (the best
//! layer within the request that is being published and fits the bandwidth budget), and
//! the *current* layer being forwarded. Current moves to target only on a keyframe of the
//! target layer, so the decoder never sees a frame that refers to a picture it lacks.

/// What to do with one incoming packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerDecision {
    /// Forward it; `switched` when it starts a new layer (rebase the rewriter).
    Forward { switched: bool },
    Drop,
}

#[derive(Debug, Clone)]
pub struct LayerSelector {
    layers: usize,
    requested: usize,
    paused: bool,
    current: Option<usize>,
    target: Option<usize>,
}

impl LayerSelector {
    /// A selector for a track of `layers` layers (1 when not simulcast).
    pub fn new(layers: usize) -> LayerSelector {
        let layers = layers.clamp(1, 3);
        LayerSelector { layers, requested: layers - 1, paused: false, current: None, target: None }
    }

    pub fn current(&self) -> Option<usize> {
        self.current
    }

    pub fn target(&self) -> Option<usize> {
        self.target
    }

    /// The subscriber's request: highest layer index wanted, or paused.
    pub fn set_request(&mut self, max_layer: usize, paused: bool) {
        self.requested = max_layer.min(self.layers - 1);
        self.paused = paused;
    }

    /// Chooses the target from which layers are being published (`active[i]`), their
    /// measured bitrates (bps, 0 = unknown) and the subscriber's budget for this track.
    pub fn update_target(&mut self, active: &[bool], bitrates: &[u64], budget: Option<u64>) {
        if self.paused {
            self.target = None;
            self.current = None;
            return;
        }
        let top = self.requested.min(self.layers - 1);
        let is_active = |i: usize| active.get(i).copied().unwrap_or(false);
        let fits = |i: usize| match (budget, bitrates.get(i).copied().unwrap_or(0)) {
            (Some(b), rate) if rate > 0 => rate <= b,
            _ => true,
        };
        let best = (0..=top).rev().find(|&i| is_active(i) && fits(i));
        let lowest = (0..=top).find(|&i| is_active(i));
        if let Some(t) = best.or(lowest) {
            self.target = Some(t);
        } else if self.target.is_none() {
            // Nothing measured as active yet: aim at the request; the first keyframe
            // of that layer starts forwarding.
            self.target = Some(top);
        }
        if let Some(c) = self.current {
            if !is_active(c) && active.iter().any(|a| *a) && Some(c) != self.target {
                // The current layer stopped: nothing will come from it.
                self.current = None;
            }
        }
    }

    /// Layer whose keyframe is awaited, if a switch (or the start) is pending.
    pub fn wants_keyframe(&self) -> Option<usize> {
        match (self.target, self.current) {
            (Some(t), c) if c != Some(t) => Some(t),
            _ => None,
        }
    }

    /// Decides for a packet of `layer`.
    pub fn on_packet(&mut self, layer: usize, keyframe: bool) -> LayerDecision {
        let Some(target) = self.target else { return LayerDecision::Drop };
        if layer == target && self.current != Some(target) && keyframe {
            self.current = Some(target);
            return LayerDecision::Forward { switched: true };
        }
        if Some(layer) == self.current {
            return LayerDecision::Forward { switched: false };
        }
        LayerDecision::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_keyframe_and_switches_only_on_keyframes() {
        let mut s = LayerSelector::new(3);
        s.update_target(&[true, true, true], &[150_000, 500_000, 1_500_000], None);
        assert_eq!(s.target(), Some(2));
        assert_eq!(s.on_packet(2, false), LayerDecision::Drop);
        assert_eq!(s.wants_keyframe(), Some(2));
        assert_eq!(s.on_packet(2, true), LayerDecision::Forward { switched: true });
        assert_eq!(s.wants_keyframe(), None);
        // Budget drops: target goes to the layer that fits, current stays until its key.
        s.update_target(&[true, true, true], &[150_000, 500_000, 1_500_000], Some(600_000));
        assert_eq!(s.target(), Some(1));
        assert_eq!(s.on_packet(2, false), LayerDecision::Forward { switched: false });
        assert_eq!(s.on_packet(1, false), LayerDecision::Drop);
        assert_eq!(s.on_packet(1, true), LayerDecision::Forward { switched: true });
        assert_eq!(s.on_packet(2, true), LayerDecision::Drop);
        assert_eq!(s.current(), Some(1));
    }

    #[test]
    fn request_caps_and_pause() {
        let mut s = LayerSelector::new(3);
        s.set_request(0, false);
        s.update_target(&[true, true, true], &[0, 0, 0], None);
        assert_eq!(s.target(), Some(0));
        s.set_request(2, true);
        s.update_target(&[true, true, true], &[0, 0, 0], None);
        assert_eq!(s.target(), None);
        assert_eq!(s.on_packet(2, true), LayerDecision::Drop);
    }

    #[test]
    fn budget_below_every_layer_keeps_the_lowest() {
        let mut s = LayerSelector::new(3);
        s.update_target(&[true, true, true], &[150_000, 500_000, 1_500_000], Some(10_000));
        assert_eq!(s.target(), Some(0));
    }

    #[test]
    fn falls_back_when_the_current_layer_stops() {
        let mut s = LayerSelector::new(3);
        s.update_target(&[true, true, true], &[1, 2, 3], None);
        assert_eq!(s.on_packet(2, true), LayerDecision::Forward { switched: true });
        s.update_target(&[true, true, false], &[1, 2, 0], None);
        assert_eq!(s.target(), Some(1));
        assert_eq!(s.current(), None);
        assert_eq!(s.wants_keyframe(), Some(1));
    }
}
