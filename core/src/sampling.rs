//! Sampling parameters and their validation.

pub const DEFAULT_MAX_TOKENS: u32 = 256;
pub const DEFAULT_TEMPERATURE: f32 = 0.7;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: u32,
    /// 0 is greedy.
    pub temperature: f32,
    /// 1.0 disables nucleus sampling.
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    pub seed: u64,
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: DEFAULT_MAX_TOKENS,
            temperature: DEFAULT_TEMPERATURE,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplingError {
    #[error("max_tokens must be at least 1 (got 0)")]
    ZeroMaxTokens,
    #[error("temperature must be a finite number >= 0 (got {0})")]
    BadTemperature(f32),
    #[error("top_p must be in (0, 1] (got {0})")]
    BadTopP(f32),
    #[error("stop sequences must not be empty strings")]
    EmptyStop,
}

impl SamplingParams {
    pub fn greedy(max_tokens: u32) -> Self {
        Self {
            max_tokens,
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), SamplingError> {
        if self.max_tokens == 0 {
            return Err(SamplingError::ZeroMaxTokens);
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(SamplingError::BadTemperature(self.temperature));
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(SamplingError::BadTopP(self.top_p));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(SamplingError::EmptyStop);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_negative_values_are_rejected() {
        let bad = |f: fn(&mut SamplingParams)| {
            let mut p = SamplingParams::default();
            f(&mut p);
            p.validate().is_err()
        };
        assert!(bad(|p| p.temperature = f32::NAN));
        assert!(bad(|p| p.temperature = -0.1));
        assert!(bad(|p| p.top_p = -1.0));
        assert!(bad(|p| p.top_p = f32::NAN));
        assert!(bad(|p| p.max_tokens = 0));
        assert!(SamplingParams::default().validate().is_ok());
    }
}
