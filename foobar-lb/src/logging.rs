//! Log output: human text (default) or one JSON object per line (`--log-format json`) for log
//! pipelines. Events an operator filters on carry key-value fields (`event`, `service`,
//! `backend`, `state`, `reason`, ...) through `log`'s key-value support; in text they follow
//! the message, in JSON they are fields of the object.

use std::io::Write;

use log::kv::{self, VisitSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the logger (`RUST_LOG` filters, default `info`).
pub fn init(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        b.format(|buf, record| {
            let mut obj = serde_json::Map::new();
            obj.insert("ts".into(), buf.timestamp_micros().to_string().into());
            obj.insert("level".into(), record.level().as_str().into());
            obj.insert("target".into(), record.target().into());
            obj.insert("msg".into(), record.args().to_string().into());
            let _ = record.key_values().visit(&mut Fields(&mut obj));
            writeln!(buf, "{}", serde_json::Value::Object(obj))
        });
    }
    b.init();
}

/// Copies a record's key-value pairs into a JSON object (numbers and booleans stay typed).
struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let v = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.as_str().to_string(), v);
        Ok(())
    }
}
