pub mod bench;
pub mod eval;
