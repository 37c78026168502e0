//! The rendering wing: per record its terminal table, CSV (the `csv` crate) and HTML page, the
//! charts and the page environment. Renderers render saved records; they never recompute.

pub mod bench;
pub mod charts;
pub mod eval;
pub mod inspect;
pub mod page;
pub mod params;
pub mod reproduction;
pub mod run;
pub mod table;
pub mod track;
pub mod train;

pub use table::{number, thousands, to_json, Format};
