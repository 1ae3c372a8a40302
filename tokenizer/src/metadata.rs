//! Typed access to the `tokenizer.*` keys of a GGUF file's metadata.
use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use crate::TokenizerError;

/// The metadata map of a GGUF file, with accessors that turn type mismatches into errors.
pub(crate) struct Metadata<'a>(pub(crate) &'a HashMap<String, Value>);

fn type_name(value: &Value) -> String {
    format!("{:?}", value.value_type())
}

impl<'a> Metadata<'a> {
    fn get(&self, key: &'static str) -> Option<&'a Value> {
        self.0.get(key)
    }

    pub(crate) fn string(&self, key: &'static str) -> Result<Option<&'a str>, TokenizerError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(key, "a string", other)),
        }
    }

    pub(crate) fn bool(&self, key: &'static str) -> Result<Option<bool>, TokenizerError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong_type(key, "a bool", other)),
        }
    }

    /// A token id; converters write these as u32, but any integer type is accepted.
    pub(crate) fn id(&self, key: &'static str) -> Result<Option<u32>, TokenizerError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let id = match value {
            Value::U8(v) => Some(u64::from(*v)),
            Value::U16(v) => Some(u64::from(*v)),
            Value::U32(v) => Some(u64::from(*v)),
            Value::U64(v) => Some(*v),
            Value::I8(v) => u64::try_from(*v).ok(),
            Value::I16(v) => u64::try_from(*v).ok(),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            other => return Err(wrong_type(key, "an unsigned integer", other)),
        };
        // A negative id means "none" in some converters.
        Ok(id.and_then(|v| u32::try_from(v).ok()))
    }

    pub(crate) fn array(&self, key: &'static str) -> Result<Option<&'a [Value]>, TokenizerError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(wrong_type(key, "an array", other)),
        }
    }

    /// An array whose items all convert with `item`; `expected` names the type for errors.
    fn typed_array<T>(
        &self,
        key: &'static str,
        expected: &'static str,
        item: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>, TokenizerError> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| item(v).ok_or_else(|| wrong_type(key, expected, v)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub(crate) fn strings(
        &self,
        key: &'static str,
    ) -> Result<Option<Vec<&'a str>>, TokenizerError> {
        self.typed_array(key, "an array of strings", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    pub(crate) fn f32s(&self, key: &'static str) -> Result<Option<Vec<f32>>, TokenizerError> {
        self.typed_array(key, "an array of f32", |v| match v {
            Value::F32(x) => Some(*x),
            // llama.cpp also accepts integer scores.
            Value::I32(x) => Some(*x as f32),
            _ => None,
        })
    }

    pub(crate) fn i32s(&self, key: &'static str) -> Result<Option<Vec<i32>>, TokenizerError> {
        self.typed_array(key, "an array of i32", |v| match v {
            Value::I32(x) => Some(*x),
            _ => None,
        })
    }
}

fn wrong_type(key: &'static str, expected: &'static str, found: &Value) -> TokenizerError {
    TokenizerError::WrongType {
        key,
        expected,
        found: type_name(found),
    }
}
