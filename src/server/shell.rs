//! Renders BSON values the way mongod prints them in error messages (`{ _id: ObjectId('…') }`).

use bson::{Bson, Document};

pub fn render_document(doc: &Document) -> String {
    if doc.is_empty() {
        return "{}".into();
    }
    let fields: Vec<String> = doc
        .iter()
        .map(|(k, v)| format!("{k}: {}", render(v)))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

pub fn render(value: &Bson) -> String {
    match value {
        Bson::String(s) => format!("\"{s}\""),
        Bson::ObjectId(o) => format!("ObjectId('{o}')"),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Double(d) if d.fract() == 0.0 && d.is_finite() => format!("{d:.1}"),
        Bson::Double(d) => d.to_string(),
        Bson::Boolean(b) => b.to_string(),
        Bson::Null => "null".into(),
        Bson::Document(d) => render_document(d),
        Bson::Array(a) => format!(
            "[ {} ]",
            a.iter().map(render).collect::<Vec<_>>().join(", ")
        ),
        Bson::DateTime(d) => format!("new Date({})", d.timestamp_millis()),
        Bson::Timestamp(t) => format!("Timestamp({}, {})", t.time, t.increment),
        other => other.to_string(),
    }
}
