//! SIGKILL the worker mid-stream, at ten random points of a 200k-event stream, restarting it
//! on the same state each time: no trigger may be lost, and a trigger delivered twice must
//! carry the same trigger_id.

use rekindle_suite::support;

#[test]
fn killed_and_restarted_worker_loses_no_trigger() {
    support::crash::killed_and_restarted("rekindle-crash", "");
}
