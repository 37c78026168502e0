//! Deterministic safetensors bytes. `safetensors::serialize` takes the `__metadata__` as a
//! `HashMap` and writes its keys in hash order, which changes from process to process; the same
//! adapter then gets other bytes (and another checksum) on every run. Here the header is rewritten
//! with the metadata keys sorted: same tokens, same length, so the data offsets stay valid.

use safetensors::tensor::TensorView;
use std::collections::{BTreeMap, HashMap};

/// `safetensors::serialize` with `__metadata__` keys in sorted order. Tensors keep safetensors' own
/// (deterministic) order: by dtype alignment, then name.
pub fn serialize_sorted(
    views: Vec<(String, TensorView<'_>)>,
    metadata: BTreeMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let hashed: HashMap<String, String> = metadata.clone().into_iter().collect();
    let mut bytes = safetensors::serialize(views, Some(hashed)).map_err(|e| e.to_string())?;
    let n = header_len(&bytes)?;
    let header = std::str::from_utf8(&bytes[8..8 + n]).map_err(|e| e.to_string())?;
    let key = "{\"__metadata__\":";
    let rest = header
        .strip_prefix(key)
        .ok_or("safetensors header does not start with __metadata__")?;
    // The metadata object serializes to the same length in any key order.
    let sorted = serde_json::to_string(&metadata).map_err(|e| e.to_string())?;
    let tail = rest
        .get(sorted.len()..)
        .filter(|t| t.starts_with(',') || t.starts_with('}'))
        .ok_or("safetensors header metadata has an unexpected length")?;
    let rebuilt = format!("{key}{sorted}{tail}");
    if rebuilt.len() != n {
        return Err("rewritten safetensors header changed length".into());
    }
    bytes[8..8 + n].copy_from_slice(rebuilt.as_bytes());
    Ok(bytes)
}

fn header_len(bytes: &[u8]) -> std::result::Result<usize, String> {
    let len: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("safetensors output shorter than 8 bytes")?;
    let n = u64::from_le_bytes(len) as usize;
    if bytes.len() < 8 + n {
        return Err("safetensors header longer than the output".into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::{Dtype, SafeTensors};

    fn bytes_for(meta: &[(&str, &str)]) -> Vec<u8> {
        let data = [0u8; 16];
        let views = vec![
            (
                "b".to_string(),
                TensorView::new(Dtype::F32, vec![2, 2], &data).unwrap(),
            ),
            (
                "a".to_string(),
                TensorView::new(Dtype::F32, vec![4], &data).unwrap(),
            ),
        ];
        let metadata = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        serialize_sorted(views, metadata).unwrap()
    }

    /// Regression: adapters written by two identical runs differed byte for byte (issue 13).
    #[test]
    fn metadata_keys_come_out_sorted_and_the_file_still_parses() {
        let meta = [
            ("format", "pt"),
            ("tsd_method", "lora-dash"),
            ("tsd_switch", "50"),
            ("a_key", "x\"quoted\u{e9}"),
            ("zz", ""),
        ];
        let bytes = bytes_for(&meta);
        let (n, m) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(m.metadata().as_ref().unwrap().len(), meta.len());
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        let mut keys: Vec<&str> = meta.iter().map(|(k, _)| *k).collect();
        keys.sort();
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| header.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{header}");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("b").unwrap().shape(), &[2, 2]);
        // Many processes' worth of hash seeds: every call gives the same bytes.
        for _ in 0..50 {
            assert_eq!(bytes_for(&meta), bytes);
        }
    }
}
