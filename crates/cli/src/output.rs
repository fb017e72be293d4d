//! How keys and values are written and read: raw, as table text, base64 or hex (JSON
//! says which in its `encoding` field), and printing to stdout.

use std::io::Write;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

use crate::global::{CliError, CliResult, Global};

/// Keys and values as the user asked for them: hex with --hex, else raw on the command
/// line and in simple output, base64 in JSON.
#[derive(Clone, Copy, Debug)]
pub struct Codec {
    hex: bool,
}

impl Codec {
    pub fn of(global: &Global) -> Codec {
        Codec { hex: global.hex }
    }

    /// JSON's `encoding` field.
    pub fn name(self) -> &'static str {
        if self.hex { "hex" } else { "base64" }
    }

    /// Bytes in JSON.
    pub fn json(self, b: &[u8]) -> serde_json::Value {
        serde_json::Value::String(if self.hex { hex(b) } else { BASE64.encode(b) })
    }

    /// Bytes in simple output: as they are, or hex.
    pub fn raw(self, b: &[u8]) -> Vec<u8> {
        if self.hex { hex(b).into_bytes() } else { b.to_vec() }
    }

    /// Bytes in a table cell: hex, or text with control characters (and bytes that
    /// are not UTF-8) escaped, so a cell is one line.
    pub fn cell(self, b: &[u8]) -> String {
        if self.hex {
            return hex(b);
        }
        match std::str::from_utf8(b) {
            Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
            Ok(s) => {
                s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.into() }).collect()
            }
            Err(_) => b.escape_ascii().to_string(),
        }
    }

    /// A key, value or prefix given on the command line (`what` names it in errors):
    /// hex with --hex (a usage error if it is not), else its UTF-8 bytes.
    pub fn arg(self, what: &str, s: &str) -> Result<Bytes, CliError> {
        if !self.hex {
            return Ok(Bytes::copy_from_slice(s.as_bytes()));
        }
        unhex(s).map(Bytes::from).map_err(|e| CliError::usage(format!("{what} '{s}' is not hex (--hex): {e}")))
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("{} digits; hex takes two per byte", s.len()));
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).map_err(|_| "not a hex digit".to_string())?;
            u8::from_str_radix(digits, 16).map_err(|_| format!("'{digits}' is not a hex byte"))
        })
        .collect()
}

/// Writes to stdout and flushes; a closed pipe or a full disk is an error (exit 1).
pub fn write_out(bytes: &[u8]) -> CliResult {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).map_err(write_error)
}

/// One JSON document on one line.
pub fn print_json(v: &serde_json::Value) -> CliResult {
    write_out(format!("{v}\n").as_bytes())
}

pub fn write_error(e: std::io::Error) -> CliError {
    CliError::failed(format!("error: cannot write output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_each_encoding() {
        let bytes = [0u8, 0xff, b'a', b'\n', 0x80];
        let (b64, hexed) = (Codec { hex: false }, Codec { hex: true });
        assert_eq!(b64.json(&bytes), "AP9hCoA=");
        assert_eq!(hexed.json(&bytes), "00ff610a80");
        assert_eq!(hexed.arg("VALUE", "00ff610a80").unwrap(), Bytes::copy_from_slice(&bytes));
        assert_eq!(hexed.arg("KEY", "00FF").unwrap(), Bytes::from_static(&[0, 0xff]));
        assert_eq!(b64.arg("KEY", "k\u{e9}").unwrap(), Bytes::from("k\u{e9}"));
        for bad in ["0", "zz", "0g", "\u{e9}"] {
            let err = hexed.arg("KEY", bad).unwrap_err();
            assert_eq!(err.code, 2, "{bad}");
            assert!(err.message.contains("KEY") && err.message.contains("not hex"), "{}", err.message);
        }
    }

    #[test]
    fn table_cells_stay_on_one_line() {
        let c = Codec { hex: false };
        assert_eq!(c.cell(b"plain text"), "plain text");
        assert_eq!(c.cell("tab\there\nnewline".as_bytes()), "tab\\there\\nnewline");
        assert_eq!(c.cell("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(c.cell(&[b'a', 0xff]), "a\\xff");
        assert_eq!(Codec { hex: true }.cell(b"ab"), "6162");
    }
}
