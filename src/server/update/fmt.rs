//! MongoDB-style rendering of BSON values for error messages (`BSONElement::toString`), and
//! BSON type names (`typeName`).

use bson::{Bson, Document};

pub(crate) use crate::server::query::compare::type_name;

fn fmt_double(d: f64) -> String {
    if d.is_nan() {
        "nan".to_string()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.to_string()
    } else if d.fract() == 0.0 && d.abs() < 1e16 {
        format!("{:.1}", d)
    } else {
        format!("{}", d)
    }
}

pub(crate) fn value(v: &Bson) -> String {
    match v {
        Bson::Double(d) => fmt_double(*d),
        Bson::String(s) => format!("\"{}\"", s),
        Bson::Document(d) => document(d),
        Bson::Array(a) => {
            if a.is_empty() {
                "[]".to_string()
            } else {
                let parts: Vec<String> = a.iter().map(value).collect();
                format!("[ {} ]", parts.join(", "))
            }
        }
        Bson::Binary(b) => {
            let hex: String = b.bytes.iter().map(|x| format!("{:02X}", x)).collect();
            format!("BinData({}, {})", u8::from(b.subtype), hex)
        }
        Bson::Undefined => "undefined".to_string(),
        Bson::ObjectId(o) => format!("ObjectId('{}')", o.to_hex()),
        Bson::Boolean(b) => b.to_string(),
        Bson::DateTime(d) => format!("new Date({})", d.timestamp_millis()),
        Bson::Null => "null".to_string(),
        Bson::RegularExpression(r) => format!("/{}/{}", r.pattern, r.options),
        Bson::JavaScriptCode(c) => c.clone(),
        Bson::Symbol(s) => format!("\"{}\"", s),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Timestamp(t) => format!("Timestamp({}, {})", t.time, t.increment),
        Bson::Decimal128(d) => format!("NumberDecimal(\"{}\")", d),
        Bson::MinKey => "MinKey".to_string(),
        Bson::MaxKey => "MaxKey".to_string(),
        other => format!("{}", other),
    }
}

pub(crate) fn document(d: &Document) -> String {
    if d.is_empty() {
        return "{}".to_string();
    }
    let parts: Vec<String> = d.iter().map(|(k, v)| element(k, v)).collect();
    format!("{{ {} }}", parts.join(", "))
}

/// `name: value`, as `BSONElement::toString()` prints an element.
pub(crate) fn element(name: &str, v: &Bson) -> String {
    format!("{}: {}", name, value(v))
}

/// `_id: <value>` of a document, or `no id`.
pub(crate) fn id_of(doc: &Document) -> String {
    match doc.get("_id") {
        Some(v) => element("_id", v),
        None => "no id".to_string(),
    }
}
