use std::sync::atomic::{AtomicBool, Ordering};

/// What `/health/readyz` reports. Liveness is the process answering at all.
#[derive(Debug, Default)]
pub struct Health {
    joined: AtomicBool,
    brokers_down: AtomicBool,
}

impl Health {
    /// The consumer received its first assignment (possibly empty): partitions it owns start
    /// from their stored state.
    pub fn set_joined(&self) {
        self.joined.store(true, Ordering::Relaxed);
    }

    /// librdkafka reported that no broker can be reached.
    pub fn set_brokers_down(&self) {
        self.brokers_down.store(true, Ordering::Relaxed);
    }

    /// Something came back from a broker (a record, an acknowledgement).
    pub fn set_broker_reachable(&self) {
        self.brokers_down.store(false, Ordering::Relaxed);
    }

    /// `Ok` when ready, otherwise the reason.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.joined.load(Ordering::Relaxed) {
            return Err("waiting for a partition assignment");
        }
        if self.brokers_down.load(Ordering::Relaxed) {
            return Err("no broker reachable");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_joined_and_brokers_reachable() {
        let h = Health::default();
        assert!(h.readiness().is_err());
        h.set_joined();
        assert!(h.readiness().is_ok());
        h.set_brokers_down();
        assert_eq!(h.readiness(), Err("no broker reachable"));
        h.set_broker_reachable();
        assert!(h.readiness().is_ok());
    }
}
