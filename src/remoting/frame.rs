//! The Remoting frame codec, bytes only:
//!
//! ```text
//! | total length: u32 BE (excludes itself) | header word: u32 BE | header | body |
//!                                            high byte: serialization type (0 JSON, 1 ROCKETMQ)
//!                                            low 3 bytes: header length
//! ```
//!
//! [`check`] is cheap and tells whether a whole frame is buffered;
//! [`parse`] cuts it out of the buffer without copying the body. Errors are
//! [`FrameError::Incomplete`] (read more) or an invalid-frame variant (close
//! the connection).

use bytes::{Buf, BufMut, BytesMut};

use super::error::FrameError;
use super::header::{RemotingCommand, SerializeType};

/// Largest frame we accept or send, as Java's default
/// `com.rocketmq.remoting.frameMaxLength` (16 MiB).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

const MAX_HEADER_LEN: usize = 0x00FF_FFFF;

/// Checks whether `buf` starts with a whole, plausible frame and returns its
/// size in bytes (including the 4-byte length prefix).
pub fn check(buf: &[u8], max_frame_len: usize) -> Result<usize, FrameError> {
    let Some(len_bytes) = buf.get(0..4) else {
        return Err(FrameError::Incomplete);
    };
    let length = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    if length < 4 {
        return Err(FrameError::LengthTooSmall { length });
    }
    let length_usize = usize::try_from(length).unwrap_or(usize::MAX);
    if length_usize > max_frame_len {
        return Err(FrameError::TooLarge {
            length: u64::from(length),
            max: max_frame_len,
        });
    }
    // Validate the header word as soon as it is buffered, so garbage is
    // rejected without waiting for `length` bytes that may never come.
    if let Some(word) = buf.get(4..8) {
        let word = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        let kind = (word >> 24) as u8;
        if SerializeType::from_byte(kind).is_none() {
            return Err(FrameError::UnknownSerializeType(kind));
        }
        let header_len = word & 0x00FF_FFFF;
        if header_len > length - 4 {
            return Err(FrameError::HeaderTooLong {
                header_len,
                frame_len: length,
            });
        }
    }
    let total = length_usize + 4;
    if buf.len() < total {
        return Err(FrameError::Incomplete);
    }
    Ok(total)
}

/// Cuts one frame off the front of `buf` and decodes it. On
/// [`FrameError::Incomplete`] nothing is consumed. A frame whose header does
/// not decode is consumed and reported as [`FrameError::BadHeader`].
pub fn parse(buf: &mut BytesMut, max_frame_len: usize) -> Result<RemotingCommand, FrameError> {
    let total = check(buf, max_frame_len)?;
    let mut frame = buf.split_to(total).freeze();
    frame.advance(4);
    let word = frame.get_u32();
    let kind = SerializeType::from_byte((word >> 24) as u8)
        .ok_or(FrameError::UnknownSerializeType((word >> 24) as u8))?;
    let header_len = usize::try_from(word & 0x00FF_FFFF).unwrap_or(usize::MAX);
    if header_len > frame.len() {
        // `check` guarantees this cannot happen; keep the parser total anyway.
        return Err(FrameError::Incomplete);
    }
    let header = frame.split_to(header_len);
    let mut cmd = RemotingCommand::decode_header(kind, &header).map_err(FrameError::BadHeader)?;
    cmd.body = frame;
    Ok(cmd)
}

/// Appends `cmd` as one frame to `dst`.
pub fn encode(
    cmd: &RemotingCommand,
    kind: SerializeType,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let header = match kind {
        SerializeType::Json => cmd.encode_json_header(),
        SerializeType::RocketMq => cmd.encode_binary_header().map_err(FrameError::Encode)?,
    };
    if header.len() > MAX_HEADER_LEN {
        return Err(FrameError::Encode(format!(
            "header of {} bytes exceeds the 16 MiB header limit",
            header.len()
        )));
    }
    let length = 4 + header.len() + cmd.body.len();
    if length > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            length: length as u64,
            max: MAX_FRAME_LEN,
        });
    }
    dst.reserve(4 + length);
    // Both fit in u32: length <= MAX_FRAME_LEN and header <= MAX_HEADER_LEN.
    dst.put_u32(length as u32);
    dst.put_u32(((kind as u32) << 24) | header.len() as u32);
    dst.put_slice(&header);
    dst.put_slice(&cmd.body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn sample() -> RemotingCommand {
        RemotingCommand::request(11)
            .with_ext("topic", "orders")
            .with_body(Bytes::from_static(b"hello body"))
    }

    #[test]
    fn roundtrip_json_and_binary() {
        for kind in [SerializeType::Json, SerializeType::RocketMq] {
            let cmd = sample();
            let mut buf = BytesMut::new();
            encode(&cmd, kind, &mut buf).unwrap();
            encode(&cmd, kind, &mut buf).unwrap();
            let a = parse(&mut buf, MAX_FRAME_LEN).unwrap();
            let b = parse(&mut buf, MAX_FRAME_LEN).unwrap();
            assert_eq!(a, cmd);
            assert_eq!(b, cmd);
            assert!(buf.is_empty());
            assert_eq!(parse(&mut buf, MAX_FRAME_LEN), Err(FrameError::Incomplete));
        }
    }

    #[test]
    fn invalid_frames_are_named() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 0, 0, 0][..]);
        let err = parse(&mut buf, MAX_FRAME_LEN).unwrap_err();
        assert_eq!(err, FrameError::LengthTooSmall { length: 3 });
        assert!(err
            .to_string()
            .contains("frame length 3 smaller than header word"));

        let mut buf = BytesMut::from(&[0u8, 0, 0, 8, 0, 0, 0, 9][..]);
        let err = parse(&mut buf, MAX_FRAME_LEN).unwrap_err();
        assert!(
            err.to_string().contains("header length 9 exceeds frame"),
            "{err}"
        );

        let mut buf = BytesMut::from(&[0x7fu8, 0, 0, 0][..]);
        let err = parse(&mut buf, MAX_FRAME_LEN).unwrap_err();
        assert!(err.to_string().contains("max frame size exceeded"), "{err}");

        let mut buf = BytesMut::from(&[0u8, 0, 0, 8, 5, 0, 0, 0][..]);
        assert_eq!(
            parse(&mut buf, MAX_FRAME_LEN),
            Err(FrameError::UnknownSerializeType(5))
        );

        let mut buf = BytesMut::from(&[0u8, 0, 0, 6, 0, 0, 0, 2, b'{', b'x'][..]);
        assert!(matches!(
            parse(&mut buf, MAX_FRAME_LEN),
            Err(FrameError::BadHeader(_))
        ));
        assert!(buf.is_empty(), "a frame with a bad header is consumed");
    }

    #[test]
    fn body_shares_the_read_buffer() {
        let mut buf = BytesMut::new();
        encode(&sample(), SerializeType::Json, &mut buf).unwrap();
        let start = buf.as_ptr() as usize;
        let end = start + buf.len();
        let cmd = parse(&mut buf, MAX_FRAME_LEN).unwrap();
        let body = cmd.body.as_ptr() as usize;
        assert!(body >= start && body < end);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            let _ = parse(&mut buf, 4096);
        }

        // Topics are non-empty: the binary form, like Java's, reads an
        // empty string as null and drops the field.
        #[test]
        fn truncation_is_incomplete(topic in "[a-z]{1,20}", body in proptest::collection::vec(any::<u8>(), 0..64), binary in any::<bool>()) {
            let cmd = RemotingCommand::request(10).with_ext("topic", topic).with_body(body);
            let kind = if binary { SerializeType::RocketMq } else { SerializeType::Json };
            let mut full = BytesMut::new();
            encode(&cmd, kind, &mut full).unwrap();
            for cut in 0..full.len() {
                let mut part = BytesMut::from(&full[..cut]);
                prop_assert_eq!(parse(&mut part, MAX_FRAME_LEN), Err(FrameError::Incomplete));
                prop_assert_eq!(part.len(), cut);
            }
            let mut whole = full.clone();
            prop_assert_eq!(parse(&mut whole, MAX_FRAME_LEN).unwrap(), cmd);
        }
    }
}
