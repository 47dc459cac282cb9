//! Request bodies: a batch of JSON objects as NDJSON or an array, maybe gzipped.

use std::io::Write;

use bytes::Bytes;

use super::HttpFormat;

/// The body for `rows` (each a JSON object) and its content type.
pub fn body(rows: &[Bytes], format: HttpFormat) -> (Vec<u8>, &'static str) {
    match format {
        HttpFormat::Ndjson => {
            let mut out = Vec::with_capacity(rows.iter().map(|r| r.len() + 1).sum::<usize>());
            for r in rows {
                out.extend_from_slice(r);
                out.push(b'\n');
            }
            (out, "application/x-ndjson")
        }
        HttpFormat::JsonArray => (crate::codec::json_array(rows), "application/json"),
    }
}

/// `body` compressed with gzip.
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(body)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn ndjson_and_arrays_hold_every_row_and_gzip_round_trips() {
        let rows = [
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::from_static(b"{\"b\":2}"),
        ];
        let (nd, ct) = body(&rows, HttpFormat::Ndjson);
        assert_eq!(
            (nd.as_slice(), ct),
            (&b"{\"a\":1}\n{\"b\":2}\n"[..], "application/x-ndjson")
        );
        let (arr, ct) = body(&rows, HttpFormat::JsonArray);
        let v: serde_json::Value = serde_json::from_slice(&arr).unwrap();
        assert_eq!(v, serde_json::json!([{"a": 1}, {"b": 2}]));
        assert_eq!(ct, "application/json");
        let z = gzip(&arr).unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(z.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, arr);
    }
}
