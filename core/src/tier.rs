//! The memory tiers an expert moves through, modelled on the SN40L hierarchy.
use serde::{Deserialize, Serialize};

/// Ordered from slowest to fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The verified GGUF on disk.
    Storage,
    /// The file's bytes staged in memory.
    Host,
    /// The model built and resident, ready to compute.
    Device,
    /// A Device expert computing now.
    Active,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Storage => "storage",
            Tier::Host => "host",
            Tier::Device => "device",
            Tier::Active => "active",
        }
    }
}
