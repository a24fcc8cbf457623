use rekindle_events::{AuditRecord, ReactivationTrigger};

/// What processing produced, in decision order: triggers for the delivery topic and audit
/// records of the decisions that did not send one.
#[derive(Debug, Default)]
pub struct Emitted {
    pub triggers: Vec<ReactivationTrigger>,
    pub audit: Vec<AuditRecord>,
}

impl Emitted {
    pub fn is_empty(&self) -> bool {
        self.triggers.is_empty() && self.audit.is_empty()
    }

    pub fn clear(&mut self) {
        self.triggers.clear();
        self.audit.clear();
    }
}
