//! How a command ends: an exit status and the message for stderr.

#[derive(Debug)]
pub struct Fail {
    pub code: i32,
    pub msg: String,
}

impl Fail {
    pub fn new(code: i32, msg: impl Into<String>) -> Fail {
        Fail {
            code,
            msg: msg.into(),
        }
    }
}

pub type Res<T> = Result<T, Fail>;

/// Exit 1 with `msg`: the status of nearly every zfs error.
pub fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(Fail::new(1, msg))
}
