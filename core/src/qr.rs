//! Check-in QR codes: a PNG of a value (e.g. a submission id), and the signed, link-safe
//! token under which the API serves it (`GET /v1/qr/{token}.png`), so a WhatsApp image message
//! can point at it without making the API an open QR generator.

use base64::Engine;
use hmac::{KeyInit, Mac};

/// Pixels per QR module, and the quiet zone in modules (the standard asks for 4).
const SCALE: u32 = 8;
const QUIET: u32 = 4;
/// Longest value encoded: a QR code holds ~2.9 KB; check-in values are ids and short codes.
pub const MAX_VALUE_BYTES: usize = 512;

/// The QR code of `value` as a black-on-white grayscale PNG.
pub fn png(value: &str) -> Result<Vec<u8>, String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!("QR value longer than {MAX_VALUE_BYTES} bytes"));
    }
    let code = qrcode::QrCode::new(value.as_bytes()).map_err(|e| format!("QR: {e}"))?;
    let modules = code.width() as u32;
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; (side * side) as usize];
    for (i, c) in colors.iter().enumerate() {
        if *c != qrcode::Color::Dark {
            continue;
        }
        let (mx, my) = (i as u32 % modules, i as u32 / modules);
        for dy in 0..SCALE {
            let row = ((my + QUIET) * SCALE + dy) * side;
            let start = (row + (mx + QUIET) * SCALE) as usize;
            pixels[start..start + SCALE as usize].fill(0);
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, side, side);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| format!("PNG: {e}"))?;
        w.write_image_data(&pixels)
            .map_err(|e| format!("PNG: {e}"))?;
    }
    Ok(out)
}

/// `data:image/png;base64,…` of the QR code: an image inline in an HTML e-mail.
pub fn data_uri(value: &str) -> Result<String, String> {
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png(value)?)
    ))
}

fn mac(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(b"quizflow-qr\0");
    m.update(value);
    m.finalize().into_bytes()[..16].to_vec()
}

/// The link-safe token of `value`: base64url of the value, `.`, base64url of 128 bits of
/// HMAC-SHA-256 under `key`.
pub fn token(key: &[u8], value: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}",
        b64.encode(value.as_bytes()),
        b64.encode(mac(key, value.as_bytes()))
    )
}

/// The value a [`token`] carries, if `key` signed it.
pub fn verify(key: &[u8], token: &str) -> Option<String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (v, sig) = token.split_once('.')?;
    let value = b64.decode(v).ok()?;
    let given = b64.decode(sig).ok()?;
    let expected = mac(key, &value);
    let same = given.len() == expected.len()
        && given
            .iter()
            .zip(&expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same || value.len() > MAX_VALUE_BYTES {
        return None;
    }
    String::from_utf8(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_png_of_the_value_with_a_quiet_zone() {
        let bytes = png("0196a1b2-0000-7000-8000-000000000001").expect("png");
        let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
        let mut reader = decoder.read_info().expect("decodes");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("frame");
        assert_eq!(info.width, info.height);
        assert_eq!(info.width % SCALE, 0);
        // White quiet zone around, black finder pattern at the top-left module.
        assert_eq!(buf[0], 255);
        let at = |x: u32, y: u32| buf[(y * info.width + x) as usize];
        assert_eq!(at(QUIET * SCALE, QUIET * SCALE), 0);
        assert!(png(&"x".repeat(MAX_VALUE_BYTES + 1)).is_err());
        assert!(data_uri("abc")
            .expect("uri")
            .starts_with("data:image/png;base64,iVBOR"));
    }

    #[test]
    fn tokens_carry_the_value_and_refuse_tampering() {
        let t = token(b"k", "ticket-42");
        assert!(t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
        assert_eq!(verify(b"k", &t).as_deref(), Some("ticket-42"));
        assert_eq!(verify(b"other", &t), None);
        let forged = format!(
            "{}.{}",
            "dGlja2V0LTQz",
            t.split_once('.').map(|x| x.1).unwrap_or("")
        );
        assert_eq!(verify(b"k", &forged), None);
        assert_eq!(verify(b"k", "nodot"), None);
    }
}
