//! Chat templates from `tokenizer.chat_template`, rendered as Hugging Face transformers'
//! `apply_chat_template` does (jinja2 with trim_blocks and lstrip_blocks, its `tojson`,
//! `raise_exception` and `strftime_now`).
use std::io;

use candle_core::quantized::gguf_file::Content;
use coe_core::ChatMessage;
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::metadata::Metadata;
use crate::{GgufTokenizer, TokenizerError};

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template with the special-token strings it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

impl ChatTemplate {
    /// None when the GGUF has no tokenizer.chat_template (base models: plain completion).
    pub fn from_gguf(
        content: &Content,
        tokenizer: &GgufTokenizer,
    ) -> Result<Option<Self>, TokenizerError> {
        let Some(source) = Metadata(&content.metadata).string("tokenizer.chat_template")? else {
            return Ok(None);
        };
        let text_of = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_text(id))
                .unwrap_or("")
                .to_owned()
        };
        Self::new(
            source,
            text_of(tokenizer.bos_id()),
            text_of(tokenizer.eos_id()),
        )
        .map(Some)
    }

    /// Compiles `source`; `bos_token` and `eos_token` are the strings templates see under those names.
    pub fn new(source: &str, bos_token: String, eos_token: String) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        // transformers compiles chat templates with these jinja2 settings.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(TokenizerError::TemplateSyntax)?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    /// Renders role-tagged messages with add_generation_prompt = true, bos_token/eos_token bound
    /// as in HF transformers.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, TokenizerError> {
        let messages: Vec<Message<'_>> = messages
            .iter()
            .map(|m| Message {
                role: m.role.as_str(),
                content: &m.content,
            })
            .collect();
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(TokenizerError::TemplateRender)?;
        template
            .render(minijinja::context! {
                messages => Value::from_serialize(&messages),
                add_generation_prompt => true,
                // transformers passes these as None when the caller gives none.
                tools => Value::from(()),
                documents => Value::from(()),
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(TokenizerError::TemplateRender)
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `json.dumps` spacing (`", "` and `": "`), which transformers' `tojson` keeps.
struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.begin_array_value(writer, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent)`, unescaped HTML.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let _sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let result = match indent {
        Some(n) => {
            let indent = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&indent);
            value.serialize(&mut serde_json::Serializer::with_formatter(
                &mut out, formatter,
            ))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out, PythonJson,
        )),
    };
    result.map_err(|e| Error::new(ErrorKind::InvalidOperation, "tojson failed").with_source(e))?;
    let json = String::from_utf8(out).map_err(|e| {
        Error::new(ErrorKind::InvalidOperation, "tojson produced invalid UTF-8").with_source(e)
    })?;
    Ok(Value::from_safe_string(json))
}

/// transformers' `strftime_now(format)`, in UTC, for the common `strftime` directives.
fn strftime_now(format: String) -> Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, "clock before 1970").with_source(e))?
        .as_secs();
    Ok(Value::from(format_utc(secs, &format)))
}

fn format_utc(unix_secs: u64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let weekday = DAYS[(days % 7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('H') => out.push_str(&format!("{:02}", secs_of_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs_of_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs_of_day % 60)),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coe_core::Role;

    #[test]
    fn renders_chatml_with_generation_prompt_and_trimmed_blocks() {
        // The same template and input give this output in jinja2 3.1 with transformers' settings.
        let source = "{% for m in messages %}\n  {% if m.role %}{{ '<|im_start|>' + m.role + '\\n' + m.content.strip() + '<|im_end|>\\n' }}{% endif %}\n{% endfor %}\n{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}\n";
        let t = ChatTemplate::new(source, "<s>".into(), "</s>".into()).unwrap();
        let out = t.render(&[ChatMessage::new(Role::User, " hi ")]).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn binds_bos_and_eos_tokens() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
            "<s>".into(),
            "</s>".into(),
        )
        .unwrap();
        assert_eq!(t.render(&[ChatMessage::user("x")]).unwrap(), "<s>x</s>");
    }

    #[test]
    fn raise_exception_becomes_a_render_error_with_its_message() {
        let t = ChatTemplate::new(
            "{{ raise_exception('roles must alternate') }}",
            String::new(),
            String::new(),
        )
        .unwrap();
        let err = t.render(&[]).unwrap_err();
        assert!(matches!(err, TokenizerError::TemplateRender(_)));
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported_at_construction() {
        let err = ChatTemplate::new("{% for %}", String::new(), String::new()).unwrap_err();
        assert!(matches!(err, TokenizerError::TemplateSyntax(_)), "{err}");
    }

    #[test]
    fn tojson_uses_python_spacing_and_keeps_non_ascii() {
        let t = ChatTemplate::new(
            "{{ {'a': [1, 'é<']} | tojson }}",
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(t.render(&[]).unwrap(), r#"{"a": [1, "é<"]}"#);
    }

    #[test]
    fn formats_dates_like_strftime() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        assert_eq!(
            format_utc(1_709_211_909, "%d %b %Y %H:%M:%S %A %%"),
            "29 Feb 2024 13:05:09 Thursday %"
        );
    }
}
