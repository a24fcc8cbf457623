//! Test and benchmark host: the black-box tests in tests/, the benchmarks in benches/, and
//! what they share, compiled once in this library rather than into every test binary.

pub mod support;
