//! Check-in QR codes: a PNG of a value (e.g. a submission id), and the signed, link-safe
//! token under which the API serves it (`GET /v1/qr/{token}.png`), so a WhatsApp image message
//! can point at it without making the API an open QR generator.

use base64::Engine;

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

/// What a `qr_url` link stands for: the value its image encodes, the submission it was made
/// for (so an erased person's links stop working) and until when it is good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub value: String,
    pub submission_id: Option<uuid::Uuid>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// How long a link is good for: the ticket of an event months away still scans.
pub const LINK_TTL: chrono::TimeDelta = chrono::TimeDelta::days(180);

fn aead_key(key: &[u8]) -> Option<ring::aead::LessSafeKey> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"quizflow-qr-link-v2\0");
    h.update(key);
    let k = h.finalize();
    let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &k).ok()?;
    Some(ring::aead::LessSafeKey::new(unbound))
}

/// The opaque, link-safe token of `link`: base64url of a random nonce and the link sealed
/// (ChaCha20-Poly1305) under a key derived from `key`. Neither the value nor the submission
/// can be read from it, and a token not sealed under `key` opens to nothing. `None` when the
/// value is too long for a QR code.
pub fn seal(key: &[u8], link: &Link) -> Option<String> {
    use ring::rand::SecureRandom;
    if link.value.len() > MAX_VALUE_BYTES {
        return None;
    }
    let mut nonce = [0u8; ring::aead::NONCE_LEN];
    ring::rand::SystemRandom::new().fill(&mut nonce).ok()?;
    let mut buf = Vec::with_capacity(24 + link.value.len() + 16);
    buf.extend_from_slice(link.submission_id.unwrap_or_default().as_bytes());
    buf.extend_from_slice(&link.expires_at.timestamp().to_be_bytes());
    buf.extend_from_slice(link.value.as_bytes());
    aead_key(key)?
        .seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::empty(),
            &mut buf,
        )
        .ok()?;
    let mut token = nonce.to_vec();
    token.extend_from_slice(&buf);
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token))
}

/// The link a [`seal`]ed token stands for, if `key` sealed it (expiry not checked here).
pub fn open(key: &[u8], token: &str) -> Option<Link> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    if raw.len() < ring::aead::NONCE_LEN + 24 + 16 {
        return None;
    }
    let (nonce, sealed) = raw.split_at(ring::aead::NONCE_LEN);
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = sealed.to_vec();
    let plain = aead_key(key)?
        .open_in_place(nonce, ring::aead::Aad::empty(), &mut buf)
        .ok()?;
    let (id, rest) = plain.split_at(16);
    let (expires, value) = rest.split_at(8);
    let id = uuid::Uuid::from_slice(id).ok()?;
    let expires = i64::from_be_bytes(expires.try_into().ok()?);
    Some(Link {
        value: String::from_utf8(value.to_vec()).ok()?,
        submission_id: (!id.is_nil()).then_some(id),
        expires_at: chrono::DateTime::from_timestamp(expires, 0)?,
    })
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
    fn links_are_opaque_sealed_and_refuse_tampering() {
        let link = Link {
            value: "ticket-42".into(),
            submission_id: Some(uuid::Uuid::from_u128(7)),
            expires_at: chrono::DateTime::from_timestamp(1_900_000_000, 0).expect("time"),
        };
        let t = seal(b"k", &link).expect("sealed");
        assert!(t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)));
        assert_eq!(open(b"k", &t), Some(link.clone()));
        // Opaque: neither the value nor the id can be read; the same link seals differently.
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&t)
            .expect("b64");
        assert!(!raw.windows(9).any(|w| w == b"ticket-42"));
        assert_ne!(seal(b"k", &link), Some(t.clone()));
        assert_eq!(open(b"other", &t), None);
        let mut flipped = raw.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let flipped = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(flipped);
        assert_eq!(open(b"k", &flipped), None);
        assert_eq!(open(b"k", "short"), None);
        let anonymous = Link {
            submission_id: None,
            ..link
        };
        assert_eq!(
            open(b"k", &seal(b"k", &anonymous).expect("sealed")),
            Some(anonymous)
        );
    }
}
