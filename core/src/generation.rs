//! What a generation emits: text pieces, then one final event with usage.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// max_tokens or the context length was reached.
    Length,
    /// A stop sequence matched.
    StopSequence,
    /// The client went away or the server is shutting down.
    Cancelled,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub queue_ms: f64,
    pub time_to_first_token_ms: f64,
    pub total_ms: f64,
    pub decode_tokens_per_second: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum GenerationEvent {
    /// Valid UTF-8 text and the tokens that completed it.
    Text {
        text: String,
        token_ids: Vec<u32>,
    },
    Done {
        finish: FinishReason,
        usage: Usage,
    },
}
