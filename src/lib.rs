//! Test and benchmark host; see tests/ and benches/.
