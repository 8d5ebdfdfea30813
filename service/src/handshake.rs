//! Whether a connection has completed its HTTP/2 handshake: the client's
//! connection preface (RFC 9113 §3.4) followed by a whole SETTINGS frame.
//! Fed the bytes the server reads, in order; a pure state machine.

/// The fixed 24 bytes every HTTP/2 client sends first.
pub const CLIENT_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEADER_BYTES: usize = 9;
const SETTINGS_FRAME_TYPE: u8 = 0x4;
const PREFIX_BYTES: usize = CLIENT_PREFACE.len() + FRAME_HEADER_BYTES;

/// Where the handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// More bytes are needed.
    InProgress,
    /// The preface and a whole SETTINGS frame arrived.
    Done,
    /// The bytes are not an HTTP/2 client preface and SETTINGS frame.
    Invalid,
}

/// The handshake's progress over the bytes read so far.
#[derive(Debug, Clone)]
pub struct HandshakeProgress {
    /// The preface and the SETTINGS frame's header, as far as read.
    prefix: [u8; PREFIX_BYTES],
    prefix_len: usize,
    /// Payload bytes of the SETTINGS frame still to come, once its header
    /// is read.
    payload_remaining: Option<usize>,
    state: Handshake,
}

impl Default for HandshakeProgress {
    fn default() -> Self {
        Self {
            prefix: [0; PREFIX_BYTES],
            prefix_len: 0,
            payload_remaining: None,
            state: Handshake::InProgress,
        }
    }
}

impl HandshakeProgress {
    pub fn state(&self) -> Handshake {
        self.state
    }

    /// Takes the next `bytes` read from the connection.
    pub fn advance(&mut self, mut bytes: &[u8]) -> Handshake {
        if self.state != Handshake::InProgress {
            return self.state;
        }
        if self.prefix_len < PREFIX_BYTES {
            let taken = bytes.len().min(PREFIX_BYTES - self.prefix_len);
            self.prefix[self.prefix_len..self.prefix_len + taken].copy_from_slice(&bytes[..taken]);
            self.prefix_len += taken;
            bytes = &bytes[taken..];
            let preface_seen = self.prefix_len.min(CLIENT_PREFACE.len());
            if self.prefix[..preface_seen] != CLIENT_PREFACE[..preface_seen] {
                self.state = Handshake::Invalid;
                return self.state;
            }
            if self.prefix_len < PREFIX_BYTES {
                return self.state;
            }
            let header = &self.prefix[CLIENT_PREFACE.len()..];
            if header[3] != SETTINGS_FRAME_TYPE {
                self.state = Handshake::Invalid;
                return self.state;
            }
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
            self.payload_remaining = Some(length as usize);
        }
        let remaining = self.payload_remaining.unwrap_or(0);
        let remaining = remaining.saturating_sub(bytes.len());
        self.payload_remaining = Some(remaining);
        if remaining == 0 {
            self.state = Handshake::Done;
        }
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_frame(payload: usize) -> Vec<u8> {
        let length = (payload as u32).to_be_bytes();
        let mut frame = vec![
            length[1],
            length[2],
            length[3],
            SETTINGS_FRAME_TYPE,
            0,
            0,
            0,
            0,
            0,
        ];
        frame.extend(std::iter::repeat_n(0u8, payload));
        frame
    }

    fn handshake(payload: usize) -> Vec<u8> {
        let mut bytes = CLIENT_PREFACE.to_vec();
        bytes.extend(settings_frame(payload));
        bytes
    }

    #[test]
    fn done_once_the_whole_settings_frame_arrived_in_any_split() {
        for payload in [0, 6, 36] {
            let bytes = handshake(payload);
            for split in 0..=bytes.len() {
                let mut progress = HandshakeProgress::default();
                let first = progress.advance(&bytes[..split]);
                if split < bytes.len() {
                    assert_eq!(
                        first,
                        Handshake::InProgress,
                        "payload {payload} split {split}"
                    );
                }
                assert_eq!(progress.advance(&bytes[split..]), Handshake::Done);
            }
        }
    }

    #[test]
    fn byte_by_byte_and_with_more_frames_after() {
        let mut bytes = handshake(12);
        let mut progress = HandshakeProgress::default();
        for (index, byte) in bytes.iter().enumerate() {
            let state = progress.advance(std::slice::from_ref(byte));
            let expected = if index + 1 == bytes.len() {
                Handshake::Done
            } else {
                Handshake::InProgress
            };
            assert_eq!(state, expected, "byte {index}");
        }
        bytes.extend(settings_frame(6));
        let mut progress = HandshakeProgress::default();
        assert_eq!(progress.advance(&bytes), Handshake::Done);
        assert_eq!(progress.advance(b"anything"), Handshake::Done);
    }

    #[test]
    fn anything_else_is_invalid_as_soon_as_it_differs() {
        let mut progress = HandshakeProgress::default();
        assert_eq!(progress.advance(b"GET / HTTP/1.1\r\n"), Handshake::Invalid);
        assert_eq!(progress.advance(&handshake(0)), Handshake::Invalid);

        let mut progress = HandshakeProgress::default();
        assert_eq!(progress.advance(b"PRI"), Handshake::InProgress);
        assert_eq!(progress.advance(b"X"), Handshake::Invalid);

        let mut not_settings = CLIENT_PREFACE.to_vec();
        not_settings.extend([0, 0, 0, 0x1, 0, 0, 0, 0, 1]);
        let mut progress = HandshakeProgress::default();
        assert_eq!(progress.advance(&not_settings), Handshake::Invalid);
    }

    #[test]
    fn nothing_read_is_in_progress() {
        let mut progress = HandshakeProgress::default();
        assert_eq!(progress.advance(&[]), Handshake::InProgress);
        assert_eq!(progress.state(), Handshake::InProgress);
    }
}
