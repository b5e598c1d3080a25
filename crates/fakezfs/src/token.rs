//! `receive_resume_token`: what a resumed `zfs send -t` needs, in the shape
//! of the real token (`1-<checksum>-<length>-<hex payload>`).

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::state::Partial;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub toguid: u64,
    pub toname: String,
    pub fromguid: u64,
    pub offset: u64,
}

pub fn encode(p: &Partial) -> String {
    let t = Token {
        toguid: p.toguid,
        toname: p.toname.clone(),
        fromguid: p.fromguid,
        offset: p.offset,
    };
    let json = serde_json::to_vec(&t).expect("token serialises");
    let hex: String = json.iter().map(|b| format!("{b:02x}")).collect();
    format!("1-{:x}-{:x}-{hex}", xxh3_64(&json) as u32, json.len())
}

pub fn decode(s: &str) -> Option<Token> {
    let mut parts = s.splitn(4, '-');
    if parts.next()? != "1" {
        return None;
    }
    let sum = u32::from_str_radix(parts.next()?, 16).ok()?;
    let len = usize::from_str_radix(parts.next()?, 16).ok()?;
    let hex = parts.next()?;
    if hex.len() != len * 2 || !hex.is_ascii() {
        return None;
    }
    let json: Vec<u8> = (0..len)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    if xxh3_64(&json) as u32 != sum {
        return None;
    }
    serde_json::from_slice(&json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_tamper() {
        let p = Partial {
            toguid: 42,
            toname: "src/data@a".into(),
            fromguid: 7,
            offset: 12345,
            header: String::new(),
            ops_file: String::new(),
        };
        let s = encode(&p);
        assert!(s.starts_with("1-"));
        let t = decode(&s).unwrap();
        assert_eq!((t.toguid, t.fromguid, t.offset), (42, 7, 12345));
        let mut bad = s.clone();
        bad.replace_range(s.len() - 3..s.len() - 2, "0");
        assert!(decode(&bad).is_none() || bad == s);
        assert!(decode("1-zz").is_none());
    }
}
