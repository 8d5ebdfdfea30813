//! The gRPC message in progress on a request body (a 5-byte prefix, flag
//! and big-endian length, then the message): how many of its bytes have
//! arrived. tonic's decoder holds those bytes until the message is
//! complete, then hands it to the handler; so they are what a stream's
//! in-flight budget is charged (the 5-byte prefix is not: a message of the
//! largest size then fits a budget of that size). A pure state machine fed
//! the body's bytes.

const PREFIX_BYTES: usize = 5;

#[derive(Debug, Clone, Default)]
pub struct MessageProgress {
    prefix: [u8; PREFIX_BYTES],
    prefix_len: usize,
    /// Bytes of the message still to come, once its prefix is read.
    payload_remaining: u64,
    /// Bytes of the message in progress received so far (its prefix not
    /// counted); 0 between messages.
    held: u64,
}

impl MessageProgress {
    /// Takes the next bytes of the body; returns the bytes of the message in progress after them
    /// (messages completed within `bytes` count no more).
    pub fn advance(&mut self, mut bytes: &[u8]) -> u64 {
        while !bytes.is_empty() {
            if self.prefix_len < PREFIX_BYTES {
                let taken = bytes.len().min(PREFIX_BYTES - self.prefix_len);
                self.prefix[self.prefix_len..self.prefix_len + taken]
                    .copy_from_slice(&bytes[..taken]);
                self.prefix_len += taken;
                bytes = &bytes[taken..];
                if self.prefix_len == PREFIX_BYTES {
                    let length = &self.prefix[1..];
                    self.payload_remaining = u64::from(u32::from_be_bytes([
                        length[0], length[1], length[2], length[3],
                    ]));
                }
            } else {
                let taken = (bytes.len() as u64).min(self.payload_remaining);
                self.payload_remaining -= taken;
                self.held += taken;
                bytes = &bytes[taken as usize..];
            }
            if self.prefix_len == PREFIX_BYTES && self.payload_remaining == 0 {
                self.prefix_len = 0;
                self.held = 0;
            }
        }
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend(payload.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, payload as usize));
        bytes
    }

    #[test]
    fn a_message_is_held_from_its_first_byte_until_its_last() {
        let bytes = message(100);
        for split in 1..bytes.len() {
            let mut progress = MessageProgress::default();
            let payload = split.saturating_sub(5) as u64;
            assert_eq!(progress.advance(&bytes[..split]), payload);
            assert_eq!(progress.advance(&bytes[split..]), 0, "split {split}");
        }
    }

    #[test]
    fn complete_messages_in_one_chunk_hold_nothing_but_the_next_ones_start() {
        let mut bytes = message(10);
        bytes.extend(message(0));
        bytes.extend(message(3));
        let mut progress = MessageProgress::default();
        assert_eq!(progress.advance(&bytes), 0);
        bytes.extend(&message(20)[..12]);
        let mut progress = MessageProgress::default();
        assert_eq!(progress.advance(&bytes), 7);
        assert_eq!(progress.advance(&[7; 12]), 19);
        assert_eq!(progress.advance(&[7; 1]), 0);
    }

    #[test]
    fn a_large_declared_message_is_held_as_it_arrives() {
        let mut progress = MessageProgress::default();
        let mut prefix = vec![0];
        prefix.extend((16u32 << 20).to_be_bytes());
        assert_eq!(progress.advance(&prefix), 0);
        let chunk = vec![0u8; 1 << 20];
        for megabyte in 1..16u64 {
            assert_eq!(progress.advance(&chunk), megabyte << 20);
        }
        assert_eq!(progress.advance(&chunk), 0);
    }

    #[test]
    fn nothing_read_holds_nothing() {
        let mut progress = MessageProgress::default();
        assert_eq!(progress.advance(&[]), 0);
    }
}
