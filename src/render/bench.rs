//! The benchmarks' records as JSON and their one-line terminal summaries.
