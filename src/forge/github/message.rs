//! (to be written: temporary stand-in until the translation lands)
#[derive(Debug)]
pub struct JobMessage;
#[derive(Debug, thiserror::Error)]
#[error("not yet")]
pub struct MessageError;
pub fn parse_message(_body: &[u8]) -> Result<JobMessage, MessageError> {
    Err(MessageError)
}
