//! How commonsense accuracy is scored (README, Definitions: commonsense protocol).

use serde::{Deserialize, Serialize};

/// The evaluation protocol: `tsd eval --protocol`, a reproduction preset's headline protocol, the
/// `protocol` field of every task result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum Protocol {
    /// LLM-Adapters: beam search, the first label in the response.
    Generate,
    /// Label log-likelihood: cheap, blind to invalid-label failures.
    Loglik,
}

impl Protocol {
    /// The name written in records and accepted on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Generate => "generate",
            Protocol::Loglik => "loglik",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn names_agree_between_serde_clap_and_display() {
        for p in Protocol::value_variants() {
            let clap_name = p.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(clap_name, p.as_str());
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
            assert_eq!(p.to_string(), p.as_str());
        }
    }
}
