//! Storage keys (pure): what a valid key or stream name is, and how a stream's objects are
//! named: `S/init.mp4` and `S/seg-<10 digits>.<ext>` (docs/protocol.md, "Streams"). The
//! relay's discovery, the demo producer, the load generator and the tests all name
//! segments through this module.

/// Longest path segment of a key (docs/protocol.md: the limit of common file systems, so a
/// key that is valid is also a name the directory origin can open).
pub const MAX_SEGMENT: usize = 255;

/// Digits of the sequence number in a segment name.
pub const SEQ_DIGITS: usize = 10;

/// Extension the demo and the load generator give their segments.
pub const DEFAULT_SEGMENT_EXT: &str = "m4s";

/// Validate a client-supplied key per docs/protocol.md: `/`-separated, at most 1024 bytes,
/// no empty, `.` or `..` segments, no segment over 255 bytes, no leading `/`, no control
/// characters or `\`. One object has one spelling, so the cache and single-flight see it as
/// one key.
pub fn validate_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("key is empty");
    }
    if key.len() > 1024 {
        return Err("key is longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return Err("key starts with /");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return Err("key contains a control character or backslash");
    }
    for seg in key.split('/') {
        match seg {
            "" => return Err("key has an empty segment"),
            "." => return Err("key has a . segment"),
            ".." => return Err("key has a .. segment"),
            s if s.len() > MAX_SEGMENT => return Err("key has a segment longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

/// A stream name follows the key rules (it is a key prefix without the trailing `/`).
pub fn validate_stream(stream: &str) -> Result<(), &'static str> {
    validate_key(stream)
}

/// The key of segment `seq` of `stream`, with extension `ext` (no dot).
pub fn segment_key(stream: &str, seq: u64, ext: &str) -> String {
    format!("{stream}/{}", segment_name(seq, ext))
}

/// The file name of segment `seq` (the last component of its key).
pub fn segment_name(seq: u64, ext: &str) -> String {
    format!("seg-{seq:0width$}.{ext}", width = SEQ_DIGITS)
}

/// The sequence number in a segment file name `seg-<10 digits>.<ext>`, or `None` for any
/// other name.
pub fn segment_name_seq(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("seg-")?;
    let (digits, ext) = rest.split_at_checked(SEQ_DIGITS)?;
    let ext = ext.strip_prefix('.')?;
    if !digits.bytes().all(|b| b.is_ascii_digit())
        || ext.is_empty()
        || !ext.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return None;
    }
    digits.parse().ok()
}

/// The sequence number of a segment key `S/seg-<10 digits>.<ext>` of stream `S`, or
/// `None` for anything discovery ignores (init segments, temporary uploads, playlists).
pub fn segment_seq(stream: &str, key: &str) -> Option<u64> {
    segment_name_seq(key.strip_prefix(stream)?.strip_prefix('/')?)
}

/// The init segment key of a stream.
pub fn init_key(stream: &str) -> String {
    format!("{stream}/init.mp4")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for good in [
            "a",
            "live/cam1/seg-0000000001.m4s",
            "vod/a b/ü+%.mp4",
            "x/.hidden",
            "a/.../b",
        ] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        let long = "a".repeat(1025);
        let long_segment = format!("vod/{}.bin", "s".repeat(252));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/",
            "a\\b",
            "a\u{0}b",
            "a\nb",
            "a\u{7f}",
            long.as_str(),
            "a/./b",
            "./a",
            "a/.",
            long_segment.as_str(),
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        assert!(validate_key(&format!("vod/{}.bin", "s".repeat(251))).is_ok());
        assert!(validate_key(&vec!["s".repeat(255); 4].join("/")).is_ok());
    }

    #[test]
    fn segment_names() {
        assert_eq!(
            segment_seq("live/cam1", "live/cam1/seg-0000000042.m4s"),
            Some(42)
        );
        assert_eq!(
            segment_seq("live/cam1", "live/cam1/seg-0000000001.ts"),
            Some(1)
        );
        assert_eq!(segment_seq("live/cam1", "live/cam1/init.mp4"), None);
        assert_eq!(segment_seq("live/cam1", "live/cam1/seg-42.m4s"), None);
        assert_eq!(
            segment_seq("live/cam1", "live/cam1/seg-0000000042.m4s.tmp"),
            None
        );
        assert_eq!(segment_seq("live/cam1", "live/cam1/seg-0000000042."), None);
        assert_eq!(
            segment_seq("live/cam1", "live/cam1/.seg-0000000042.m4s"),
            None
        );
        assert_eq!(
            segment_seq("live/cam1", "live/cam10/seg-0000000042.m4s"),
            None
        );
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(
            segment_key("live/a", 42, "m4s"),
            "live/a/seg-0000000042.m4s"
        );
        assert_eq!(
            segment_seq("live/a", &segment_key("live/a", 7, "ts")),
            Some(7)
        );
        assert_eq!(
            segment_name_seq(&segment_name(9_999_999_999, "m4s")),
            Some(9_999_999_999)
        );
        assert_eq!(init_key("live/a"), "live/a/init.mp4");
    }
}
